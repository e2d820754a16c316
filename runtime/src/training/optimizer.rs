//! Optimisers and the learning-rate schedule.

use ndarray::{ArrayD, ArrayViewD};

/// Update rule for the trainable parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OptimizerKind {
    /// Adam with decoupled weight decay.
    #[default]
    AdamW,
    /// Stochastic gradient descent with momentum 0.9.
    Sgd,
}

/// State of one optimiser over a list of parameter tensors.
pub(crate) struct Optimizer {
    kind: OptimizerKind,
    first: Vec<Vec<f32>>,
    second: Vec<Vec<f32>>,
    step: i32,
}

const BETA1: f32 = 0.9;
const BETA2: f32 = 0.999;
const EPSILON: f32 = 1e-8;
const MOMENTUM: f32 = 0.9;

impl Optimizer {
    pub fn new(kind: OptimizerKind, shapes: &[&[usize]]) -> Self {
        let sizes: Vec<usize> = shapes.iter().map(|s| s.iter().product()).collect();
        Self::for_sizes(kind, &sizes)
    }

    /// For parameters of `sizes` values each.
    pub fn for_sizes(kind: OptimizerKind, sizes: &[usize]) -> Self {
        let zeros = || sizes.iter().map(|&n| vec![0.0; n]).collect::<Vec<_>>();
        Self { kind, first: zeros(), second: zeros(), step: 0 }
    }

    /// One step: `params[i] -= lr · update(grads[i])`, then decoupled decay of
    /// `params[i]` towards `anchors[i]` (zero when `None`) at `decay · lr`.
    pub fn step(
        &mut self,
        params: &mut [&mut ArrayD<f32>],
        grads: &[ArrayViewD<'_, f32>],
        anchors: &[Option<ArrayViewD<'_, f32>>],
        lr: f32,
        decay: &[f32],
    ) {
        let mut params: Vec<&mut [f32]> =
            params.iter_mut().map(|p| p.as_slice_mut().expect("parameters are contiguous")).collect();
        let grads: Vec<&[f32]> = grads.iter().map(|g| g.as_slice().expect("gradients are contiguous")).collect();
        let anchors: Vec<Option<&[f32]>> =
            anchors.iter().map(|a| a.as_ref().map(|a| a.as_slice().expect("anchors are contiguous"))).collect();
        self.step_slices(&mut params, &grads, &anchors, lr, decay);
    }

    /// `step` on plain slices: the compiler vectorises these loops, which an
    /// `IxDyn` zip does not.
    pub fn step_slices(
        &mut self,
        params: &mut [&mut [f32]],
        grads: &[&[f32]],
        anchors: &[Option<&[f32]>],
        lr: f32,
        decay: &[f32],
    ) {
        self.step += 1;
        let (bias1, bias2) = (1.0 - BETA1.powi(self.step), 1.0 - BETA2.powi(self.step));
        for (i, param) in params.iter_mut().enumerate() {
            let (grad, first) = (grads[i], &mut self.first[i]);
            match self.kind {
                OptimizerKind::AdamW => {
                    let second = &mut self.second[i];
                    let (step1, step2) = (lr / bias1, 1.0 / bias2);
                    for (((p, &g), m), v) in param.iter_mut().zip(grad).zip(first.iter_mut()).zip(second.iter_mut()) {
                        *m = BETA1 * *m + (1.0 - BETA1) * g;
                        *v = BETA2 * *v + (1.0 - BETA2) * g * g;
                        *p -= step1 * *m / ((*v * step2).sqrt() + EPSILON);
                    }
                }
                OptimizerKind::Sgd => {
                    for ((p, &g), m) in param.iter_mut().zip(grad).zip(first.iter_mut()) {
                        *m = MOMENTUM * *m + g;
                        *p -= lr * *m;
                    }
                }
            }
            if decay[i] > 0.0 {
                let rate = (decay[i] * lr).min(1.0);
                match anchors[i] {
                    Some(anchor) => param.iter_mut().zip(anchor).for_each(|(p, &a)| *p -= rate * (*p - a)),
                    None => param.iter_mut().for_each(|p| *p *= 1.0 - rate),
                }
            }
        }
    }
}

/// Linear warm-up over the first `warmup` steps, then cosine decay to 10%.
pub(crate) fn learning_rate(base: f32, step: usize, warmup: usize, total: usize) -> f32 {
    if step < warmup {
        return base * (step + 1) as f32 / warmup as f32;
    }
    let progress = (step - warmup) as f32 / (total.saturating_sub(warmup)).max(1) as f32;
    let cosine = 0.5 * (1.0 + (std::f32::consts::PI * progress.min(1.0)).cos());
    base * (0.1 + 0.9 * cosine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::arr1;

    #[test]
    fn schedule_warms_up_then_decays() {
        assert!(learning_rate(1.0, 0, 10, 100) < 0.2);
        assert_eq!(learning_rate(1.0, 9, 10, 100), 1.0);
        assert!((learning_rate(1.0, 10, 10, 100) - 1.0).abs() < 1e-6);
        assert!((learning_rate(1.0, 100, 10, 100) - 0.1).abs() < 1e-6);
    }

    #[test]
    fn both_optimisers_minimise_a_quadratic() {
        for kind in [OptimizerKind::AdamW, OptimizerKind::Sgd] {
            let mut x = arr1(&[3.0f32, -2.0]).into_dyn();
            let mut optimizer = Optimizer::new(kind, &[&[2]]);
            for _ in 0..500 {
                let grad = x.clone(); // gradient of |x|²/2
                optimizer.step(&mut [&mut x], &[grad.view()], &[None], 0.05, &[0.0]);
            }
            assert!(x.iter().all(|v| v.abs() < 1e-2), "{kind:?}: {x}");
        }
    }

    #[test]
    fn decay_pulls_towards_the_anchor() {
        let mut x = arr1(&[0.0f32]).into_dyn();
        let anchor = arr1(&[1.0f32]).into_dyn();
        let mut optimizer = Optimizer::new(OptimizerKind::AdamW, &[&[1]]);
        for _ in 0..200 {
            let zero = ArrayD::zeros(vec![1]);
            optimizer.step(&mut [&mut x], &[zero.view()], &[Some(anchor.view())], 0.1, &[1.0]);
        }
        assert!((x[0] - 1.0).abs() < 1e-3);
    }
}

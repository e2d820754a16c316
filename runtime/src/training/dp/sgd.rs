//! DP-SGD for the linear head (Abadi et al. 2016): Poisson sampling,
//! per-example clipping and Gaussian noise.

use ndarray::{Array1, Array2, ArrayD, Axis};

use crate::error::{Error, Result};
use crate::heads::Params;
use crate::numeric::softmax_view;
use crate::training::data::Data;
use crate::training::fit::{forward, params_of, tensors_of};
use crate::training::optimizer::{Optimizer, OptimizerKind, learning_rate};
use crate::training::rng::SplitMix;
use crate::training::{CandidateHead, EpochProgress, TrainListener};

/// DP-SGD settings for one run.
pub(super) struct PrivateSettings {
    pub steps: usize,
    pub sampling_rate: f64,
    pub noise_multiplier: f64,
    pub clip_norm: f32,
    pub learning_rate: f32,
    pub weight_decay: f32,
    pub seed: u64,
}

/// DP-SGD for the linear head: each step takes a Poisson sample, clips each
/// example's gradient to `clip_norm`, adds Gaussian noise of standard
/// deviation `noise_multiplier · clip_norm` to the sum, and divides by the
/// expected batch size. Example weights are ignored: they would change the
/// sensitivity the noise is calibrated to.
pub(super) fn fit_private(
    initial: &Params,
    train: &Data,
    settings: &PrivateSettings,
    listener: &dyn TrainListener,
) -> Result<Params> {
    let mut tensors = tensors_of(initial, true);
    let shapes: Vec<Vec<usize>> = tensors.values.iter().map(|t| t.shape().to_vec()).collect();
    let shape_refs: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
    let mut optimizer = Optimizer::new(OptimizerKind::AdamW, &shape_refs);
    let mut rng = SplitMix::new(settings.seed);
    let expected_batch = (settings.sampling_rate * train.len() as f64).max(1.0) as f32;
    let noise = settings.noise_multiplier as f32 * settings.clip_norm;
    let steps_per_epoch = (1.0 / settings.sampling_rate).round().max(1.0) as usize;
    let warmup = (settings.steps / 20).max(1);
    let mut epoch_loss = 0.0;
    for step in 0..settings.steps {
        if step % steps_per_epoch == 0 && listener.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let batch: Vec<usize> =
            (0..train.len()).filter(|_| f64::from(rng.uniform()) < settings.sampling_rate).collect();
        let shape = tensors.values[0].shape();
        let (mut grad_w, mut grad_b) =
            (Array2::<f32>::zeros((shape[0], shape[1])), Array1::<f32>::zeros(tensors.values[1].len()));
        if !batch.is_empty() {
            let x = train.features.select(Axis(0), &batch);
            let (logits, _) = forward(&tensors.values, initial, x.view());
            let mut g = logits;
            for (mut row, &i) in g.axis_iter_mut(Axis(0)).zip(&batch) {
                softmax_view(row.view_mut());
                epoch_loss -= f64::from(row[train.labels[i]].max(1e-12).ln());
                row[train.labels[i]] -= 1.0;
                // This example's gradient norm over weights and bias.
                let x_norm = train.features.row(i).dot(&train.features.row(i));
                let norm = row.dot(&row).sqrt() * (x_norm + 1.0).sqrt();
                row *= (settings.clip_norm / norm.max(1e-12)).min(1.0);
            }
            grad_w = g.t().dot(&x);
            grad_b = g.sum_axis(Axis(0));
        }
        grad_w.mapv_inplace(|v| v + noise * rng.normal());
        grad_b.mapv_inplace(|v| v + noise * rng.normal());
        grad_w /= expected_batch;
        grad_b /= expected_batch;
        let lr = learning_rate(settings.learning_rate, step, warmup, settings.steps);
        let anchors: Vec<_> = tensors.anchors.iter().map(|a| a.as_ref().map(|a| a.view())).collect();
        let grads = [grad_w.into_dyn(), grad_b.into_dyn()];
        let grad_views: Vec<_> = grads.iter().map(|g| g.view()).collect();
        let mut params: Vec<&mut ArrayD<f32>> = tensors.values.iter_mut().collect();
        optimizer.step(&mut params, &grad_views, &anchors, lr, &[settings.weight_decay, 0.0]);
        if (step + 1) % steps_per_epoch == 0 {
            listener.on_epoch(&EpochProgress {
                candidate: CandidateHead::PrivateLinear {
                    noise_multiplier: settings.noise_multiplier,
                    clip_norm: settings.clip_norm,
                },
                epoch: (step + 1) / steps_per_epoch,
                loss: epoch_loss / train.len() as f64,
                validation_loss: None,
                validation_accuracy: None,
            });
            epoch_loss = 0.0;
        }
    }
    Ok(params_of(initial, tensors.values))
}

//! Mini-batch training of the linear and MLP heads: weighted cross-entropy
//! with label smoothing, gradient clipping, warm-up + cosine schedule, and
//! early stopping on validation loss (the best epoch's weights are kept).

use ndarray::{Array1, Array2, ArrayD, ArrayView2, Axis, Ix1, Ix2};

use super::data::Data;
use super::optimizer::{Optimizer, OptimizerKind, learning_rate};
use super::parallel::in_parallel;
use super::plan::Budget;
use super::rng::SplitMix;
use super::{CandidateHead, EpochProgress, TrainListener};
use crate::error::{Error, Result};
use crate::heads::Params;
use crate::numeric::{argmax, cross_entropy, softmax_view};

const CLIP_NORM: f32 = 5.0;
const PATIENCE: usize = 3;
/// Rows per gradient chunk (see `loss_and_gradients`).
const CHUNK_ROWS: usize = 128;

/// Settings of one fit.
#[derive(Debug, Clone)]
pub(crate) struct FitSettings {
    pub epochs: usize,
    pub batch_size: usize,
    pub learning_rate: f32,
    pub weight_decay: f32,
    pub label_smoothing: f32,
    pub optimizer: OptimizerKind,
    pub seed: u64,
    /// Stop when validation loss has not improved for a few epochs.
    pub early_stopping: bool,
    /// Decay towards the initial parameters (the warm start) instead of zero.
    pub anchored: bool,
}

/// What a fit produced.
pub(crate) struct Fitted {
    pub params: Params,
    pub epochs: usize,
}

/// Parameters as flat tensors, so one optimiser loop serves both heads.
pub(super) struct Tensors {
    pub values: Vec<ArrayD<f32>>,
    /// Decay towards these (the warm start) instead of zero, per tensor.
    pub anchors: Vec<Option<ArrayD<f32>>>,
    /// Biases are not decayed.
    decays: Vec<bool>,
}

/// Fits `initial` on `train`. Inputs are centred on the training mean while
/// fitting: sentence embeddings share a large common direction, and without
/// it every weight update also moves all logits together, which slows the
/// optimiser. The mean is folded into the first bias afterwards, so the
/// head still takes raw features.
pub(crate) fn fit(
    initial: &Params,
    train: &Data,
    validation: Option<&Data>,
    settings: &FitSettings,
    budget: &Budget,
    listener: &dyn TrainListener,
    candidate: CandidateHead,
) -> Result<Fitted> {
    let mean = train.features.mean_axis(Axis(0)).expect("training data is not empty");
    let centred = |data: &Data| Data {
        features: &data.features - &mean,
        labels: data.labels.clone(),
        weights: data.weights.clone(),
    };
    let (train, validation) = (&centred(train), validation.map(centred));
    let validation = validation.as_ref();
    let initial = &with_input_shift(initial, &mean, 1.0);
    let mut tensors = tensors_of(initial, settings.anchored);
    let shapes: Vec<Vec<usize>> = tensors.values.iter().map(|t| t.shape().to_vec()).collect();
    let shape_refs: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
    let mut optimizer = Optimizer::new(settings.optimizer, &shape_refs);
    let steps_per_epoch = train.len().div_ceil(settings.batch_size);
    let total_steps = steps_per_epoch * settings.epochs;
    let warmup = (total_steps / 20).max(1);
    let mut rng = SplitMix::new(settings.seed);
    let mut order: Vec<usize> = (0..train.len()).collect();
    let mut best = (f64::INFINITY, tensors.values.clone(), 0usize);
    let mut step = 0;
    for epoch in 0..settings.epochs {
        if listener.is_cancelled() {
            return Err(Error::Cancelled);
        }
        if budget.exhausted() {
            break;
        }
        rng.shuffle(&mut order);
        let mut epoch_loss = 0.0;
        for batch in order.chunks(settings.batch_size) {
            let (loss, grads) = loss_and_gradients(&tensors.values, initial, train, batch, settings.label_smoothing);
            epoch_loss += loss * batch.len() as f64;
            let scale = clip_scale(&grads);
            let grads: Vec<ArrayD<f32>> = grads.into_iter().map(|g| g * scale).collect();
            let lr = learning_rate(settings.learning_rate, step, warmup, total_steps);
            let decays: Vec<f32> =
                tensors.decays.iter().map(|&d| if d { settings.weight_decay } else { 0.0 }).collect();
            let anchors: Vec<_> = tensors.anchors.iter().map(|a| a.as_ref().map(|a| a.view())).collect();
            let grad_views: Vec<_> = grads.iter().map(|g| g.view()).collect();
            let mut params: Vec<&mut ArrayD<f32>> = tensors.values.iter_mut().collect();
            optimizer.step(&mut params, &grad_views, &anchors, lr, &decays);
            step += 1;
        }
        let train_loss = epoch_loss / train.len() as f64;
        let (monitored, accuracy) = match validation {
            Some(v) => evaluate_loss(&tensors.values, initial, v),
            None => (train_loss, None),
        };
        listener.on_epoch(&EpochProgress {
            candidate,
            epoch: epoch + 1,
            loss: train_loss,
            validation_loss: validation.map(|_| monitored),
            validation_accuracy: accuracy,
        });
        if monitored < best.0 {
            best = (monitored, tensors.values.clone(), epoch + 1);
        } else if settings.early_stopping && validation.is_some() && epoch + 1 - best.2 >= PATIENCE {
            break;
        }
    }
    if best.2 == 0 {
        return Err(Error::TimeBudgetExceeded("the time budget ended before the first epoch".into()));
    }
    Ok(Fitted { params: with_input_shift(&params_of(initial, best.1), &mean, -1.0), epochs: best.2 })
}

/// The same head for inputs moved by `-sign · shift`: `W(x − s) + b + W s`
/// equals `W x + b`, so the first layer's bias absorbs `sign · W s`.
fn with_input_shift(params: &Params, shift: &Array1<f32>, sign: f32) -> Params {
    match params {
        Params::Linear { weights, bias } => {
            Params::Linear { weights: weights.clone(), bias: bias + &(weights.dot(shift) * sign) }
        }
        Params::Mlp { w1, b1, w2, b2, skip } => Params::Mlp {
            w1: w1.clone(),
            b1: b1 + &(w1.dot(shift) * sign),
            w2: w2.clone(),
            b2: match skip {
                Some(skip) => b2 + &(skip.dot(shift) * sign),
                None => b2.clone(),
            },
            skip: skip.clone(),
        },
        Params::Prototype { .. } => params.clone(),
    }
}

pub(super) fn tensors_of(params: &Params, anchor: bool) -> Tensors {
    let (values, decays): (Vec<ArrayD<f32>>, Vec<bool>) = match params {
        Params::Linear { weights, bias } => {
            (vec![weights.clone().into_dyn(), bias.clone().into_dyn()], vec![true, false])
        }
        Params::Mlp { w1, b1, w2, b2, skip } => {
            let mut values =
                vec![w1.clone().into_dyn(), b1.clone().into_dyn(), w2.clone().into_dyn(), b2.clone().into_dyn()];
            // The skip connection is a linear head: free, like the linear head's best setting.
            values.extend(skip.iter().map(|s| s.clone().into_dyn()));
            let decays = [true, false, true, false, false][..values.len()].to_vec();
            (values, decays)
        }
        Params::Prototype { .. } => unreachable!("prototype heads are not trained by gradient"),
    };
    let anchors = values.iter().zip(&decays).map(|(v, &d)| (anchor && d).then(|| v.clone())).collect();
    Tensors { values, anchors, decays }
}

pub(super) fn params_of(shape: &Params, values: Vec<ArrayD<f32>>) -> Params {
    let two = |t: &ArrayD<f32>| t.clone().into_dimensionality::<Ix2>().expect("2-d parameter");
    let one = |t: &ArrayD<f32>| t.clone().into_dimensionality::<Ix1>().expect("1-d parameter");
    match shape {
        Params::Linear { .. } => Params::Linear { weights: two(&values[0]), bias: one(&values[1]) },
        Params::Mlp { .. } => Params::Mlp {
            w1: two(&values[0]),
            b1: one(&values[1]),
            w2: two(&values[2]),
            b2: one(&values[3]),
            skip: values.get(4).map(two),
        },
        Params::Prototype { .. } => unreachable!(),
    }
}

/// Forward pass: logits and, for the MLP, the hidden activations.
pub(super) fn forward(
    values: &[ArrayD<f32>],
    shape: &Params,
    x: ArrayView2<'_, f32>,
) -> (Array2<f32>, Option<Array2<f32>>) {
    match shape {
        Params::Linear { .. } => (x.dot(&view2(&values[0]).t()) + view1(&values[1]), None),
        Params::Mlp { .. } => {
            let hidden = (x.dot(&view2(&values[0]).t()) + view1(&values[1])).mapv_into(|h| h.max(0.0));
            let mut logits = hidden.dot(&view2(&values[2]).t()) + view1(&values[3]);
            if let Some(skip) = values.get(4) {
                logits += &x.dot(&view2(skip).t());
            }
            (logits, Some(hidden))
        }
        Params::Prototype { .. } => unreachable!(),
    }
}

fn view2(tensor: &ArrayD<f32>) -> ArrayView2<'_, f32> {
    tensor.view().into_dimensionality::<Ix2>().expect("2-d parameter")
}

fn view1(tensor: &ArrayD<f32>) -> ndarray::ArrayView1<'_, f32> {
    tensor.view().into_dimensionality::<Ix1>().expect("1-d parameter")
}

/// Weighted, label-smoothed cross-entropy of a batch and its gradients.
/// Large batches are split into chunks of `CHUNK_ROWS` computed on all
/// cores; the chunks are summed in order, so the result does not depend on
/// the number of cores.
fn loss_and_gradients(
    values: &[ArrayD<f32>],
    shape: &Params,
    data: &Data,
    batch: &[usize],
    smoothing: f32,
) -> (f64, Vec<ArrayD<f32>>) {
    let weight_sum: f32 = batch.iter().map(|&i| data.weights[i]).sum();
    let chunks: Vec<&[usize]> = batch.chunks(CHUNK_ROWS).collect();
    let mut parts =
        in_parallel(&chunks, |rows| chunk_loss_and_gradients(values, shape, data, rows, smoothing, weight_sum))
            .into_iter();
    let (mut loss, mut grads) = parts.next().expect("a batch has rows");
    for (part_loss, part_grads) in parts {
        loss += part_loss;
        grads.iter_mut().zip(part_grads).for_each(|(sum, part)| *sum += &part);
    }
    (loss, grads)
}

/// Loss and gradients of the rows `rows` of a batch whose weights sum to `weight_sum`.
fn chunk_loss_and_gradients(
    values: &[ArrayD<f32>],
    shape: &Params,
    data: &Data,
    rows: &[usize],
    smoothing: f32,
    weight_sum: f32,
) -> (f64, Vec<ArrayD<f32>>) {
    let x = data.features.select(Axis(0), rows);
    let (logits, hidden) = forward(values, shape, x.view());
    let classes = logits.ncols();
    let mut probabilities = logits;
    let mut loss = 0.0f64;
    for (mut row, &i) in probabilities.axis_iter_mut(Axis(0)).zip(rows) {
        softmax_view(row.view_mut());
        let w = data.weights[i] / weight_sum;
        let y = data.labels[i];
        let off = smoothing / classes as f32;
        for (c, p) in row.iter_mut().enumerate() {
            let target = off + if c == y { 1.0 - smoothing } else { 0.0 };
            if target > 0.0 {
                loss -= f64::from(w * target * p.max(1e-12).ln());
            }
            *p = (*p - target) * w;
        }
    }
    let g = probabilities; // dL/dlogits
    let grads = match (shape, hidden) {
        (Params::Linear { .. }, _) => vec![g.t().dot(&x).into_dyn(), g.sum_axis(Axis(0)).into_dyn()],
        (Params::Mlp { .. }, Some(hidden)) => {
            let mut d_hidden = g.dot(&view2(&values[2]));
            // ReLU: no gradient through units that were off.
            ndarray::Zip::from(&mut d_hidden).and(&hidden).for_each(|d, &h| {
                if h <= 0.0 {
                    *d = 0.0;
                }
            });
            let mut grads = vec![
                d_hidden.t().dot(&x).into_dyn(),
                d_hidden.sum_axis(Axis(0)).into_dyn(),
                g.t().dot(&hidden).into_dyn(),
                g.sum_axis(Axis(0)).into_dyn(),
            ];
            if values.len() > 4 {
                grads.push(g.t().dot(&x).into_dyn());
            }
            grads
        }
        _ => unreachable!(),
    };
    (loss, grads)
}

fn clip_scale(grads: &[ArrayD<f32>]) -> f32 {
    let norm = grads.iter().map(|g| g.iter().map(|v| v * v).sum::<f32>()).sum::<f32>().sqrt();
    if norm > CLIP_NORM { CLIP_NORM / norm } else { 1.0 }
}

/// Mean unweighted log loss and accuracy on `data`.
fn evaluate_loss(values: &[ArrayD<f32>], shape: &Params, data: &Data) -> (f64, Option<f64>) {
    let (logits, _) = forward(values, shape, data.features.view());
    let mut loss = 0.0;
    let mut correct = 0usize;
    for (row, &y) in logits.rows().into_iter().zip(data.labels.iter()) {
        loss += cross_entropy(row.iter().copied(), y, 1.0);
        let predicted = argmax(row.as_slice().expect("standard layout")).0;
        correct += usize::from(predicted == y);
    }
    (loss / data.len() as f64, Some(correct as f64 / data.len() as f64))
}

/// An MLP start around a linear head (`weights`, `bias`) as its skip
/// connection: a He-initialised first layer and a second layer of
/// 1/√hidden, whose output perturbs the linear head's logits by about one,
/// so the hidden layer takes part from the first step (a zero second layer
/// validated worse: README, "Training heads on the device").
pub(crate) fn mlp_around(weights: Array2<f32>, bias: Array1<f32>, hidden: usize, seed: u64) -> Params {
    let mut rng = SplitMix::new(seed);
    let (classes, dim) = weights.dim();
    let he = (2.0 / dim as f32).sqrt();
    let small = (1.0 / hidden as f32).sqrt();
    Params::Mlp {
        w1: Array2::from_shape_fn((hidden, dim), |_| rng.normal() * he),
        b1: Array1::zeros(hidden),
        w2: Array2::from_shape_fn((classes, hidden), |_| rng.normal() * small),
        b2: bias,
        skip: Some(weights),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(rows: usize, dim: usize, classes: usize) -> Data {
        let mut rng = SplitMix::new(7);
        Data {
            features: Array2::from_shape_fn((rows, dim), |_| rng.normal() + 3.0),
            labels: (0..rows).map(|i| i % classes).collect(),
            weights: (0..rows).map(|i| 1.0 + (i % 3) as f32).collect(),
        }
    }

    fn close(a: &ArrayD<f32>, b: &ArrayD<f32>, tolerance: f32) -> bool {
        a.shape() == b.shape() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tolerance * (1.0 + y.abs()))
    }

    #[test]
    fn a_shifted_head_on_shifted_inputs_gives_the_same_logits() {
        let data = data(20, 6, 3);
        let mean = data.features.mean_axis(Axis(0)).unwrap();
        let linear = Params::Linear {
            weights: Array2::from_shape_fn((3, 6), |(i, j)| (i as f32 - j as f32) * 0.3),
            bias: Array1::from_vec(vec![0.1, -0.2, 0.3]),
        };
        for head in [linear.clone(), mlp_around(Array2::from_elem((3, 6), 0.2), Array1::zeros(3), 5, 3)] {
            let centred = &data.features - &mean;
            let shifted = with_input_shift(&head, &mean, 1.0);
            let values = |p: &Params| tensors_of(p, false).values;
            let (raw, _) = forward(&values(&head), &head, data.features.view());
            let (moved, _) = forward(&values(&shifted), &shifted, centred.view());
            assert!(close(&moved.into_dyn(), &raw.into_dyn(), 1e-4));
            let back = tensors_of(&with_input_shift(&shifted, &mean, -1.0), false).values;
            assert!(values(&head).iter().zip(&back).all(|(a, b)| close(a, b, 1e-5)));
        }
    }

    #[test]
    fn chunked_gradients_equal_the_whole_batch() {
        let data = data(300, 6, 3);
        let head = mlp_around(Array2::from_elem((3, 6), 0.2), Array1::zeros(3), 5, 3);
        let values = tensors_of(&head, false).values;
        let batch: Vec<usize> = (0..300).rev().collect();
        let weight_sum: f32 = data.weights.iter().sum();
        let (loss, grads) = loss_and_gradients(&values, &head, &data, &batch, 0.1);
        let (whole_loss, whole) = chunk_loss_and_gradients(&values, &head, &data, &batch, 0.1, weight_sum);
        assert!((loss - whole_loss).abs() < 1e-4 * whole_loss.abs());
        assert_eq!(grads.len(), 5, "w1, b1, w2, b2 and the skip connection");
        assert!(grads.iter().zip(&whole).all(|(a, b)| close(a, b, 1e-4)));
        // Deterministic: the same chunks, summed in the same order.
        assert_eq!(loss_and_gradients(&values, &head, &data, &batch, 0.1).1, grads);
    }
}

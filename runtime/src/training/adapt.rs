//! Adapting a backbone's top transformer layers to a task's labels with a
//! supervised contrastive objective: in each batch (so many labels × so
//! many examples each), every example's sentence vector is pulled towards
//! those of its label and pushed from the rest. A head is then trained on
//! the adapted vectors as on frozen ones.
//!
//! The examples' trunk states are computed once (the layers below the
//! adapted ones never change); each step runs the top layers forward and
//! backward on one batch.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};

use super::low_rank::LowRank;
use super::optimizer::{Optimizer, OptimizerKind, learning_rate};
use super::parallel::{in_parallel, threads_free};
use super::rng::SplitMix;
use crate::error::{Error, Result};
use crate::model::Pooling;
use crate::numeric::unit;
use crate::transformer::{InferenceLayer, Layer, Trace, forward_layers};

/// How the top layers are adapted; the defaults are the issue's.
#[derive(Debug, Clone, PartialEq)]
pub struct AdaptOptions {
    pub steps: usize,
    pub labels_per_batch: usize,
    pub examples_per_label: usize,
    /// Softmax temperature of the contrastive loss.
    pub temperature: f32,
    pub learning_rate: f32,
    pub weight_decay: f32,
    /// Low-rank factors of this rank instead of every weight (`low_rank`).
    pub rank: Option<usize>,
    pub seed: u64,
}

impl Default for AdaptOptions {
    /// 32 labels × 4 examples a batch, τ 0.1, AdamW at 3e-5 for 80 steps:
    /// the settings that gained most on CLINC150 at 10 examples per label
    /// (docs/training.md, "Adapting the top layers").
    fn default() -> Self {
        Self {
            steps: 80,
            labels_per_batch: 32,
            examples_per_label: 4,
            temperature: 0.1,
            learning_rate: 3e-5,
            weight_decay: 0.01,
            rank: None,
            seed: 0,
        }
    }
}

/// The top of a backbone as training sees it: its layers, and how their
/// output becomes a sentence vector.
#[derive(Debug, Clone)]
pub(crate) struct Top {
    pub layers: Vec<Layer>,
    pub pooling: Pooling,
    pub normalize: bool,
}

impl Top {
    /// The layers packed for running forward only.
    pub fn packed(&self) -> Vec<InferenceLayer> {
        self.layers.iter().map(InferenceLayer::of).collect()
    }
}

/// What adaptation did.
#[derive(Debug, Clone)]
pub(crate) struct Adaptation {
    pub top: Top,
    /// The trained factors, when adaptation was low-rank (already merged
    /// into `top`; the tests check them against it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub low_rank: Option<LowRank>,
    pub steps: usize,
    /// The contrastive loss of the first and the last batch.
    pub first_loss: f32,
    pub last_loss: f32,
}

/// Adapts `top` to `labels` (one per example; each example's trunk states
/// `[tokens, width]`). `should_stop` is polled before every step and ends
/// the run with the steps done so far (none: `Cancelled`).
pub(crate) fn adapt(
    top: &Top,
    states: &[Array2<f32>],
    labels: &[usize],
    settings: &AdaptOptions,
    should_stop: &dyn Fn() -> bool,
) -> Result<Adaptation> {
    if states.len() != labels.len() || states.is_empty() {
        return Err(Error::InvalidInput(format!("{} trunk states for {} labels", states.len(), labels.len())));
    }
    let mut sampler = BatchSampler::new(labels, settings);
    if sampler.eligible.len() < 2 {
        return Err(Error::InvalidInput("adaptation needs two labels with at least two examples each".into()));
    }
    if sampler.eligible.len() > sampler.labels_per_batch {
        sampler.pair_with_neighbours(&embed(top, &top.packed(), states));
    }
    // Biases and norms are trained here, and the weights too unless a
    // low-rank adaptation trains factors of them instead.
    let mut adapted = top.clone();
    let mut low_rank = settings.rank.map(|rank| LowRank::new(&top.layers, rank.max(1), settings.seed));
    let mut optimizer = Optimizer::for_sizes(OptimizerKind::AdamW, &trained_sizes(&mut adapted, low_rank.as_mut()));
    let warmup = (settings.steps / 10).max(1);
    let (mut first_loss, mut last_loss, mut steps) = (f32::NAN, f32::NAN, 0);
    while steps < settings.steps {
        if should_stop() {
            break;
        }
        let batch = sampler.next_batch();
        let merged =
            low_rank.as_ref().map(|factors| Top { layers: factors.merged(&adapted.layers), ..adapted.clone() });
        let current = merged.as_ref().unwrap_or(&adapted);
        let (loss, mut gradients) = loss_and_gradients(current, states, labels, &batch, settings.temperature);
        if !loss.is_finite() {
            return Err(Error::InvalidInput(format!("the contrastive loss became {loss} at step {steps}")));
        }
        if steps == 0 {
            first_loss = loss;
        }
        last_loss = loss;
        let lr = learning_rate(settings.learning_rate, steps, warmup, settings.steps);
        step(&mut optimizer, &mut adapted.layers, low_rank.as_mut(), &mut gradients, lr, settings.weight_decay);
        steps += 1;
    }
    if steps == 0 {
        return Err(Error::Cancelled);
    }
    if let Some(factors) = &low_rank {
        adapted.layers = factors.merged(&adapted.layers);
    }
    let finite =
        adapted.layers.iter_mut().flat_map(|l| l.parameters_mut()).all(|(p, _)| p.iter().all(|v| v.is_finite()));
    if !finite {
        return Err(Error::InvalidInput("adaptation produced non-finite weights".into()));
    }
    Ok(Adaptation { top: adapted, low_rank, steps, first_loss, last_loss })
}

/// The sizes of what the optimiser updates, in `step`'s order.
fn trained_sizes(top: &mut Top, low_rank: Option<&mut LowRank>) -> Vec<usize> {
    let mut sizes: Vec<usize> = low_rank.map(|f| f.values_mut().iter().map(|v| v.len()).collect()).unwrap_or_default();
    let full = sizes.is_empty();
    let own = top.layers.iter_mut().flat_map(Layer::parameters_mut).filter(|&(_, matrix)| full || !matrix);
    sizes.extend(own.map(|(p, _)| p.len()));
    sizes
}

/// One optimiser step: the factors (if low-rank) then the layers' own
/// tensors (all of them, or only biases and norms when low-rank).
fn step(
    optimizer: &mut Optimizer,
    layers: &mut [Layer],
    low_rank: Option<&mut LowRank>,
    gradients: &mut [Layer],
    lr: f32,
    weight_decay: f32,
) {
    let factor_gradients = low_rank.as_ref().map(|f| f.gradients(gradients));
    let full = low_rank.is_none();
    let mut params: Vec<(&mut [f32], bool)> = Vec::new();
    let mut grads: Vec<&[f32]> = Vec::new();
    if let (Some(factors), Some(factor_gradients)) = (low_rank, &factor_gradients) {
        params.extend(factors.values_mut().into_iter().map(|v| (v, true)));
        for (a, b) in factor_gradients.iter().flatten() {
            grads.extend([a.as_slice().expect("standard layout"), b.as_slice().expect("standard layout")]);
        }
    }
    params.extend(layers.iter_mut().flat_map(Layer::parameters_mut).filter(|&(_, matrix)| full || !matrix));
    let own = gradients.iter_mut().flat_map(Layer::parameters_mut).filter(|&(_, matrix)| full || !matrix);
    grads.extend(own.map(|(g, _)| &*g));
    let decays: Vec<f32> = params.iter().map(|&(_, decays)| if decays { weight_decay } else { 0.0 }).collect();
    let mut slices: Vec<&mut [f32]> = params.iter_mut().map(|(p, _)| &mut **p).collect();
    optimizer.step_slices(&mut slices, &grads, &vec![None; grads.len()], lr, &decays);
}

/// The sentence vectors of texts given their trunk states, through `top`
/// with its layers packed as `packed` (from `top.packed()`); runs of 64
/// texts spread over the cores, or one run's tokens split over two when
/// there are fewer texts (an app predicting one text at a time).
pub(crate) fn embed(top: &Top, packed: &[InferenceLayer], states: &[Array2<f32>]) -> Vec<Vec<f32>> {
    const TEXTS_PER_RUN: usize = 64;
    let runs: Vec<Vec<usize>> =
        (0..states.len()).collect::<Vec<_>>().chunks(TEXTS_PER_RUN).map(<[usize]>::to_vec).collect();
    let threads_per_run = if runs.len() == 1 { threads_free() } else { 1 };
    let pooled = in_parallel(&runs, |members| {
        let (hidden, lengths) = batch(states, members);
        let hidden = forward_layers(packed, hidden, &lengths, threads_per_run);
        sentence_vectors(top, &hidden, &lengths).1
    });
    pooled.iter().flat_map(|run| run.rows().into_iter().map(|row| row.to_vec())).collect()
}

/// `members` of `states` packed into one batch, and each one's length.
fn batch(states: &[Array2<f32>], members: &[usize]) -> (Array2<f32>, Vec<usize>) {
    let lengths: Vec<usize> = members.iter().map(|&i| states[i].nrows()).collect();
    let views: Vec<ArrayView2<f32>> = members.iter().map(|&i| states[i].view()).collect();
    (ndarray::concatenate(Axis(0), &views).expect("trunk states share their width"), lengths)
}

/// A forward pass over `members` of `states` packed into one batch: the
/// sentence vectors `[members, width]` and what the backward pass needs.
fn forward(top: &Top, states: &[Array2<f32>], members: &[usize]) -> Forward {
    let (mut hidden, lengths) = batch(states, members);
    let mut traces = Vec::with_capacity(top.layers.len());
    for layer in &top.layers {
        let trace = layer.trace(hidden.view(), &lengths);
        hidden = trace.output().to_owned();
        traces.push(trace);
    }
    let (norms, vectors) = sentence_vectors(top, &hidden, &lengths);
    Forward { traces, lengths, norms, vectors }
}

/// Each text's pooled vector's norm, and the vectors (normalised when the
/// model's are).
fn sentence_vectors(top: &Top, hidden: &Array2<f32>, lengths: &[usize]) -> (Array1<f32>, Array2<f32>) {
    let pooled = pool(hidden, lengths, top.pooling);
    let norms = pooled.map_axis(Axis(1), |row| row.dot(&row).sqrt().max(1e-12));
    let vectors = if top.normalize { &pooled / &norms.clone().insert_axis(Axis(1)) } else { pooled };
    (norms, vectors)
}

struct Forward {
    traces: Vec<Trace>,
    lengths: Vec<usize>,
    norms: Array1<f32>,
    vectors: Array2<f32>,
}

fn pool(hidden: &Array2<f32>, lengths: &[usize], pooling: Pooling) -> Array2<f32> {
    let mut pooled = Array2::zeros((lengths.len(), hidden.ncols()));
    let mut start = 0;
    for (mut row, &len) in pooled.rows_mut().into_iter().zip(lengths) {
        let tokens = hidden.slice_axis(Axis(0), (start..start + len).into());
        match pooling {
            Pooling::Mean => row.assign(&tokens.mean_axis(Axis(0)).expect("a text has tokens")),
            Pooling::Cls => row.assign(&tokens.row(0)),
        }
        start += len;
    }
    pooled
}

/// A batch runs forward and backward in this many parts, one per core up
/// to that many: the top layers' products are single-threaded, and the
/// texts of a batch only meet in the loss. Fixed rather than the device's
/// core count, so a seed gives the same weights on every device.
const BATCH_PARTS: usize = 2;

/// The contrastive loss of one batch and its gradient for every layer.
fn loss_and_gradients(
    top: &Top,
    states: &[Array2<f32>],
    labels: &[usize],
    members: &[usize],
    temperature: f32,
) -> (f32, Vec<Layer>) {
    let parts: Vec<&[usize]> = members.chunks(members.len().div_ceil(BATCH_PARTS).max(1)).collect();
    let forwards = in_parallel(&parts, |part| forward(top, states, part));
    let part_vectors: Vec<ArrayView2<f32>> = forwards.iter().map(|f| f.vectors.view()).collect();
    let vectors = ndarray::concatenate(Axis(0), &part_vectors).expect("sentence vectors share their width");
    let batch_labels: Vec<usize> = members.iter().map(|&i| labels[i]).collect();
    let (loss, d_vectors) = contrastive_loss(&vectors, &batch_labels, temperature);
    let mut starts = vec![0];
    starts.extend(parts.iter().scan(0, |end, part| {
        *end += part.len();
        Some(*end)
    }));
    let part_indices: Vec<usize> = (0..parts.len()).collect();
    let part_gradients = in_parallel(&part_indices, |&p| {
        let d_part = d_vectors.slice_axis(Axis(0), (starts[p]..starts[p + 1]).into());
        backward(top, &forwards[p], d_part)
    });
    let mut parts = part_gradients.into_iter();
    let mut gradients = parts.next().expect("a batch has a part");
    for part in parts {
        gradients.iter_mut().zip(part).for_each(|(sum, layer)| sum.add(layer));
    }
    (loss, gradients)
}

/// The gradient for every layer from the loss's gradient with respect to
/// the sentence vectors of one forward pass.
fn backward(top: &Top, forward: &Forward, d_vectors: ArrayView2<f32>) -> Vec<Layer> {
    let d_vectors = d_vectors.to_owned();
    let d_pooled =
        if top.normalize { normalisation_backward(&forward.vectors, &forward.norms, &d_vectors) } else { d_vectors };
    let mut d_hidden = pooling_backward(&d_pooled, &forward.lengths, top.pooling);
    let mut gradients: Vec<Layer> = top.layers.iter().map(Layer::zeros_like).collect();
    let lowest = top.layers.len() - 1;
    let trained = top.layers.iter().zip(&forward.traces).zip(&mut gradients).rev().enumerate();
    for (from_top, ((layer, trace), gradient)) in trained {
        // The trunk below is frozen: the lowest layer's input needs no gradient.
        if from_top == lowest {
            layer.backward_to_weights(trace, d_hidden.view(), gradient);
        } else {
            d_hidden = layer.backward(trace, d_hidden.view(), gradient);
        }
    }
    gradients
}

/// Supervised contrastive loss (Khosla et al., 2020) over unit vectors:
/// for each anchor with positives P, −1/|P| Σ_p log softmax_{a≠i}(z_i·z_a/τ)_p,
/// averaged over anchors. Returns the loss and its gradient per vector.
fn contrastive_loss(vectors: &Array2<f32>, labels: &[usize], temperature: f32) -> (f32, Array2<f32>) {
    let n = vectors.nrows();
    let scores = vectors.dot(&vectors.t()) / temperature;
    let mut d_scores = Array2::<f32>::zeros((n, n));
    let anchors = (0..n).filter(|&i| (0..n).any(|a| a != i && labels[a] == labels[i])).count().max(1) as f32;
    let mut loss = 0.0;
    for i in 0..n {
        let positives = (0..n).filter(|&a| a != i && labels[a] == labels[i]).count();
        if positives == 0 {
            continue;
        }
        let largest = (0..n).filter(|&a| a != i).map(|a| scores[[i, a]]).fold(f32::NEG_INFINITY, f32::max);
        let total: f32 = (0..n).filter(|&a| a != i).map(|a| (scores[[i, a]] - largest).exp()).sum();
        let log_total = largest + total.ln();
        for a in (0..n).filter(|&a| a != i) {
            let positive = labels[a] == labels[i];
            if positive {
                loss -= (scores[[i, a]] - log_total) / positives as f32 / anchors;
            }
            let softmax = (scores[[i, a]] - log_total).exp();
            let target = if positive { 1.0 / positives as f32 } else { 0.0 };
            d_scores[[i, a]] = (softmax - target) / anchors;
        }
    }
    let symmetric = &d_scores + &d_scores.t();
    (loss, symmetric.dot(vectors) / temperature)
}

/// z = u / ‖u‖: du = (dz − z (z·dz)) / ‖u‖ per row.
fn normalisation_backward(vectors: &Array2<f32>, norms: &Array1<f32>, d_vectors: &Array2<f32>) -> Array2<f32> {
    let along = (vectors * d_vectors).sum_axis(Axis(1)).insert_axis(Axis(1));
    (d_vectors - &(vectors * &along)) / norms.view().insert_axis(Axis(1))
}

/// Each text's pooled gradient back onto its tokens.
fn pooling_backward(d_pooled: &Array2<f32>, lengths: &[usize], pooling: Pooling) -> Array2<f32> {
    let mut d_hidden = Array2::zeros((lengths.iter().sum(), d_pooled.ncols()));
    let mut start = 0;
    for (d_text, &len) in d_pooled.rows().into_iter().zip(lengths) {
        let mut tokens = d_hidden.slice_axis_mut(Axis(0), (start..start + len).into());
        match pooling {
            Pooling::Mean => tokens.rows_mut().into_iter().for_each(|mut t| t.assign(&(&d_text / len as f32))),
            Pooling::Cls => tokens.row_mut(0).assign(&d_text),
        }
        start += len;
    }
    d_hidden
}

/// Batches of so many labels with so many examples each, drawn without
/// replacement until every eligible label has been used, then reshuffled.
/// When the labels are more than a batch holds, half of a batch's labels
/// are drawn so and each brings one of its nearest labels: confusable
/// labels then meet in the loss far more often than by chance.
struct BatchSampler {
    /// Labels with at least two examples, and their examples.
    eligible: Vec<Vec<usize>>,
    /// Each eligible label's nearest others (none until paired).
    neighbours: Vec<Vec<usize>>,
    order: Vec<usize>,
    next: usize,
    labels_per_batch: usize,
    examples_per_label: usize,
    random: SplitMix,
}

/// How many of a label's nearest labels it may bring into a batch.
const NEIGHBOURS: usize = 3;

impl BatchSampler {
    fn new(labels: &[usize], settings: &AdaptOptions) -> Self {
        let classes = labels.iter().copied().max().map_or(0, |m| m + 1);
        let mut by_label = vec![Vec::new(); classes];
        for (index, &label) in labels.iter().enumerate() {
            by_label[label].push(index);
        }
        let eligible: Vec<Vec<usize>> = by_label.into_iter().filter(|members| members.len() >= 2).collect();
        let order = (0..eligible.len()).collect();
        Self {
            eligible,
            neighbours: Vec::new(),
            order,
            next: usize::MAX,
            labels_per_batch: settings.labels_per_batch.max(2),
            examples_per_label: settings.examples_per_label.max(2),
            random: SplitMix::new(settings.seed),
        }
    }

    /// Finds each label's nearest labels: the cosine of the mean of its
    /// examples' `vectors` (one per example, before adaptation).
    fn pair_with_neighbours(&mut self, vectors: &[Vec<f32>]) {
        let centroids: Vec<Array1<f32>> = self
            .eligible
            .iter()
            .map(|members| {
                let mut sum = Array1::<f32>::zeros(vectors[0].len());
                members.iter().for_each(|&i| sum += &ArrayView1::from(vectors[i].as_slice()));
                unit(sum)
            })
            .collect();
        self.neighbours = (0..centroids.len())
            .map(|label| {
                let mut others: Vec<(f32, usize)> = (0..centroids.len())
                    .filter(|&other| other != label)
                    .map(|other| (centroids[label].dot(&centroids[other]), other))
                    .collect();
                others.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                others.into_iter().take(NEIGHBOURS).map(|(_, other)| other).collect()
            })
            .collect();
    }

    fn next_batch(&mut self) -> Vec<usize> {
        let wanted = self.labels_per_batch.min(self.eligible.len());
        let drawn = if self.neighbours.is_empty() { wanted } else { wanted.div_ceil(2) };
        let mut chosen: Vec<usize> = Vec::with_capacity(wanted);
        while chosen.len() < drawn {
            self.draw_into(&mut chosen);
        }
        for i in 0..drawn {
            if chosen.len() == wanted {
                break;
            }
            if let Some(neighbour) = self.free_neighbour(chosen[i], &chosen) {
                chosen.push(neighbour);
            }
        }
        while chosen.len() < wanted {
            self.draw_into(&mut chosen);
        }
        let mut batch = Vec::with_capacity(wanted * self.examples_per_label);
        for label in chosen {
            let members = &mut self.eligible[label];
            self.random.shuffle(members);
            batch.extend(members.iter().take(self.examples_per_label));
        }
        batch
    }

    /// The next label of the shuffled order, unless already chosen.
    fn draw_into(&mut self, chosen: &mut Vec<usize>) {
        if self.next >= self.order.len() {
            self.random.shuffle(&mut self.order);
            self.next = 0;
        }
        let label = self.order[self.next];
        self.next += 1;
        // After a reshuffle mid-batch a label may come round again.
        if !chosen.contains(&label) {
            chosen.push(label);
        }
    }

    /// One of `label`'s nearest labels not yet chosen, at random.
    fn free_neighbour(&mut self, label: usize, chosen: &[usize]) -> Option<usize> {
        let free: Vec<usize> = self.neighbours[label].iter().copied().filter(|n| !chosen.contains(n)).collect();
        (!free.is_empty()).then(|| free[(self.random.next_u64() % free.len() as u64) as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::{Dense, Norm};

    fn values(count: usize, seed: u64) -> Vec<f32> {
        let mut random = SplitMix::new(seed);
        (0..count).map(|_| random.uniform() - 0.5).collect()
    }

    fn matrix(rows: usize, columns: usize, seed: u64) -> Array2<f32> {
        Array2::from_shape_vec((rows, columns), values(rows * columns, seed)).unwrap()
    }

    fn layer(width: usize, seed: u64) -> Layer {
        let dense =
            |i: usize, o: usize, s: u64| Dense { weight: matrix(i, o, s), bias: Array1::from(values(o, s + 1)) };
        let norm = || Norm { gamma: Array1::ones(width), beta: Array1::zeros(width), epsilon: 1e-6 };
        Layer {
            heads: 2,
            score_scale: 0.5,
            query: dense(width, width, seed),
            key: dense(width, width, seed + 2),
            value: dense(width, width, seed + 4),
            attention_output: dense(width, width, seed + 6),
            attention_norm: norm(),
            intermediate: dense(width, 2 * width, seed + 8),
            output: dense(2 * width, width, seed + 10),
            output_norm: norm(),
        }
    }

    fn toy(pooling: Pooling) -> (Top, Vec<Array2<f32>>, Vec<usize>) {
        let top = Top { layers: vec![layer(8, 1), layer(8, 20)], pooling, normalize: true };
        let states: Vec<Array2<f32>> = (0..12).map(|i| matrix(2 + i % 3, 8, 100 + i as u64) * 2.0).collect();
        let labels: Vec<usize> = (0..12).map(|i| i % 4).collect();
        (top, states, labels)
    }

    fn batch_loss(top: &Top, states: &[Array2<f32>], labels: &[usize], members: &[usize]) -> f32 {
        let vectors = forward(top, states, members).vectors;
        let batch_labels: Vec<usize> = members.iter().map(|&i| labels[i]).collect();
        contrastive_loss(&vectors, &batch_labels, 0.1).0
    }

    #[test]
    fn gradients_match_finite_differences_through_pooling_and_layers() {
        for pooling in [Pooling::Mean, Pooling::Cls] {
            let (top, states, labels) = toy(pooling);
            let members: Vec<usize> = (0..12).collect();
            let (_, mut gradients) = loss_and_gradients(&top, &states, &labels, &members, 0.1);
            let analytic: Vec<f32> = [(0, 0, 3), (1, 6, 10), (1, 13, 2), (0, 10, 1)]
                .iter()
                .map(|&(l, p, i)| gradients[l].parameters_mut()[p].0[i])
                .collect();
            for (&(l, p, i), analytic) in [(0, 0, 3), (1, 6, 10), (1, 13, 2), (0, 10, 1)].iter().zip(analytic) {
                let step = 1e-2;
                let shifted = |delta: f32| {
                    let mut top = top.clone();
                    top.layers[l].parameters_mut()[p].0[i] += delta;
                    batch_loss(&top, &states, &labels, &members)
                };
                let numeric = (shifted(step) - shifted(-step)) / (2.0 * step);
                let tolerance = 2e-3 + 3e-2 * numeric.abs();
                assert!(
                    (analytic - numeric).abs() <= tolerance,
                    "{pooling:?} layer {l} tensor {p}[{i}]: {analytic} vs {numeric}"
                );
            }
        }
    }

    /// 40 steps over the toy's four labels, three examples each.
    fn toy_options(learning_rate: f32) -> AdaptOptions {
        AdaptOptions { steps: 40, labels_per_batch: 4, examples_per_label: 3, learning_rate, ..Default::default() }
    }

    #[test]
    fn adaptation_lowers_the_loss_and_repeats_given_a_seed() {
        let (top, states, labels) = toy(Pooling::Mean);
        let settings = toy_options(1e-2);
        let first = adapt(&top, &states, &labels, &settings, &|| false).unwrap();
        assert_eq!(first.steps, 40);
        assert!(first.last_loss < 0.5 * first.first_loss, "{} -> {}", first.first_loss, first.last_loss);
        let again = adapt(&top, &states, &labels, &settings, &|| false).unwrap();
        assert_eq!(embed(&first.top, &first.top.packed(), &states), embed(&again.top, &again.top.packed(), &states));
        let other = adapt(&top, &states, &labels, &AdaptOptions { seed: 7, ..settings }, &|| false).unwrap();
        assert_ne!(embed(&first.top, &first.top.packed(), &states), embed(&other.top, &other.top.packed(), &states));
    }

    #[test]
    fn low_rank_adaptation_lowers_the_loss_with_few_values() {
        let (top, states, labels) = toy(Pooling::Mean);
        let settings = AdaptOptions { rank: Some(2), ..toy_options(3e-2) };
        let adapted = adapt(&top, &states, &labels, &settings, &|| false).unwrap();
        assert!(adapted.last_loss < 0.7 * adapted.first_loss, "{} -> {}", adapted.first_loss, adapted.last_loss);
        let factors = adapted.low_rank.expect("low-rank factors");
        assert_eq!(factors.len(), 2 * (4 * (8 * 2 + 2 * 8) + (8 * 2 + 2 * 16) + (16 * 2 + 2 * 8)));
        // The adapted weights are the frozen ones plus the factors' product.
        let merged = factors.merged(&top.layers);
        let differs = |a: &Layer, b: &Layer| a.query.weight.iter().zip(&b.query.weight).any(|(x, y)| x != y);
        assert!(differs(&merged[0], &top.layers[0]) && !differs(&merged[0], &adapted.top.layers[0]));
    }

    #[test]
    fn low_rank_gradients_match_finite_differences() {
        let (top, states, labels) = toy(Pooling::Mean);
        let mut factors = LowRank::new(&top.layers, 2, 3);
        for value in factors.values_mut().into_iter().flatten() {
            *value += 0.05;
        }
        let members: Vec<usize> = (0..12).collect();
        let loss_at = |factors: &LowRank| {
            let merged = Top { layers: factors.merged(&top.layers), ..top.clone() };
            batch_loss(&merged, &states, &labels, &members)
        };
        let merged = Top { layers: factors.merged(&top.layers), ..top.clone() };
        let (_, gradients) = loss_and_gradients(&merged, &states, &labels, &members, 0.1);
        let analytic = factors.gradients(&gradients);
        for (layer, product, b_side, index) in [(0, 0, false, 3), (1, 4, true, 5), (0, 5, true, 1), (1, 2, false, 0)] {
            let pick = |g: &(Array2<f32>, Array2<f32>)| {
                if b_side { g.1.as_slice().unwrap()[index] } else { g.0.as_slice().unwrap()[index] }
            };
            let step = 1e-2;
            let shifted = |delta: f32| {
                let mut f = factors.clone();
                let (a, b) = &mut f.factors[layer][product];
                let target = if b_side { b } else { a };
                target.as_slice_mut().unwrap()[index] += delta;
                loss_at(&f)
            };
            let numeric = (shifted(step) - shifted(-step)) / (2.0 * step);
            let value = pick(&analytic[layer][product]);
            assert!(
                (value - numeric).abs() <= 2e-3 + 3e-2 * numeric.abs(),
                "layer {layer} product {product}: {value} vs {numeric}"
            );
        }
    }

    #[test]
    fn unmodified_top_embeds_like_a_plain_forward() {
        let (top, states, _) = toy(Pooling::Mean);
        let vectors = embed(&top, &top.packed(), &states);
        for (state, vector) in states.iter().zip(&vectors) {
            let mut hidden = state.clone();
            for layer in &top.layers {
                hidden = layer.forward(hidden.view(), &[hidden.nrows()]);
            }
            let mean = hidden.mean_axis(Axis(0)).unwrap();
            let norm = mean.dot(&mean).sqrt();
            assert!(mean.iter().zip(vector).all(|(a, b)| (a / norm - b).abs() < 1e-5));
        }
    }

    #[test]
    fn refuses_what_it_cannot_learn_from_and_stops_when_asked() {
        let (top, states, _) = toy(Pooling::Mean);
        let one_each: Vec<usize> = (0..12).collect();
        assert!(matches!(
            adapt(&top, &states, &one_each, &AdaptOptions::default(), &|| false),
            Err(Error::InvalidInput(_))
        ));
        let labels: Vec<usize> = (0..12).map(|i| i % 4).collect();
        assert!(matches!(adapt(&top, &states, &labels, &AdaptOptions::default(), &|| true), Err(Error::Cancelled)));
    }

    #[test]
    fn batches_bring_each_drawn_label_one_of_its_nearest() {
        // Twelve labels of three examples each, in six tight pairs (2j, 2j + 1).
        let labels: Vec<usize> = (0..36).map(|i| i / 3).collect();
        let vectors: Vec<Vec<f32>> = labels
            .iter()
            .map(|&label| {
                let mut vector = vec![0.0; 12];
                vector[label / 2 * 2] = 1.0;
                vector[label] += 0.1;
                vector
            })
            .collect();
        let settings = AdaptOptions { labels_per_batch: 4, examples_per_label: 2, ..AdaptOptions::default() };
        let mut sampler = BatchSampler::new(&labels, &settings);
        sampler.pair_with_neighbours(&vectors);
        assert!((0..12).all(|label| sampler.neighbours[label][0] == label ^ 1));
        for _ in 0..20 {
            let batch: Vec<usize> = sampler.next_batch().iter().map(|&i| labels[i]).collect();
            assert_eq!(batch.len(), 8);
            for (drawn, brought) in [(batch[0], batch[4]), (batch[2], batch[6])] {
                assert!(sampler.neighbours[drawn].contains(&brought), "{batch:?}");
            }
        }
    }
}

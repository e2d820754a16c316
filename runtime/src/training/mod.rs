//! On-device head training on cached features.
//!
//! `train` needs no knobs: it picks the validation scheme from the data
//! (a stratified holdout, or k folds when labels have few examples), scores
//! a small grid of candidates — the prototype head, linear heads with
//! different pulls towards their warm start, and an MLP (the linear start
//! plus a hidden-layer correction) when data allows —
//! keeps the best, refits it on all examples and calibrates it. Linear heads
//! start from class prototypes (label descriptions and class centroids), so
//! few-shot training begins at zero-shot accuracy rather than at chance.

mod fit;
mod optimizer;
mod parallel;
mod privacy;
mod private;
mod promotion;
mod rng;
mod split;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ndarray::{Array1, Array2, ArrayView2, Axis};
use serde::Serialize;

pub use optimizer::OptimizerKind;
pub use privacy::{PrivacySpent, PrivateRun, noise_for_budget, privacy_spent};
pub use promotion::{PromotionDecision, decide_promotion};

use crate::error::{Error, Result};
use crate::evaluation::{Metrics, abstain_threshold, evaluate, fit_temperature, softmax_rows};
use crate::heads::{Head, HeadKind, Params, class_sums, unit};
use fit::{FitSettings, fit, mlp_around};
use parallel::{CallerThreadListener, in_parallel};

/// Logit scale of prototype-initialised heads: cosine 0.1 apart becomes a
/// logit gap of 2.
const PROTOTYPE_SCALE: f32 = 20.0;
/// Noise multipliers above this leave nothing to learn: a private run that
/// would need more is refused as over budget.
const MAX_USEFUL_NOISE: f64 = 10.0;
/// A label description counts as this many examples in its prototype.
const PRIOR_WEIGHT: f32 = 2.0;
/// Mini-batch steps a fit aims for: k-fold fits (few examples, five times
/// over) and holdout fits (early stopping ends them sooner when they converge;
/// on CLINC150's 15,000 examples 1000 steps are 20 epochs; 1500 took 40%
/// longer and its best head, the MLP, validated alike: 0.084 log loss).
const TARGET_STEPS_FOLDS: usize = 400;
const TARGET_STEPS_HOLDOUT: usize = 1000;
/// Below this many examples in its smallest label, k-fold validation.
const FEW_SHOT: usize = 8;
/// Pulls of the linear head towards its prototype start, per step and
/// learning rate: free, gentle, firm.
const LINEAR_DECAY_GRID: [f32; 3] = [0.0, 0.3, 3.0];
/// Decay of the MLP head's hidden-layer weights towards zero, per step and
/// learning rate (its skip connection is free, like the linear head). With
/// 1e-4 the hidden layer grew overconfident on CLINC150 (validation loss
/// turning up after 9 epochs); 0.1 and 0.3 validated alike, 1 underfit.
const MLP_DECAY: f32 = 0.1;
/// With enough examples for a holdout, a firm pull never wins: skip it.
const LINEAR_DECAY_GRID_HOLDOUT: [f32; 1] = [0.0];

/// Examples to learn from: `features` is `n × dim`, row-major.
#[derive(Debug, Clone, Copy)]
pub struct TrainingSet<'a> {
    pub features: &'a [f32],
    pub dim: usize,
    /// Index into `label_names` per example.
    pub labels: &'a [usize],
    /// Per-example weights (default 1).
    pub weights: Option<&'a [f32]>,
    pub label_names: &'a [String],
    /// Per label, the embedding of its description, when one exists.
    pub priors: &'a [Option<Vec<f32>>],
    /// Backbone the features came from; the head is bound to it.
    pub fingerprint: &'a str,
}

/// Which head to train.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HeadChoice {
    /// The best on validation among prototype, linear and (with enough
    /// data) MLP heads.
    #[default]
    Auto,
    Only(HeadKind),
}

/// Training settings. Every field has a sound default; the `Option`s are
/// expert overrides of what is otherwise chosen on validation.
#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub head: HeadChoice,
    pub optimizer: OptimizerKind,
    /// Fixed epoch count instead of early stopping.
    pub epochs: Option<usize>,
    pub learning_rate: Option<f32>,
    /// Fixed pull towards the warm start instead of the validated grid.
    pub weight_decay: Option<f32>,
    pub label_smoothing: f32,
    /// Weights examples so every label counts equally in the loss.
    pub class_balanced: bool,
    pub batch_size: Option<usize>,
    pub seed: u64,
    /// Stops trying candidates or epochs after this long; the best head so
    /// far is kept.
    pub time_budget: Option<Duration>,
    /// Stops any fit after this many epochs.
    pub max_epochs: usize,
    pub validation_fraction: f32,
    /// Share of in-scope validation answers allowed to abstain.
    pub abstain_rate: f64,
    pub mlp_hidden: usize,
    /// Trains a differentially private linear head instead (opt-in).
    pub privacy: Option<PrivacyOptions>,
}

/// Differential privacy for one training run.
#[derive(Debug, Clone, PartialEq)]
pub struct PrivacyOptions {
    /// The task's total budget: this run plus `previous` must stay within it.
    pub epsilon: f64,
    /// Default: min(1e-5, 0.1 / examples).
    pub delta: Option<f64>,
    /// Per-example gradient norm bound.
    pub clip_norm: f32,
    /// Default: an expected batch of 64 examples.
    pub sampling_rate: Option<f64>,
    pub epochs: usize,
    /// The task's earlier private runs (its ledger).
    pub previous: Vec<PrivateRun>,
}

impl PrivacyOptions {
    pub fn with_budget(epsilon: f64) -> Self {
        Self { epsilon, delta: None, clip_norm: 1.0, sampling_rate: None, epochs: 15, previous: Vec::new() }
    }
}

impl Default for TrainOptions {
    fn default() -> Self {
        Self {
            head: HeadChoice::Auto,
            optimizer: OptimizerKind::AdamW,
            epochs: None,
            learning_rate: None,
            weight_decay: None,
            label_smoothing: 0.0,
            class_balanced: true,
            batch_size: None,
            seed: 0,
            time_budget: None,
            max_epochs: 100,
            validation_fraction: 0.15,
            abstain_rate: 0.05,
            mlp_hidden: 256,
            privacy: None,
        }
    }
}

/// Progress of one epoch of one candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochProgress {
    pub candidate: String,
    pub epoch: usize,
    pub loss: f64,
    pub validation_loss: Option<f64>,
    pub validation_accuracy: Option<f64>,
}

/// Hears training progress and may cancel it between epochs. It is called
/// only on the thread that called `train`, though training uses all cores.
pub trait TrainListener: Sync {
    fn on_epoch(&self, _progress: &EpochProgress) {}
    fn is_cancelled(&self) -> bool {
        false
    }
}

/// A listener that ignores progress and never cancels.
#[derive(Debug, Clone, Copy)]
pub struct QuietTraining;
impl TrainListener for QuietTraining {}

/// How one candidate did on validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CandidateReport {
    pub name: String,
    pub validation_accuracy: f64,
    pub validation_log_loss: f64,
    pub epochs: usize,
}

/// What training did and how good the result is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainReport {
    pub head: String,
    pub examples: u64,
    pub classes: u64,
    pub examples_per_class: BTreeMap<String, u64>,
    /// `holdout 15%`, `k-fold (k=5)` or `none (…)` when labels have too few
    /// examples to validate on.
    pub validation_method: String,
    pub candidates: Vec<CandidateReport>,
    pub chosen: String,
    pub epochs: usize,
    pub learning_rate: f32,
    pub weight_decay: f32,
    pub batch_size: usize,
    pub temperature: f32,
    pub abstain_threshold: f32,
    /// Calibrated metrics on the validation examples (held out, or out of fold).
    pub validation: Option<Metrics>,
    /// Rows of the training set those metrics were measured on.
    #[serde(skip)]
    pub validation_rows: Vec<usize>,
    pub train_ms: u64,
    pub budget_exhausted: bool,
    /// For a private run: what it cost, and the (ε, δ) of the task's ledger
    /// with it included. Record `private_run` in the ledger.
    pub private_run: Option<PrivateRun>,
    pub privacy: Option<PrivacySpent>,
}

#[derive(Clone)]
pub(crate) struct Data {
    features: Array2<f32>,
    labels: Vec<usize>,
    weights: Vec<f32>,
}

impl Data {
    fn len(&self) -> usize {
        self.labels.len()
    }

    fn subset(&self, rows: &[usize]) -> Data {
        Data {
            features: self.features.select(Axis(0), rows),
            labels: rows.iter().map(|&i| self.labels[i]).collect(),
            weights: rows.iter().map(|&i| self.weights[i]).collect(),
        }
    }
}

pub(crate) struct Budget {
    start: Instant,
    limit: Option<Duration>,
}

impl Budget {
    fn exhausted(&self) -> bool {
        self.limit.is_some_and(|limit| self.start.elapsed() >= limit)
    }
}

/// How candidates are validated, from the examples per label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Regime {
    Unvalidated,
    Folds(usize),
    Holdout,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Candidate {
    Prototype,
    Linear(f32),
    Mlp(f32),
}

impl Candidate {
    fn name(self) -> String {
        match self {
            Candidate::Prototype => "prototype".into(),
            Candidate::Linear(decay) => format!("linear (pull {decay})"),
            Candidate::Mlp(decay) => format!("mlp (decay {decay})"),
        }
    }

    fn kind(self) -> HeadKind {
        match self {
            Candidate::Prototype => HeadKind::Prototype,
            Candidate::Linear(_) => HeadKind::Linear,
            Candidate::Mlp(_) => HeadKind::Mlp,
        }
    }
}

/// Everything fixed before candidates are tried.
struct Plan<'a> {
    set: &'a TrainingSet<'a>,
    warm_start: Option<&'a Head>,
    options: &'a TrainOptions,
    classes: usize,
    batch_size: usize,
    epochs: usize,
    learning_rate: f32,
}

/// A head that names only the labels of `names` with no examples, built from
/// their descriptions' embeddings (`descriptions` is `labels × dim`).
pub fn zero_shot_head(fingerprint: &str, names: Vec<String>, descriptions: &[f32], dim: usize) -> Result<Head> {
    if names.is_empty() || descriptions.len() != names.len() * dim || dim == 0 {
        return Err(Error::InvalidInput("one description embedding per label is needed".into()));
    }
    let rows =
        ArrayView2::from_shape((names.len(), dim), descriptions).map_err(|e| Error::InvalidInput(e.to_string()))?;
    let centroids = Array2::from_shape_fn((names.len(), dim), |(i, j)| rows[(i, j)]);
    let centroids = normalise_rows(centroids);
    Ok(Head::new(fingerprint, names, Params::Prototype { centroids, scale: PROTOTYPE_SCALE }))
}

/// Trains a head on `set`; see the module documentation.
pub fn train(
    set: &TrainingSet<'_>,
    warm_start: Option<&Head>,
    options: &TrainOptions,
    listener: &dyn TrainListener,
) -> Result<(Head, TrainReport)> {
    let started = Instant::now();
    let data = validate(set, options)?;
    if let Some(privacy) = &options.privacy {
        return private::train_private(set, &data, options, privacy, listener, started);
    }
    let classes = set.label_names.len();
    let counts = count_labels(&data.labels, classes);
    let budget = Budget { start: started, limit: options.time_budget };
    let n = data.len();
    let present: Vec<usize> = (0..classes).filter(|&c| counts[c] > 0).collect();
    let smallest = present.iter().map(|&c| counts[c]).min().unwrap_or(0);
    let singletons = present.iter().filter(|&&c| counts[c] == 1).count();
    let regime = if present.len() < 2 || n < 4 || 2 * singletons > present.len() {
        // Held-out examples of single-example labels cannot be predicted by
        // any candidate: nothing to validate on. The prototype head is used.
        Regime::Unvalidated
    } else if smallest < FEW_SHOT {
        Regime::Folds(smallest.clamp(2, 5))
    } else {
        Regime::Holdout
    };
    let batch_size = options.batch_size.unwrap_or((n / 24).clamp(8, 256)).max(1);
    let steps_per_epoch = n.div_ceil(batch_size);
    let target_steps = if regime == Regime::Holdout { TARGET_STEPS_HOLDOUT } else { TARGET_STEPS_FOLDS };
    let epochs = options.epochs.unwrap_or(target_steps.div_ceil(steps_per_epoch).clamp(8, options.max_epochs.max(1)));
    let learning_rate = options.learning_rate.unwrap_or(match options.optimizer {
        OptimizerKind::AdamW => 0.01,
        OptimizerKind::Sgd => 1.0,
    });
    let plan = Plan { set, warm_start, options, classes, batch_size, epochs, learning_rate };
    let candidates = candidates(options, n, present.len(), regime);

    // (name, validation logits, validation truth, epochs) per candidate.
    let mut scored: Vec<(Candidate, Array2<f32>, Vec<usize>, usize)> = Vec::new();
    let mut validated_rows = Vec::new();
    let mut novelty_threshold = None;
    let validation_method;
    if regime == Regime::Unvalidated {
        validation_method = "none (too few examples per label)".to_string();
    } else if let Regime::Folds(k) = regime {
        validation_method = format!("k-fold (k={k})");
        let folds = split::folds(&data.labels, classes, k, options.seed);
        validated_rows = (0..n).collect();
        for &candidate in &candidates {
            if budget.exhausted() && !scored.is_empty() {
                break;
            }
            // Folds are independent: they are fitted on all cores at once.
            let fold_listener = CallerThreadListener::new(listener);
            let fitted = in_parallel(&folds, |(train_rows, validation_rows)| -> Result<(Array2<f32>, usize)> {
                let (train_part, held) = (data.subset(train_rows), data.subset(validation_rows));
                let (params, epochs_run) =
                    fit_candidate(&plan, candidate, &train_part, None, &budget, &fold_listener, false)?;
                Ok((logits_of(&params, held.features.view()), epochs_run))
            });
            let mut logits = Array2::zeros((n, classes));
            let mut used_epochs = 0;
            for ((_, validation_rows), fold) in folds.iter().zip(fitted) {
                let (fold_logits, epochs_run) = fold?;
                used_epochs = used_epochs.max(epochs_run);
                for (row, &i) in validation_rows.iter().enumerate() {
                    logits.row_mut(i).assign(&fold_logits.row(row));
                }
            }
            scored.push((candidate, logits, data.labels.clone(), used_epochs));
        }
    } else {
        validation_method = format!("holdout {:.0}%", options.validation_fraction * 100.0);
        let (train_rows, validation_rows) =
            split::holdout(&data.labels, classes, options.validation_fraction, options.seed);
        let (train_part, held) = (data.subset(&train_rows), data.subset(&validation_rows));
        validated_rows = validation_rows;
        // Prototypes of the training rows only, so the held-out cosines are honest.
        let train_prototypes = unit_prototypes(&train_part, classes);
        let nearest: Vec<f32> = held
            .features
            .axis_iter(Axis(0))
            .map(|row| train_prototypes.dot(&row).iter().fold(f32::NEG_INFINITY, |m, &c| m.max(c)))
            .collect();
        novelty_threshold = Some(quantile(nearest, options.abstain_rate / 2.0));
        for &candidate in &candidates {
            if budget.exhausted() && !scored.is_empty() {
                break;
            }
            let (params, epochs_run) =
                fit_candidate(&plan, candidate, &train_part, Some(&held), &budget, listener, true)?;
            scored.push((candidate, logits_of(&params, held.features.view()), held.labels.clone(), epochs_run));
        }
    }

    let reports: Vec<CandidateReport> = scored
        .iter()
        .map(|(candidate, logits, truth, epochs)| {
            let (accuracy, log_loss) = calibrated_accuracy_and_loss(logits, truth, classes);
            CandidateReport {
                name: candidate.name(),
                validation_accuracy: accuracy,
                validation_log_loss: log_loss,
                epochs: *epochs,
            }
        })
        .collect();
    // The lowest calibrated log loss: a proper score, steadier than accuracy
    // on a few thousand examples; ties go to the simpler head (listed first).
    let best = reports
        .iter()
        .enumerate()
        .min_by(|(_, a), (_, b)| a.validation_log_loss.total_cmp(&b.validation_log_loss))
        .map(|(i, _)| i);
    let chosen = match (best, options.head) {
        (Some(i), _) => scored[i].0,
        (None, HeadChoice::Auto) => Candidate::Prototype,
        (None, HeadChoice::Only(HeadKind::Linear)) => {
            Candidate::Linear(options.weight_decay.unwrap_or(LINEAR_DECAY_GRID[1]))
        }
        (None, HeadChoice::Only(HeadKind::Mlp)) => Candidate::Mlp(options.weight_decay.unwrap_or(MLP_DECAY)),
        (None, _) => Candidate::Prototype,
    };
    let final_epochs = best.map_or(epochs, |i| scored[i].3.max(1));
    let refit_plan = Plan { epochs: options.epochs.unwrap_or(final_epochs), ..plan };
    let (params, _) = fit_candidate(&refit_plan, chosen, &data, None, &budget_without_limit(), listener, false)?;
    let mut head = Head::new(set.fingerprint, set.label_names.to_vec(), params);

    let mut validation = None;
    if let Some(i) = best {
        let (_, logits, truth, _) = &scored[i];
        head.temperature = fit_temperature(logits.as_slice().expect("standard layout"), truth, classes);
        let mut probabilities = logits.clone().into_raw_vec_and_offset().0;
        softmax_rows(&mut probabilities, classes, head.temperature);
        // With a novelty check too, each check gets half the abstain budget.
        let share = if novelty_threshold.is_some() { options.abstain_rate / 2.0 } else { options.abstain_rate };
        head.abstain_below = abstain_threshold(&probabilities, classes, share);
        if let Some(threshold) = novelty_threshold {
            head.prototypes = Some(unit_prototypes(&data, classes));
            head.novelty_below = threshold;
        }
        validation = Some(evaluate(&probabilities, truth, set.label_names));
    }
    let report = TrainReport {
        head: chosen.kind().name().to_string(),
        examples: n as u64,
        classes: present.len() as u64,
        examples_per_class: examples_per_class(set.label_names, &counts),
        validation_method,
        candidates: reports,
        chosen: chosen.name(),
        epochs: refit_plan.epochs,
        learning_rate,
        weight_decay: match chosen {
            Candidate::Linear(d) | Candidate::Mlp(d) => d,
            Candidate::Prototype => 0.0,
        },
        batch_size,
        temperature: head.temperature,
        abstain_threshold: head.abstain_below,
        validation_rows: if validation.is_some() { validated_rows } else { Vec::new() },
        validation,
        train_ms: started.elapsed().as_millis() as u64,
        budget_exhausted: budget.exhausted(),
        private_run: None,
        privacy: None,
    };
    Ok((head, report))
}

/// The final refit always completes: a head must come out of a training run.
fn budget_without_limit() -> Budget {
    Budget { start: Instant::now(), limit: None }
}

fn candidates(options: &TrainOptions, n: usize, classes: usize, regime: Regime) -> Vec<Candidate> {
    let grid: &[f32] = if regime == Regime::Holdout { &LINEAR_DECAY_GRID_HOLDOUT } else { &LINEAR_DECAY_GRID };
    let linear: Vec<Candidate> = match options.weight_decay {
        Some(decay) => vec![Candidate::Linear(decay)],
        None => grid.iter().map(|&d| Candidate::Linear(d)).collect(),
    };
    let mlp = Candidate::Mlp(options.weight_decay.unwrap_or(MLP_DECAY));
    match options.head {
        HeadChoice::Only(HeadKind::Prototype) => vec![Candidate::Prototype],
        HeadChoice::Only(HeadKind::Linear) => linear,
        HeadChoice::Only(HeadKind::Mlp) => vec![mlp],
        HeadChoice::Auto => {
            let mut all = vec![Candidate::Prototype];
            all.extend(linear);
            // A hidden layer needs data: about 30 examples per label.
            if n >= 30 * classes {
                all.push(mlp);
            }
            all
        }
    }
}

fn fit_candidate(
    plan: &Plan<'_>,
    candidate: Candidate,
    train: &Data,
    validation: Option<&Data>,
    budget: &Budget,
    listener: &dyn TrainListener,
    early_stopping: bool,
) -> Result<(Params, usize)> {
    let prototypes = prototypes(plan, train);
    if candidate == Candidate::Prototype {
        return Ok((Params::Prototype { centroids: prototypes, scale: PROTOTYPE_SCALE }, 0));
    }
    let (initial, anchored) = match candidate {
        Candidate::Linear(_) => {
            let (weights, bias) = linear_start(plan, prototypes);
            (Params::Linear { weights, bias }, true)
        }
        Candidate::Mlp(_) => (mlp_start(plan, prototypes), false),
        Candidate::Prototype => unreachable!(),
    };
    let settings = FitSettings {
        epochs: plan.epochs,
        batch_size: plan.batch_size,
        learning_rate: plan.learning_rate,
        weight_decay: match candidate {
            Candidate::Linear(d) | Candidate::Mlp(d) => d,
            Candidate::Prototype => 0.0,
        },
        label_smoothing: plan.options.label_smoothing,
        optimizer: plan.options.optimizer,
        seed: plan.options.seed,
        early_stopping: early_stopping && plan.options.epochs.is_none(),
        anchored,
    };
    let fitted = fit(&initial, train, validation, &settings, budget, listener, &candidate.name())?;
    Ok((fitted.params, fitted.epochs))
}

/// Unit-length prototypes per label: the sum of its training examples plus
/// its description's embedding counted as `PRIOR_WEIGHT` examples, so one
/// noisy example does not drown the description, and many examples do;
/// zero when a label has neither.
fn prototypes(plan: &Plan<'_>, train: &Data) -> Array2<f32> {
    let found = class_sums(train.features.view(), &train.labels, plan.classes);
    let mut rows = Array2::zeros((plan.classes, plan.set.dim));
    for (c, sum) in found.into_iter().enumerate() {
        let prior = plan.set.priors.get(c).and_then(Option::as_ref).map(|p| unit(Array1::from_vec(p.clone())));
        let combined = match (sum, prior) {
            (Some(a), Some(b)) => Some(unit(a + b * PRIOR_WEIGHT)),
            (a, b) => a.map(unit).or(b),
        };
        if let Some(v) = combined {
            rows.row_mut(c).assign(&v);
        }
    }
    rows
}

/// The linear head's start: the previous head's weights for labels it knew
/// (retraining), scaled prototypes for the others: weights and bias.
fn linear_start(plan: &Plan<'_>, prototypes: Array2<f32>) -> (Array2<f32>, Array1<f32>) {
    let mut weights = prototypes * PROTOTYPE_SCALE;
    let mut bias = Array1::zeros(plan.classes);
    if let Some(Head { params: Params::Linear { weights: old_w, bias: old_b }, labels, dim, fingerprint, .. }) =
        plan.warm_start
        && *dim == plan.set.dim
        && fingerprint == plan.set.fingerprint
    {
        for (c, name) in plan.set.label_names.iter().enumerate() {
            if let Some(old) = labels.iter().position(|l| l == name) {
                weights.row_mut(c).assign(&old_w.row(old));
                bias[c] = old_b[old];
            }
        }
    }
    (weights, bias)
}

/// The MLP head's start: a hidden layer around the linear start (its skip
/// connection); when retraining an MLP of the same shape, that head's
/// weights, row by row for the labels it knew.
fn mlp_start(plan: &Plan<'_>, prototypes: Array2<f32>) -> Params {
    let (weights, bias) = linear_start(plan, prototypes);
    let mut start = mlp_around(weights, bias, plan.options.mlp_hidden, plan.options.seed);
    if let (
        Params::Mlp { w1, b1, w2, b2, skip: Some(skip) },
        Some(Head {
            params: Params::Mlp { w1: old_w1, b1: old_b1, w2: old_w2, b2: old_b2, skip: Some(old_skip) },
            labels,
            fingerprint,
            ..
        }),
    ) = (&mut start, plan.warm_start)
        && old_w1.dim() == w1.dim()
        && fingerprint == plan.set.fingerprint
    {
        w1.assign(old_w1);
        b1.assign(old_b1);
        for (c, name) in plan.set.label_names.iter().enumerate() {
            if let Some(old) = labels.iter().position(|l| l == name) {
                w2.row_mut(c).assign(&old_w2.row(old));
                skip.row_mut(c).assign(&old_skip.row(old));
                b2[c] = old_b2[old];
            }
        }
    }
    start
}

fn logits_of(params: &Params, features: ArrayView2<'_, f32>) -> Array2<f32> {
    let head = Head::new("", Vec::new(), params.clone());
    head.logits(features)
}

/// Unit class prototypes of `data` (`classes × dim`); zero rows for absent labels.
fn unit_prototypes(data: &Data, classes: usize) -> Array2<f32> {
    let mut rows = Array2::zeros((classes, data.features.ncols()));
    for (c, sum) in class_sums(data.features.view(), &data.labels, classes).into_iter().enumerate() {
        if let Some(sum) = sum {
            rows.row_mut(c).assign(&unit(sum));
        }
    }
    rows
}

/// The `q` quantile of `values` (lower interpolation).
fn quantile(mut values: Vec<f32>, q: f64) -> f32 {
    if values.is_empty() {
        return -1.0;
    }
    values.sort_by(f32::total_cmp);
    values[((values.len() - 1) as f64 * q).floor() as usize]
}

/// Accuracy and log loss after temperature scaling, as the head would be used.
fn calibrated_accuracy_and_loss(logits: &Array2<f32>, truth: &[usize], classes: usize) -> (f64, f64) {
    let raw = logits.as_slice().expect("standard layout");
    let temperature = fit_temperature(raw, truth, classes);
    let mut probabilities = raw.to_vec();
    softmax_rows(&mut probabilities, classes, temperature);
    let names: Vec<String> = (0..classes).map(|c| c.to_string()).collect();
    let metrics = evaluate(&probabilities, truth, &names);
    (metrics.accuracy, metrics.log_loss)
}

/// Labels with at least one example, with their counts, for the report.
fn examples_per_class(names: &[String], counts: &[usize]) -> BTreeMap<String, u64> {
    names.iter().cloned().zip(counts.iter().map(|&c| c as u64)).filter(|(_, c)| *c > 0).collect()
}

fn count_labels(labels: &[usize], classes: usize) -> Vec<usize> {
    let mut counts = vec![0; classes];
    labels.iter().for_each(|&l| counts[l] += 1);
    counts
}

fn normalise_rows(mut rows: Array2<f32>) -> Array2<f32> {
    for mut row in rows.axis_iter_mut(Axis(0)) {
        let norm = row.dot(&row).sqrt();
        if norm > 1e-12 {
            row /= norm;
        }
    }
    rows
}

/// Checks the set and builds the weighted training data.
fn validate(set: &TrainingSet<'_>, options: &TrainOptions) -> Result<Data> {
    let n = set.labels.len();
    let classes = set.label_names.len();
    if n == 0 || classes == 0 || set.dim == 0 {
        return Err(Error::InvalidInput("training needs examples, labels and a feature width".into()));
    }
    if set.features.len() != n * set.dim {
        return Err(Error::InvalidInput(format!(
            "{} feature values for {n} examples of width {}",
            set.features.len(),
            set.dim
        )));
    }
    if set.labels.iter().any(|&l| l >= classes) {
        return Err(Error::InvalidInput("an example's label is not in the label list".into()));
    }
    if set.features.iter().any(|x| !x.is_finite()) {
        return Err(Error::InvalidInput("features hold NaN or infinity".into()));
    }
    if set.priors.iter().flatten().any(|p| p.len() != set.dim || p.iter().any(|x| !x.is_finite())) {
        return Err(Error::InvalidInput("a label description embedding has the wrong width or NaN".into()));
    }
    let example_weights: Vec<f32> = match set.weights {
        Some(w) if w.len() != n => return Err(Error::InvalidInput("one weight per example is needed".into())),
        Some(w) if w.iter().any(|x| !x.is_finite() || *x <= 0.0) => {
            return Err(Error::InvalidInput("weights must be positive numbers".into()));
        }
        Some(w) => w.to_vec(),
        None => vec![1.0; n],
    };
    if !(0.0..1.0).contains(&options.label_smoothing) || !(0.01..0.5).contains(&options.validation_fraction) {
        return Err(Error::InvalidInput(
            "label smoothing must be in [0, 1), the validation share in [0.01, 0.5)".into(),
        ));
    }
    let positive = |value: Option<f32>| value.is_none_or(|v| v.is_finite() && v > 0.0);
    if !positive(options.learning_rate) || !options.weight_decay.is_none_or(|d| d.is_finite() && d >= 0.0) {
        return Err(Error::InvalidInput("the learning rate must be positive, the weight decay not negative".into()));
    }
    let counts = count_labels(set.labels, classes);
    let present = counts.iter().filter(|&&c| c > 0).count() as f32;
    let weights = set
        .labels
        .iter()
        .zip(example_weights)
        .map(|(&l, w)| if options.class_balanced { w * n as f32 / (present * counts[l] as f32) } else { w })
        .collect();
    let features =
        Array2::from_shape_vec((n, set.dim), set.features.to_vec()).map_err(|e| Error::InvalidInput(e.to_string()))?;
    Ok(Data { features, labels: set.labels.to_vec(), weights })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_mlp_retrains_from_the_previous_mlp_label_by_label() {
        let (dim, hidden) = (4, 3);
        let ramp = |rows: usize, cols: usize, base: f32| {
            Array2::from_shape_fn((rows, cols), |(i, j)| base + (i * cols + j) as f32)
        };
        let previous = Head::new(
            "fp",
            vec!["a".into(), "b".into()],
            Params::Mlp {
                w1: ramp(hidden, dim, 100.0),
                b1: Array1::from_vec(vec![1.0, 2.0, 3.0]),
                w2: ramp(2, hidden, 200.0),
                b2: Array1::from_vec(vec![-1.0, -2.0]),
                skip: Some(ramp(2, dim, 300.0)),
            },
        );
        // Labels reordered, and one the previous head never knew.
        let names: Vec<String> = ["b", "new", "a"].map(String::from).to_vec();
        let features = vec![0.0; 3 * dim];
        let set = TrainingSet {
            features: &features,
            dim,
            labels: &[0, 1, 2],
            weights: None,
            label_names: &names,
            priors: &[],
            fingerprint: "fp",
        };
        let options = TrainOptions { mlp_hidden: hidden, ..TrainOptions::default() };
        let plan = Plan {
            set: &set,
            warm_start: Some(&previous),
            options: &options,
            classes: 3,
            batch_size: 8,
            epochs: 1,
            learning_rate: 0.01,
        };
        let prototypes = Array2::from_elem((3, dim), 0.5);
        let Params::Mlp { w1, b1, w2, b2, skip: Some(skip) } = mlp_start(&plan, prototypes) else { panic!("an MLP") };
        let Params::Mlp { w1: old_w1, b1: old_b1, w2: old_w2, b2: old_b2, skip: Some(old_skip) } = &previous.params
        else {
            unreachable!()
        };
        assert_eq!((&w1, &b1), (old_w1, old_b1));
        for (row, old) in [(0, 1), (2, 0)] {
            assert_eq!(w2.row(row), old_w2.row(old));
            assert_eq!(skip.row(row), old_skip.row(old));
            assert_eq!(b2[row], old_b2[old]);
        }
        // The new label starts from its prototype, like a linear head.
        assert!(skip.row(1).iter().all(|&v| v == 0.5 * PROTOTYPE_SCALE));
        assert_eq!(b2[1], 0.0);

        // Another hidden size: a fresh start around the linear start.
        let other = TrainOptions { mlp_hidden: hidden + 1, ..TrainOptions::default() };
        let Params::Mlp { w1, .. } = mlp_start(&Plan { options: &other, ..plan }, Array2::from_elem((3, dim), 0.5))
        else {
            panic!("an MLP")
        };
        assert_eq!(w1.nrows(), hidden + 1);
    }
}

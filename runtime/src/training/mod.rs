//! On-device head training on cached features.
//!
//! `train` needs no knobs: it picks the validation plan from the data (a
//! stratified holdout, or k folds when labels have few examples), scores a
//! small grid of candidates — the prototype head, linear heads with
//! different pulls towards their warm start, and an MLP (the linear start
//! plus a hidden-layer correction) when data allows — keeps the best,
//! refits it on all examples and calibrates it. Linear heads start from
//! class prototypes (label descriptions and class centroids), so few-shot
//! training begins at zero-shot accuracy rather than at chance.
//!
//! Where each step lives: `plan` (validation plan, defaults), `candidates`
//! (the grid, starts, one fit), `validation` (scoring), `fit` (gradient
//! descent), `calibration`, `promotion` (whether a new head replaces the
//! active one), `dp` (differentially private training and its accountant),
//! `adapt` (contrastive adaptation of the backbone's top layers).

mod adapt;
mod calibration;
mod candidates;
mod data;
mod dp;
mod federated;
mod fit;
mod low_rank;
mod optimizer;
mod parallel;
mod plan;
mod promotion;
mod report;
mod rng;
mod split;
mod top_layers;
mod validation;

use std::time::{Duration, Instant};

use ndarray::ArrayView2;

pub use dp::{PrivacyOptions, PrivacySpent, PrivateRun, privacy_spent};
pub use federated::{FederatedOptions, UpdatePrivacy};
pub(crate) use federated::{clip_update, fit_from_shared, privatize};
pub use optimizer::OptimizerKind;
pub use promotion::{ActiveHeadEvidence, PromotionBasis, PromotionDecision, decide_promotion};
pub use report::{AdaptationReport, CandidateHead, CandidateReport, EpochProgress, TrainReport, ValidationMethod};
pub(crate) use split::holdout;
pub use top_layers::{AdaptOptions, AdaptedTop, TrunkStates};

use crate::error::{Error, Result};
use crate::heads::{Head, HeadKind, Params};
use crate::numeric::unit_rows;
use candidates::{fit_candidate, unvalidated_choice};
use data::{Data, count_labels, examples_per_class};
use plan::{Budget, Plan};
use validation::score_candidates;

/// Logit scale of prototype-initialised heads: cosine 0.1 apart becomes a
/// logit gap of 2.
const PROTOTYPE_SCALE: f32 = 20.0;

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

/// Whether training adapts the backbone's top layers before the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AdaptChoice {
    /// When every label has enough examples (and not so many that a
    /// frozen head does as well) and a head on the adapted features has a
    /// lower log loss on held-out examples than one on the frozen features.
    #[default]
    Auto,
    /// Whenever labels have pairs of examples to contrast (refused for a
    /// task trained with differential privacy).
    Always,
    Never,
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
    /// The warm start was not trained on these examples (a shared model
    /// from federated rounds) and knows every label: candidates started from
    /// it can be validated out of fold even when labels have one example.
    pub independent_warm_start: bool,
    /// Trains a differentially private linear head instead (opt-in).
    pub privacy: Option<PrivacyOptions>,
    /// Whether to adapt the backbone's top `adapt_layers` layers first, and how.
    pub adapt: AdaptChoice,
    pub adapt_layers: usize,
    pub adaptation: AdaptOptions,
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
            independent_warm_start: false,
            privacy: None,
            adapt: AdaptChoice::Auto,
            adapt_layers: 2,
            adaptation: AdaptOptions::default(),
        }
    }
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

/// A head that names only the labels of `names` with no examples, built from
/// their descriptions' embeddings (`descriptions` is `labels × dim`).
pub fn zero_shot_head(fingerprint: &str, names: Vec<String>, descriptions: &[f32], dim: usize) -> Result<Head> {
    if names.is_empty() || descriptions.len() != names.len() * dim || dim == 0 {
        return Err(Error::InvalidInput("one description embedding per label is needed".into()));
    }
    let rows =
        ArrayView2::from_shape((names.len(), dim), descriptions).map_err(|e| Error::InvalidInput(e.to_string()))?;
    let centroids = unit_rows(rows.to_owned());
    Ok(Head::new(fingerprint, names, Params::Prototype { centroids, scale: PROTOTYPE_SCALE }))
}

/// Trains a head on `set`, warm-started from `warm_start` where its labels
/// match; see the module documentation.
pub fn train(
    set: &TrainingSet<'_>,
    warm_start: Option<&Head>,
    options: &TrainOptions,
    listener: &dyn TrainListener,
) -> Result<(Head, TrainReport)> {
    let started = Instant::now();
    let data = Data::checked(set, options)?;
    if let Some(privacy) = &options.privacy {
        return dp::train_private(set, &data, options, privacy, listener, started);
    }
    let plan = Plan::new(set, warm_start, options, &data);
    let budget = Budget::new(started, options.time_budget);
    let validation = score_candidates(&plan, &data, &budget, listener)?;
    let best = validation.best();
    let chosen = best.map_or_else(|| unvalidated_choice(&plan), |b| b.candidate);
    let epochs = options.epochs.unwrap_or(best.map_or(plan.epochs, |b| b.epochs.max(1)));
    let refit = Plan { epochs, ..plan };
    let params = fit_candidate(&refit, chosen, &data, None, &Budget::unlimited(), listener)?.params;
    let mut head = Head::new(set.fingerprint, set.label_names.to_vec(), params);
    let calibrated = best.map(|b| calibration::calibrate(&mut head, b, &validation, &data, options.abstain_rate));
    let report = TrainReport {
        head: chosen.kind(),
        examples: data.len() as u64,
        classes: plan.present as u64,
        examples_per_class: examples_per_class(set.label_names, &count_labels(&data.labels, plan.classes)),
        validation_method: validation.method,
        candidates: validation.scored.iter().map(|s| s.report()).collect(),
        chosen,
        epochs,
        learning_rate: plan.learning_rate,
        weight_decay: chosen.decay(),
        batch_size: plan.batch_size,
        temperature: head.temperature,
        abstain_threshold: head.abstain_below,
        validation_rows: if calibrated.is_some() { validation.rows.clone() } else { Vec::new() },
        validation_predictions: calibrated.as_ref().map(|c| c.predictions.clone()).unwrap_or_default(),
        validation: calibrated.map(|c| c.metrics),
        train_ms: started.elapsed().as_millis() as u64,
        budget_exhausted: budget.exhausted(),
        private_run: None,
        privacy: None,
        adaptation: None,
    };
    Ok((head, report))
}

//! What a training run tells the app: the chosen head, how candidates were
//! validated and how they did, calibration and privacy.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Serialize, Serializer};

use super::dp::{PrivacySpent, PrivateRun};
use crate::evaluation::Metrics;
use crate::heads::HeadKind;

/// How the candidates of a run were validated.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ValidationMethod {
    /// Labels had too few examples to hold any out.
    None,
    /// A stratified holdout of this share of each label's examples.
    Holdout { fraction: f32 },
    /// Out-of-fold predictions of `k` stratified folds.
    KFold { k: usize },
    /// A private run: nothing is validated on the private examples.
    DifferentialPrivacy,
}

impl fmt::Display for ValidationMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ValidationMethod::None => write!(f, "none (too few examples per label)"),
            ValidationMethod::Holdout { fraction } => write!(f, "holdout {:.0}%", fraction * 100.0),
            ValidationMethod::KFold { k } => write!(f, "k-fold (k={k})"),
            ValidationMethod::DifferentialPrivacy => write!(f, "none (differential privacy)"),
        }
    }
}

/// One head a run tried, with the setting that distinguishes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CandidateHead {
    Prototype,
    /// A linear head pulled towards its warm start by `pull` per step.
    Linear {
        pull: f32,
    },
    /// The MLP head, its hidden layer decayed by `decay` per step.
    Mlp {
        decay: f32,
    },
    /// The linear head trained with DP-SGD.
    PrivateLinear {
        noise_multiplier: f64,
        clip_norm: f32,
    },
}

impl CandidateHead {
    pub fn kind(self) -> HeadKind {
        match self {
            CandidateHead::Prototype => HeadKind::Prototype,
            CandidateHead::Linear { .. } | CandidateHead::PrivateLinear { .. } => HeadKind::Linear,
            CandidateHead::Mlp { .. } => HeadKind::Mlp,
        }
    }

    /// The weight decay (or pull) the candidate trains with.
    pub fn decay(self) -> f32 {
        match self {
            CandidateHead::Linear { pull } => pull,
            CandidateHead::Mlp { decay } => decay,
            CandidateHead::Prototype | CandidateHead::PrivateLinear { .. } => 0.0,
        }
    }
}

impl fmt::Display for CandidateHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CandidateHead::Prototype => write!(f, "prototype"),
            CandidateHead::Linear { pull } => write!(f, "linear (pull {pull})"),
            CandidateHead::Mlp { decay } => write!(f, "mlp (decay {decay})"),
            CandidateHead::PrivateLinear { noise_multiplier, clip_norm } => {
                write!(f, "linear (DP-SGD, noise {noise_multiplier:.3}, clip {clip_norm})")
            }
        }
    }
}

/// Reports and stored JSON carry these as their readable names.
fn as_text<T: fmt::Display, S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(value)
}

fn kind_name<S: Serializer>(kind: &HeadKind, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(kind.name())
}

/// How one candidate did on validation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CandidateReport {
    #[serde(rename = "name", serialize_with = "as_text")]
    pub candidate: CandidateHead,
    /// Accuracy and log loss after temperature scaling, as the head would be used.
    pub validation_accuracy: f64,
    pub validation_log_loss: f64,
    pub epochs: usize,
}

/// What training did and how good the result is.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainReport {
    #[serde(serialize_with = "kind_name")]
    pub head: HeadKind,
    pub examples: u64,
    pub classes: u64,
    pub examples_per_class: BTreeMap<String, u64>,
    #[serde(serialize_with = "as_text")]
    pub validation_method: ValidationMethod,
    pub candidates: Vec<CandidateReport>,
    #[serde(serialize_with = "as_text")]
    pub chosen: CandidateHead,
    pub epochs: usize,
    pub learning_rate: f32,
    pub weight_decay: f32,
    pub batch_size: usize,
    pub temperature: f32,
    pub abstain_threshold: f32,
    /// Calibrated metrics on the validation examples (held out, or out of fold).
    pub validation: Option<Metrics>,
    /// Rows of the training set those metrics were measured on, and the
    /// label the chosen candidate predicted for each without having trained
    /// on it: promotion compares heads on them.
    #[serde(skip)]
    pub validation_rows: Vec<usize>,
    #[serde(skip)]
    pub validation_predictions: Vec<usize>,
    pub train_ms: u64,
    pub budget_exhausted: bool,
    /// For a private run: what it cost, and the (ε, δ) of the task's ledger
    /// with it included. Store `private_run` in the ledger with the head.
    pub private_run: Option<PrivateRun>,
    pub privacy: Option<PrivacySpent>,
    /// Whether the head's features come from adapted top layers of the
    /// backbone, and how they were adapted or why not (`None`: not asked).
    pub adaptation: Option<AdaptationReport>,
}

/// What adapting the backbone's top layers did in a training run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AdaptationReport {
    /// The head is trained on the adapted layers' features and carries them.
    pub adapted: bool,
    /// Why it was not, when it was not.
    pub skipped: Option<String>,
    pub layers: usize,
    pub steps: usize,
    /// Values the head stores for the adapted layers.
    pub trained_values: u64,
    /// Contrastive loss of the first and the last batch.
    pub first_loss: Option<f32>,
    pub last_loss: Option<f32>,
    /// Accuracy and log loss on held-out examples (which adaptation did not
    /// see) of a linear head on the frozen and on the adapted features; the
    /// automatic choice keeps the adapted layers for a lower log loss.
    pub holdout_rows: u64,
    pub frozen_accuracy: Option<f64>,
    pub adapted_accuracy: Option<f64>,
    pub frozen_log_loss: Option<f64>,
    pub adapted_log_loss: Option<f64>,
    pub adapt_ms: u64,
}

impl AdaptationReport {
    /// Adaptation was asked for (or allowed) and did not happen, for `reason`.
    pub fn skipped(layers: usize, reason: impl Into<String>) -> Self {
        Self {
            adapted: false,
            skipped: Some(reason.into()),
            layers,
            steps: 0,
            trained_values: 0,
            first_loss: None,
            last_loss: None,
            holdout_rows: 0,
            frozen_accuracy: None,
            adapted_accuracy: None,
            frozen_log_loss: None,
            adapted_log_loss: None,
            adapt_ms: 0,
        }
    }
}

/// Progress of one epoch of one candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EpochProgress {
    #[serde(serialize_with = "as_text")]
    pub candidate: CandidateHead,
    pub epoch: usize,
    pub loss: f64,
    pub validation_loss: Option<f64>,
    pub validation_accuracy: Option<f64>,
}

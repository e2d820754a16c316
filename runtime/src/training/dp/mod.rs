//! Differential privacy in one place: the private training path (opt-in;
//! DP-SGD on the linear head within the task's privacy budget, `sgd`) and
//! the accountant that says what a task's runs have spent (`accountant`).

mod accountant;
mod sgd;

use std::time::Instant;

use ndarray::{Array1, Array2};

pub use accountant::{PrivacySpent, PrivateRun, noise_for_budget, privacy_spent};

use super::data::{Data, count_labels, examples_per_class};
use super::{
    CandidateHead, HeadChoice, PROTOTYPE_SCALE, TrainListener, TrainOptions, TrainReport, TrainingSet, ValidationMethod,
};
use crate::error::{Error, Result};
use crate::heads::{Head, HeadKind, Params};
use crate::numeric::unit;

/// Noise multipliers above this leave nothing to learn: a private run that
/// would need more is refused as over budget.
const MAX_USEFUL_NOISE: f64 = 10.0;

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
    /// The share of what is left of the budget one run may spend (default
    /// ½: the first run spends half of ε, and retrains stay affordable).
    pub run_share: f64,
    /// The task's earlier private runs (its ledger).
    pub previous: Vec<PrivateRun>,
}

impl PrivacyOptions {
    pub fn with_budget(epsilon: f64) -> Self {
        Self {
            epsilon,
            delta: None,
            clip_norm: 1.0,
            sampling_rate: None,
            epochs: 15,
            run_share: 0.5,
            previous: Vec::new(),
        }
    }
}

/// A seed nobody can predict, from the operating system's random source.
pub(crate) fn secret_seed() -> Result<u64> {
    getrandom::u64().map_err(|e| Error::Storage(format!("the operating system gave no randomness: {e}")))
}

/// DP-SGD on the linear head. Only public information shapes the run: the
/// start is the label descriptions (never class centroids), hyper-parameters
/// are fixed, and nothing is validated or calibrated on the private examples.
pub(super) fn train_private(
    set: &TrainingSet<'_>,
    data: &Data,
    options: &TrainOptions,
    privacy: &PrivacyOptions,
    listener: &dyn TrainListener,
    started: Instant,
) -> Result<(Head, TrainReport)> {
    if matches!(options.head, HeadChoice::Only(kind) if kind != HeadKind::Linear) {
        return Err(Error::InvalidInput("differential privacy is available for the linear head".into()));
    }
    let n = data.len();
    let delta = privacy.delta.unwrap_or((0.1 / n as f64).min(1e-5));
    let sampling_rate = privacy.sampling_rate.unwrap_or((64.0 / n as f64).min(1.0));
    if !(privacy.epsilon > 0.0 && delta > 0.0 && delta < 1.0 && sampling_rate > 0.0 && sampling_rate <= 1.0)
        || privacy.clip_norm <= 0.0
        || privacy.epochs == 0
    {
        return Err(Error::InvalidInput("privacy needs ε > 0, 0 < δ < 1, a sampling rate in (0, 1], clip > 0".into()));
    }
    if !(privacy.run_share > 0.0 && privacy.run_share <= 1.0) {
        return Err(Error::InvalidInput("a run's share of the privacy budget must be in (0, 1]".into()));
    }
    let steps = (privacy.epochs as f64 / sampling_rate).ceil() as u64;
    // This run may take `run_share` of what is left, so later retrains
    // (after a forget, after a model upgrade) can still be afforded.
    let spent = if privacy.previous.is_empty() { 0.0 } else { privacy_spent(&privacy.previous, delta).epsilon };
    let target = spent + privacy.run_share * (privacy.epsilon - spent);
    let noise_multiplier = (target > spent)
        .then(|| noise_for_budget(&privacy.previous, sampling_rate, steps, target, delta))
        .flatten()
        .filter(|&sigma| sigma <= MAX_USEFUL_NOISE)
        .ok_or_else(|| {
            Error::PrivacyBudgetExceeded(format!(
                "the task's privacy budget ε = {} cannot afford another run (ε = {spent:.2} used; \
                 this run would need noise over {MAX_USEFUL_NOISE})",
                privacy.epsilon
            ))
        })?;
    let classes = set.label_names.len();
    let mut weights = Array2::zeros((classes, set.dim));
    for (c, prior) in set.priors.iter().enumerate() {
        if let Some(p) = prior {
            weights.row_mut(c).assign(&(unit(Array1::from_vec(p.clone())) * PROTOTYPE_SCALE));
        }
    }
    let initial = Params::Linear { weights, bias: Array1::zeros(classes) };
    let private_data = Data { weights: vec![1.0; n], ..data.clone() };
    let learning_rate = options.learning_rate.unwrap_or(0.05);
    let settings = sgd::PrivateSettings {
        steps: steps as usize,
        sampling_rate,
        noise_multiplier,
        clip_norm: privacy.clip_norm,
        learning_rate,
        weight_decay: options.weight_decay.unwrap_or(0.0),
        // Not `options.seed`: the guarantee assumes nobody can predict the
        // sampling and the noise, and a seed the app chose (0 by default)
        // would let anyone replay them. A private run is not reproducible.
        seed: secret_seed()?,
    };
    let params = sgd::fit_private(&initial, &private_data, &settings, listener)?;
    let run = PrivateRun { sampling_rate, noise_multiplier, steps };
    let mut ledger = privacy.previous.clone();
    ledger.push(run);
    let counts = count_labels(&data.labels, classes);
    let report = TrainReport {
        head: HeadKind::Linear,
        examples: n as u64,
        classes: counts.iter().filter(|&&c| c > 0).count() as u64,
        examples_per_class: examples_per_class(set.label_names, &counts),
        validation_method: ValidationMethod::DifferentialPrivacy,
        candidates: Vec::new(),
        chosen: CandidateHead::PrivateLinear { noise_multiplier, clip_norm: privacy.clip_norm },
        epochs: privacy.epochs,
        learning_rate,
        weight_decay: settings.weight_decay,
        batch_size: (sampling_rate * n as f64).round() as usize,
        temperature: 1.0,
        abstain_threshold: 0.0,
        validation: None,
        validation_rows: Vec::new(),
        validation_predictions: Vec::new(),
        train_ms: started.elapsed().as_millis() as u64,
        budget_exhausted: false,
        private_run: Some(run),
        privacy: Some(privacy_spent(&ledger, delta)),
        adaptation: None,
    };
    Ok((Head::new(set.fingerprint, set.label_names.to_vec(), params), report))
}

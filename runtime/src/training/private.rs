//! The differentially private training path (opt-in): DP-SGD on the
//! linear head within the task's privacy budget.

use std::time::Instant;

use ndarray::{Array1, Array2};

use super::fit;
use super::privacy::{PrivateRun, noise_for_budget, privacy_spent};
use super::{
    Data, HeadChoice, MAX_USEFUL_NOISE, PROTOTYPE_SCALE, PrivacyOptions, TrainListener, TrainOptions, TrainReport,
    TrainingSet, count_labels, examples_per_class,
};
use crate::error::{Error, Result};
use crate::heads::{Head, HeadKind, Params, unit};

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
    let steps = (privacy.epochs as f64 / sampling_rate).ceil() as u64;
    let noise_multiplier = noise_for_budget(&privacy.previous, sampling_rate, steps, privacy.epsilon, delta)
        .filter(|&sigma| sigma <= MAX_USEFUL_NOISE)
        .ok_or_else(|| {
            let spent = privacy_spent(&privacy.previous, delta).epsilon;
            Error::BudgetExceeded(format!(
                "the task's privacy budget ε = {} is spent (ε = {spent:.2} used; what is left would need noise over {MAX_USEFUL_NOISE})",
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
    let settings = fit::PrivateSettings {
        steps: steps as usize,
        sampling_rate,
        noise_multiplier,
        clip_norm: privacy.clip_norm,
        learning_rate,
        weight_decay: options.weight_decay.unwrap_or(0.0),
        seed: options.seed,
    };
    let params = fit::fit_private(&initial, &private_data, &settings, listener)?;
    let run = PrivateRun { sampling_rate, noise_multiplier, steps };
    let mut ledger = privacy.previous.clone();
    ledger.push(run);
    let counts = count_labels(&data.labels, classes);
    let report = TrainReport {
        head: HeadKind::Linear.name().to_string(),
        examples: n as u64,
        classes: counts.iter().filter(|&&c| c > 0).count() as u64,
        examples_per_class: examples_per_class(set.label_names, &counts),
        validation_method: "none (differential privacy)".into(),
        candidates: Vec::new(),
        chosen: format!("linear (DP-SGD, noise {noise_multiplier:.3}, clip {})", privacy.clip_norm),
        epochs: privacy.epochs,
        learning_rate,
        weight_decay: settings.weight_decay,
        batch_size: (sampling_rate * n as f64).round() as usize,
        temperature: 1.0,
        abstain_threshold: 0.0,
        validation: None,
        validation_rows: Vec::new(),
        train_ms: started.elapsed().as_millis() as u64,
        budget_exhausted: false,
        private_run: Some(run),
        privacy: Some(privacy_spent(&ledger, delta)),
    };
    Ok((Head::new(set.fingerprint, set.label_names.to_vec(), params), report))
}

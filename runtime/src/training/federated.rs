//! Local training from a shared model, as a federated round asks of a
//! device: the linear head starts from the shared weights and is pulled
//! back towards them every step (a proximal term, as in FedProx), so a
//! device with three examples cannot drag the shared model far.

use super::data::Data;
use super::fit::{FitSettings, fit};
use super::optimizer::OptimizerKind;
use super::plan::Budget;
use super::{CandidateHead, TrainListener, TrainOptions, TrainingSet};
use crate::error::{Error, Result};
use crate::heads::{Head, Params};

/// How a device trains in one federated round.
#[derive(Debug, Clone, PartialEq)]
pub struct FederatedOptions {
    /// Passes over the device's examples.
    pub epochs: usize,
    pub learning_rate: f32,
    /// Pull towards the shared weights, per step and learning rate.
    pub proximal: f32,
    pub batch_size: usize,
    pub seed: u64,
}

impl Default for FederatedOptions {
    fn default() -> Self {
        Self { epochs: 10, learning_rate: 0.05, proximal: 0.1, batch_size: 8, seed: 0 }
    }
}

/// Trains `shared` (a linear head) on `set`, whose labels are the shared
/// model's own, and returns the device's new head.
pub(crate) fn fit_from_shared(
    shared: &Head,
    set: &TrainingSet<'_>,
    options: &FederatedOptions,
    listener: &dyn TrainListener,
) -> Result<Head> {
    if set.label_names != shared.labels() {
        return Err(Error::InvalidInput("local training must use the shared model's labels".into()));
    }
    let rates_valid = options.learning_rate.is_finite()
        && options.learning_rate > 0.0
        && options.proximal.is_finite()
        && options.proximal >= 0.0;
    if options.epochs == 0 || options.batch_size == 0 || !rates_valid {
        return Err(Error::InvalidInput("federated training needs epochs, a batch size and a learning rate".into()));
    }
    // Every example weighs the same: the server weighs devices by their example counts.
    let data = Data::checked(set, &TrainOptions { class_balanced: false, ..TrainOptions::default() })?;
    let settings = FitSettings {
        epochs: options.epochs,
        batch_size: options.batch_size,
        learning_rate: options.learning_rate,
        weight_decay: options.proximal,
        label_smoothing: 0.0,
        optimizer: OptimizerKind::AdamW,
        seed: options.seed,
        early_stopping: false,
        anchored: true,
    };
    let candidate = CandidateHead::Linear { pull: options.proximal };
    let fitted = fit(&shared.params, &data, None, &settings, &Budget::unlimited(), listener, candidate)?;
    debug_assert!(matches!(fitted.params, Params::Linear { .. }));
    Ok(Head::new(shared.fingerprint(), shared.labels().to_vec(), fitted.params))
}

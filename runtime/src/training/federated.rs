//! Local training from a shared model, as a federated round asks of a
//! device: the linear head starts from the shared weights and is pulled
//! back towards them every step (a proximal term, as in FedProx), so a
//! device with three examples cannot drag the shared model far.

use super::data::Data;
use super::dp::secret_seed;
use super::fit::{FitSettings, fit};
use super::optimizer::OptimizerKind;
use super::plan::Budget;
use super::rng::SplitMix;
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
    /// Differential privacy on the update, at the level of the device.
    pub privacy: Option<UpdatePrivacy>,
    /// A bound on the update's change from the shared weights (L2), with
    /// no noise: for central differential privacy, where the server adds
    /// the noise to the average and needs each device's influence on it
    /// bounded. A private update clips to its own `privacy.clip_norm`.
    pub clip_norm: Option<f32>,
}

impl Default for FederatedOptions {
    fn default() -> Self {
        Self { epochs: 10, learning_rate: 0.05, proximal: 0.1, batch_size: 8, seed: 0, privacy: None, clip_norm: None }
    }
}

/// User-level differential privacy on an update (local noise): the change
/// from the shared weights is clipped to `clip_norm` in L2 and Gaussian
/// noise of standard deviation `noise_multiplier · clip_norm` is added to
/// every value, so one device's whole data set is what is protected. Each
/// update is one release of the Gaussian mechanism, charged to the task's
/// privacy ledger; the task's total ε (at `delta`) may not exceed `epsilon`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UpdatePrivacy {
    pub clip_norm: f32,
    pub noise_multiplier: f64,
    /// The task's budget (a private task keeps the one it has).
    pub epsilon: f64,
    /// Default 1e-5.
    pub delta: Option<f64>,
}

impl UpdatePrivacy {
    pub(crate) fn checked(&self) -> Result<Self> {
        let delta = self.delta.unwrap_or(1e-5);
        let valid = self.clip_norm.is_finite()
            && self.clip_norm > 0.0
            && self.noise_multiplier.is_finite()
            && self.noise_multiplier > 0.0
            && self.epsilon.is_finite()
            && self.epsilon > 0.0
            && delta > 0.0
            && delta < 1.0;
        match valid {
            true => Ok(Self { delta: Some(delta), ..*self }),
            false => Err(Error::InvalidInput(
                "update privacy needs a positive clip norm, noise multiplier and budget, and 0 < δ < 1".into(),
            )),
        }
    }
}

/// `trained` with its change from `shared` scaled down to at most
/// `clip_norm` in L2 (unchanged when already within it).
pub(crate) fn clip_update(trained: &Head, shared: &Head, clip_norm: f32) -> Result<Head> {
    if !(clip_norm.is_finite() && clip_norm > 0.0) {
        return Err(Error::InvalidInput("an update's clip norm must be positive and finite".into()));
    }
    perturb_change(trained, shared, clip_norm, || 0.0)
}

/// Clips `trained`'s change from `shared` to `privacy.clip_norm` and adds
/// Gaussian noise seeded from the operating system.
pub(crate) fn privatize(trained: &Head, shared: &Head, privacy: &UpdatePrivacy) -> Result<Head> {
    let noise = &mut SplitMix::new(secret_seed()?);
    let sigma = (privacy.noise_multiplier * f64::from(privacy.clip_norm)) as f32;
    perturb_change(trained, shared, privacy.clip_norm, || sigma * noise.normal())
}

/// `shared` plus `trained`'s change from it clipped to `clip_norm`, each
/// value then moved by `noise()`.
fn perturb_change(trained: &Head, shared: &Head, clip_norm: f32, mut noise: impl FnMut() -> f32) -> Result<Head> {
    let (Params::Linear { weights: w, bias: b }, Params::Linear { weights: w0, bias: b0 }) =
        (&trained.params, &shared.params)
    else {
        return Err(Error::InvalidInput("only linear updates are clipped or privatized".into()));
    };
    let (dw, db) = (w - w0, b - b0);
    let norm = (dw.iter().chain(db.iter()).map(|v| f64::from(*v).powi(2)).sum::<f64>()).sqrt();
    let scale = if norm > f64::from(clip_norm) { (f64::from(clip_norm) / norm) as f32 } else { 1.0 };
    let weights = w0 + &dw.mapv(|v| v * scale + noise());
    let bias = b0 + &db.mapv(|v| v * scale + noise());
    Ok(Head::new(trained.fingerprint(), trained.labels().to_vec(), Params::Linear { weights, bias }))
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

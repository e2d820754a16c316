//! Federated rounds at the boundary: the shared model as plain numbers (what
//! Flower's `ArrayRecord` and other transports carry) or as bytes, and the
//! settings and results of a device's round.

use crate::error::AttuneError;

/// The model federated rounds share: a linear head for the app's fixed label
/// list over the backbone's sentence vectors. `weights` holds `labels ×
/// dimension` values row by row, `bias` one per label.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct SharedModel {
    /// The backbone it belongs to (`Personalizer.model_fingerprint()`).
    pub fingerprint: String,
    pub labels: Vec<String>,
    pub weights: Vec<f32>,
    pub bias: Vec<f32>,
}

impl TryFrom<SharedModel> for attune::SharedModel {
    type Error = AttuneError;
    fn try_from(m: SharedModel) -> Result<Self, AttuneError> {
        Ok(attune::SharedModel::from_parts(&m.fingerprint, m.labels, m.weights, m.bias)?)
    }
}

impl From<&attune::SharedModel> for SharedModel {
    fn from(m: &attune::SharedModel) -> Self {
        Self {
            fingerprint: m.fingerprint().to_string(),
            labels: m.labels().to_vec(),
            weights: m.weights().to_vec(),
            bias: m.bias().to_vec(),
        }
    }
}

/// The zero model (every label equally likely) a server starts from.
#[uniffi::export]
pub fn shared_model_zeros(
    fingerprint: String,
    labels: Vec<String>,
    dimension: u32,
) -> Result<SharedModel, AttuneError> {
    Ok((&attune::SharedModel::zeros(&fingerprint, labels, dimension as usize)?).into())
}

/// The byte form of a shared model (Attune's head format), for apps that
/// carry updates over their own channel.
#[uniffi::export]
pub fn shared_model_to_bytes(model: SharedModel) -> Result<Vec<u8>, AttuneError> {
    Ok(attune::SharedModel::try_from(model)?.to_bytes())
}

/// Reads a shared model's bytes, refusing damaged bytes and a model for
/// another backbone than `fingerprint`.
#[uniffi::export]
pub fn shared_model_from_bytes(bytes: Vec<u8>, fingerprint: String) -> Result<SharedModel, AttuneError> {
    match attune::SharedModel::from_bytes(&bytes, &fingerprint) {
        Ok(model) => Ok((&model).into()),
        // Damaged bytes from the network are bad input here, not a damaged database.
        Err(attune::Error::InvalidHead(reason)) => Err(AttuneError::InvalidInput { reason }),
        Err(error) => Err(error.into()),
    }
}

/// How a device trains in one round; the defaults need no tuning.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct FederatedSettings {
    /// Passes over the device's examples (default 10).
    #[uniffi(default = None)]
    pub epochs: Option<u32>,
    #[uniffi(default = None)]
    pub learning_rate: Option<f32>,
    /// Pull towards the shared weights, so few examples move them little.
    #[uniffi(default = None)]
    pub proximal: Option<f32>,
    #[uniffi(default = 0)]
    pub seed: u64,
    /// Differential privacy on the update, for the device's whole data:
    /// its change is clipped to `dp_clip` (L2) and Gaussian noise of
    /// `dp_noise × dp_clip` added; each update is charged to the task's
    /// ledger, whose total ε may not exceed `dp_epsilon` (a private task
    /// keeps its own budget) at `dp_delta` (default 1e-5). Set the first
    /// three together; a private task's updates must set them.
    #[uniffi(default = None)]
    pub dp_clip: Option<f32>,
    #[uniffi(default = None)]
    pub dp_noise: Option<f64>,
    #[uniffi(default = None)]
    pub dp_epsilon: Option<f64>,
    #[uniffi(default = None)]
    pub dp_delta: Option<f64>,
    /// Central differential privacy, where the server adds the noise: the
    /// update's change is clipped to this L2 norm and nothing else is done
    /// on the device (no noise, no ledger entry). Not with `dp_clip`.
    #[uniffi(default = None)]
    pub clip_norm: Option<f32>,
}

impl TryFrom<FederatedSettings> for attune::FederatedOptions {
    type Error = AttuneError;
    fn try_from(s: FederatedSettings) -> Result<Self, AttuneError> {
        let default = attune::FederatedOptions::default();
        let privacy = match (s.dp_clip, s.dp_noise, s.dp_epsilon) {
            (None, None, None) => None,
            (Some(clip_norm), Some(noise_multiplier), Some(epsilon)) => {
                Some(attune::UpdatePrivacy { clip_norm, noise_multiplier, epsilon, delta: s.dp_delta })
            }
            _ => {
                return Err(AttuneError::InvalidInput {
                    reason: "set dp_clip, dp_noise and dp_epsilon together".into(),
                });
            }
        };
        Ok(Self {
            epochs: s.epochs.map_or(default.epochs, |e| e as usize),
            learning_rate: s.learning_rate.unwrap_or(default.learning_rate),
            proximal: s.proximal.unwrap_or(default.proximal),
            seed: s.seed,
            privacy,
            clip_norm: s.clip_norm,
            ..default
        })
    }
}

/// What a device sends back after a round: weights and a count, no text.
#[derive(Debug, Clone, PartialEq, uniffi::Record)]
pub struct FederatedUpdate {
    pub model: SharedModel,
    /// Examples it trained on (the server weighs devices by it).
    pub examples: u64,
    /// Examples whose label the shared model does not have: not used.
    pub ignored: u64,
    /// For a private update: the task's (ε, δ) with it included.
    pub privacy_epsilon: Option<f64>,
    pub privacy_delta: Option<f64>,
}

impl From<attune::FederatedUpdate> for FederatedUpdate {
    fn from(u: attune::FederatedUpdate) -> Self {
        Self {
            model: (&u.model).into(),
            examples: u.examples,
            ignored: u.ignored,
            privacy_epsilon: u.privacy.map(|p| p.epsilon),
            privacy_delta: u.privacy.map(|p| p.delta),
        }
    }
}

/// Where an adopted shared model went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, uniffi::Record)]
pub struct AdoptSummary {
    /// Its stored head version.
    pub version: u32,
    /// It now answers predictions (unless the task has a head the device
    /// trained itself).
    pub active: bool,
}

impl From<attune::AdoptOutcome> for AdoptSummary {
    fn from(o: attune::AdoptOutcome) -> Self {
        Self { version: o.version, active: o.active }
    }
}

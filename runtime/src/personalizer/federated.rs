//! The device's half of federated rounds: train from the shared model on
//! the task's own examples and hand back only the new weights, score the
//! shared model on them, and adopt it. Nothing here stores text or sends
//! anything; an update holds weights for the shared label list and a count.

use std::collections::HashMap;

use super::features::Features;
use super::{lifecycle, privacy};
use crate::error::{Error, Result};
use crate::evaluation::{Metrics, evaluate};
use crate::federated::SharedModel;
use crate::heads::Head;
use crate::store::{NewHead, SaveAs, TaskId};
use crate::training::{
    FederatedOptions, PrivacySpent, TrainListener, TrainingSet, clip_update, fit_from_shared, privatize,
};

/// What a device sends back after a round.
#[derive(Debug, Clone, PartialEq)]
pub struct FederatedUpdate {
    /// The device's new weights for the shared labels.
    pub model: SharedModel,
    /// Examples it trained on (the server weighs devices by it).
    pub examples: u64,
    /// Examples whose label the shared model does not have: not used.
    pub ignored: u64,
    /// For a private update: the task's (ε, δ) with it included.
    pub privacy: Option<PrivacySpent>,
}

/// Where an adopted shared model went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdoptOutcome {
    /// Its stored head version.
    pub version: u32,
    /// Whether it now answers predictions (it does unless the task has a
    /// head the device trained itself, which keeps answering until `train`
    /// replaces it).
    pub active: bool,
}

/// The task's examples whose labels the shared model knows.
struct SharedRows {
    features: Vec<f32>,
    labels: Vec<usize>,
    weights: Vec<f32>,
    ignored: u64,
}

/// Trains `shared` on the task's examples (see [`FederatedOptions`]) and
/// returns the update; stores nothing. A task without an example of the
/// shared labels is `Error::NotTrained`.
pub(super) fn fit(
    features: Features<'_>,
    task: &str,
    shared: &SharedModel,
    options: &FederatedOptions,
    listener: &dyn TrainListener,
) -> Result<FederatedUpdate> {
    if options.privacy.is_some() && options.clip_norm.is_some() {
        return Err(Error::InvalidInput("a private update clips to its own norm: pass one clip norm".into()));
    }
    shared.check_backbone(features.fingerprint(), features.dim())?;
    let store = features.store;
    let id = store.task_id(task)?;
    check_label_list(features, id, shared)?;
    let charge = privacy::update_charge(store, id, options.privacy.as_ref())?;
    let rows = shared_rows(features, id, shared)?;
    let set = TrainingSet {
        features: &rows.features,
        dim: features.dim(),
        labels: &rows.labels,
        weights: Some(&rows.weights),
        label_names: shared.labels(),
        priors: &[],
        fingerprint: features.fingerprint(),
    };
    let trained = fit_from_shared(shared.head(), &set, options, listener)?;
    let (head, spent) = match charge {
        None => match options.clip_norm {
            Some(clip_norm) => (clip_update(&trained, shared.head(), clip_norm)?, None),
            None => (trained, None),
        },
        Some(charge) => {
            let head = privatize(&trained, shared.head(), &charge.privacy)?;
            // Charged before the update exists for the caller: no release goes uncounted.
            store.record_private_release(id, charge.entry, &charge.policy)?;
            (head, Some(charge.spent))
        }
    };
    Ok(FederatedUpdate {
        model: SharedModel::from_head(head)?,
        examples: rows.labels.len() as u64,
        ignored: rows.ignored,
        privacy: spent,
    })
}

/// Metrics of `shared` on the task's examples of its labels; nothing
/// is trained or stored.
pub(super) fn evaluate_shared(features: Features<'_>, task: &str, shared: &SharedModel) -> Result<Metrics> {
    shared.check_backbone(features.fingerprint(), features.dim())?;
    let id = features.store.task_id(task)?;
    let rows = shared_rows(features, id, shared)?;
    let probabilities = shared.head().probabilities(&rows.features)?;
    Ok(evaluate(&probabilities, &rows.labels, shared.labels()))
}

/// Keeps `shared` on the device as a head of `task` (created if
/// needed). Predictions follow personal head → shared head →
/// prototypes → zero-shot; `train` then starts from the shared head and
/// keeps its labels, and promotion weighs the personal head against it.
pub(super) fn adopt(features: Features<'_>, task: &str, shared: &SharedModel) -> Result<AdoptOutcome> {
    shared.check_backbone(features.fingerprint(), features.dim())?;
    let store = features.store;
    let id = store.ensure_task(task)?;
    check_label_list(features, id, shared)?;
    let active = lifecycle::stored_active_head(features, id)?;
    let activate = active.as_ref().is_none_or(|(_, info)| info.shared);
    // The device's own rounds trained it on every example so far: only
    // later ones are fresh evidence against it.
    let trained_through = store.examples(id)?.iter().map(|e| e.id).max().unwrap_or(0);
    let head = NewHead {
        kind: shared.head().kind().name().to_string(),
        format_version: Head::format_version(),
        fingerprint: shared.fingerprint().to_string(),
        labels: shared.labels().to_vec(),
        weights: shared.to_bytes(),
        report: r#"{"shared": true}"#.into(),
        metrics: "null".into(),
        trained_through_example: trained_through,
        privacy: None,
        shared: true,
    };
    let save_as = if activate { SaveAs::Active } else { SaveAs::Inactive };
    let version = store.save_head(id, &head, save_as)?;
    Ok(AdoptOutcome { version, active: activate })
}

/// The latest adopted shared head of `task` for the model, if any.
pub(super) fn shared_head(features: Features<'_>, id: TaskId) -> Result<Option<Head>> {
    match features.store.latest_shared_head(id)? {
        Some(stored) if stored.info.fingerprint == features.fingerprint() => {
            Ok(Some(Head::from_bytes(&stored.weights, features.fingerprint())?))
        }
        _ => Ok(None),
    }
}

/// A task's federated label list is the one of the first shared model
/// it adopted: a model for another list belongs to another federation.
fn check_label_list(features: Features<'_>, id: TaskId, shared: &SharedModel) -> Result<()> {
    match shared_head(features, id)? {
        Some(adopted) if adopted.labels() != shared.labels() => Err(Error::InvalidInput(format!(
            "the shared model has {} labels that are not the task's federated label list ({} labels)",
            shared.labels().len(),
            adopted.labels().len()
        ))),
        _ => Ok(()),
    }
}

fn shared_rows(features: Features<'_>, id: TaskId, shared: &SharedModel) -> Result<SharedRows> {
    let index: HashMap<&str, usize> = shared.labels().iter().enumerate().map(|(i, l)| (l.as_str(), i)).collect();
    let examples = features.store.examples(id)?;
    let (known, unknown): (Vec<_>, Vec<_>) = examples.iter().partition(|e| index.contains_key(e.label.as_str()));
    if known.is_empty() {
        return Err(Error::NotTrained("the task has no example of the shared model's labels".into()));
    }
    let texts: Vec<&str> = known.iter().map(|e| e.text.as_str()).collect();
    Ok(SharedRows {
        features: features.stored(&texts)?,
        labels: known.iter().map(|e| index[e.label.as_str()]).collect(),
        weights: known.iter().map(|e| e.weight as f32).collect(),
        ignored: unknown.len() as u64,
    })
}

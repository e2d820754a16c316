//! Which head a task predicts with, following its lifecycle: the active
//! trained (or adopted shared) head when there is one; otherwise prototypes
//! of the examples so far; otherwise zero-shot from label descriptions;
//! otherwise `Error::NotTrained`. And the features each head reads.

use super::adaptation;
use super::features::Features;
use super::training_data::TrainingData;
use crate::error::{Error, Result};
use crate::evaluation::{Metrics, evaluate};
use crate::heads::{Head, HeadKind, Prediction};
use crate::store::{HeadInfo, StoredHead, TaskId};
use crate::training::{AdaptedTop, HeadChoice, QuietTraining, TrainOptions, train, zero_shot_head};

/// Where a task's predictions come from right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionSource {
    TrainedHead,
    /// A shared model from federated rounds, adopted on this device.
    SharedHead,
    Prototypes,
    ZeroShot,
}

/// The head a task predicts with now, and where it comes from.
#[derive(Debug)]
pub(crate) struct ActiveHead {
    pub head: Head,
    pub source: PredictionSource,
    /// The adapted top layers the head's features come from, if any.
    pub top: Option<AdaptedTop>,
}

impl ActiveHead {
    /// The top `top_k` labels for each of `texts`.
    pub fn predict(&self, features: Features<'_>, texts: &[&str], top_k: usize) -> Result<Vec<Prediction>> {
        let vectors = self.features_of(features, texts)?;
        vectors.chunks_exact(self.head.dim()).map(|row| self.head.predict(row, top_k)).collect()
    }

    /// This head's metrics on labelled texts; labels it does not know count
    /// as errors.
    pub fn evaluate(&self, features: Features<'_>, examples: &[(String, String)]) -> Result<Metrics> {
        if examples.is_empty() {
            return Err(Error::InvalidInput("nothing to evaluate".into()));
        }
        let texts: Vec<&str> = examples.iter().map(|(t, _)| t.as_str()).collect();
        let probabilities = self.head.probabilities(&self.features_of(features, &texts)?)?;
        let labels = self.head.labels();
        let truth: Vec<usize> =
            examples.iter().map(|(_, label)| labels.iter().position(|l| l == label).unwrap_or(usize::MAX)).collect();
        Ok(evaluate(&probabilities, &truth, labels))
    }

    /// The features this head predicts from, for texts the app asks about
    /// (nothing of them is stored).
    fn features_of(&self, features: Features<'_>, texts: &[&str]) -> Result<Vec<f32>> {
        match &self.top {
            Some(top) => adaptation::adapted_features(features.encoder, top, texts),
            None => features.transient(texts),
        }
    }
}

/// The head predictions come from now, for `features`' model.
pub(super) fn current_head(features: Features<'_>, task: &str) -> Result<ActiveHead> {
    let id = features.store.task_id(task)?;
    let (head, source) = match stored_active_head(features, id)? {
        Some((head, info)) if head.kind() == HeadKind::Prototype && head.top.is_none() => {
            (with_current_prototypes(features, id, head, &info)?, PredictionSource::TrainedHead)
        }
        Some((head, info)) => (head, source_of(info.shared)),
        None => untrained_head(features, task, id)?,
    };
    let top = adapted_top(features, &head)?;
    Ok(ActiveHead { head, source, top })
}

/// The active head, decoded, with its stored record, when it belongs to
/// `features`' backbone. (After a model upgrade a head for another backbone
/// cannot be used on this model's features: it is ignored until retrained.)
pub(super) fn stored_active_head(features: Features<'_>, task: TaskId) -> Result<Option<(Head, HeadInfo)>> {
    match features.store.active_head(task)? {
        Some(StoredHead { info, weights, .. }) if info.fingerprint == features.fingerprint() => {
            Ok(Some((Head::from_bytes(&weights, features.fingerprint())?, info)))
        }
        _ => Ok(None),
    }
}

/// The adapted top layers `head` carries, applied to the model's own.
fn adapted_top(features: Features<'_>, head: &Head) -> Result<Option<AdaptedTop>> {
    let Some(changes) = head.top_changes() else { return Ok(None) };
    let misfit =
        |reason: String| Error::InvalidHead(format!("the head's adapted layers do not fit the model: {reason}"));
    let frozen = match AdaptedTop::of(features.encoder, changes.layers()) {
        Err(Error::CannotAdapt(reason)) => return Err(misfit(reason)),
        other => other?,
    };
    Ok(Some(frozen.with_changes(changes)?))
}

/// `head`'s features of stored `texts`: through its adapted top layers
/// when it has them (trunk states from the cache), else the frozen ones.
pub(super) fn features_of_head(features: Features<'_>, head: &Head, texts: &[String]) -> Result<Vec<f32>> {
    let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
    match adapted_top(features, head)? {
        Some(top) => adaptation::stored_adapted_features(features, &top, &texts),
        None => features.stored(&texts),
    }
}

/// Prototypes of all of the task's examples (and label descriptions).
fn prototype_head(data: &TrainingData, fingerprint: &str) -> Result<Head> {
    let options = TrainOptions { head: HeadChoice::Only(HeadKind::Prototype), ..TrainOptions::default() };
    Ok(train(&data.set(fingerprint), None, &options, &QuietTraining)?.0)
}

/// Where predictions from an active head come from.
fn source_of(shared: bool) -> PredictionSource {
    if shared { PredictionSource::SharedHead } else { PredictionSource::TrainedHead }
}

/// A stored prototype head never freezes the prototypes: with examples
/// added after it, its centroids are rebuilt from all of them (its
/// calibration is kept).
fn with_current_prototypes(features: Features<'_>, id: TaskId, stored: Head, info: &HeadInfo) -> Result<Head> {
    let data = TrainingData::load(features, id)?;
    if data.trained_through <= info.trained_through_example || data.labels.is_empty() {
        return Ok(stored);
    }
    let mut head = prototype_head(&data, features.fingerprint())?;
    head.temperature = stored.temperature;
    head.abstain_below = stored.abstain_below;
    Ok(head)
}

fn untrained_head(features: Features<'_>, task: &str, id: TaskId) -> Result<(Head, PredictionSource)> {
    // A private task never predicts from prototypes of its raw examples:
    // without a private head it is back at its public start.
    let store = features.store;
    let private = store.privacy_policy(id)?.is_some();
    let data = TrainingData::load(features, id)?;
    if !data.labels.is_empty() && !private {
        return Ok((prototype_head(&data, features.fingerprint())?, PredictionSource::Prototypes));
    }
    let descriptions = store.label_descriptions(id)?;
    if descriptions.is_empty() {
        return Err(Error::NotTrained(task.to_string()));
    }
    let texts: Vec<&str> = descriptions.iter().map(|(_, d)| d.as_str()).collect();
    let vectors = features.stored(&texts)?;
    let names = descriptions.into_iter().map(|(label, _)| label).collect();
    Ok((zero_shot_head(features.fingerprint(), names, &vectors, features.dim())?, PredictionSource::ZeroShot))
}

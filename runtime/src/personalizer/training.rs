//! The training service: one run over a task's examples, in this order —
//! the examples and the shared head they start from, the task's privacy,
//! the adaptation of the top layers, the fit of the head, the promotion
//! decision against the active head, and the stored head.

use super::adaptation::{self, Adapted, Decision};
use super::features::Features;
use super::training_data::TrainingData;
use super::{federated, lifecycle, privacy};
use crate::error::{Error, Result};
use crate::evaluation::Metrics;
use crate::heads::{Head, TopChanges};
use crate::store::{HeadInfo, NewHead, SaveAs, TaskId};
use crate::training::{
    ActiveHeadEvidence, PrivacyOptions, PromotionDecision, TrainListener, TrainOptions, TrainReport, decide_promotion,
    train,
};

/// What a training call did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    pub report: TrainReport,
    pub promotion: PromotionDecision,
    /// The stored version of the new head (active only when promoted).
    pub version: u32,
}

/// How a trained head is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Activation {
    /// Active when promotion says so.
    IfPromoted,
    /// Inactive, whatever promotion says (a model upgrade activates later).
    Never,
}

/// Trains on `features`' vectors and stores the head (with its ledger
/// entry when private) in one transaction, activated as `activation` says.
pub(super) fn train_and_store(
    features: Features<'_>,
    id: TaskId,
    options: &TrainOptions,
    listener: &dyn TrainListener,
    activation: Activation,
) -> Result<TrainOutcome> {
    // A task with a shared head keeps its labels and starts from it.
    let shared = federated::shared_head(features, id)?;
    let shared_labels = shared.as_ref().map_or(&[][..], |head| head.labels());
    let frozen = TrainingData::load_with_labels(features, id, shared_labels)?;
    let active = lifecycle::stored_active_head(features, id)?;
    let mut options = privacy::with_task_privacy(features.store, id, options)?;
    options.independent_warm_start = shared.is_some();

    let decision = adaptation::adapt_for_training(features, &frozen, &options, shared.is_some(), listener)?;
    let (data, adapted, adaptation) = match decision {
        Decision::Adapted(adapted) => {
            let Adapted { changes, features: adapted_features, priors, held_out, predictions, metrics, report } =
                *adapted;
            let evidence = AdaptedEvidence { changes, held_out, predictions, metrics };
            (frozen.with_features(adapted_features, priors), Some(evidence), Some(report))
        }
        Decision::Frozen(report) => (frozen, None, report),
    };

    // A warm start is only a start in its own feature space.
    let active_space_matches = active.as_ref().is_some_and(|(head, _)| head.top.is_none()) && adapted.is_none();
    let warm_start = shared.as_ref().or(active.as_ref().filter(|_| active_space_matches).map(|(head, _)| head));
    let set = data.set(features.fingerprint());
    let (mut head, mut report) = train(&set, warm_start, &options, listener)?;
    report.adaptation = adaptation;
    if let Some(evidence) = adapted {
        head.top = Some(evidence.changes);
        report.validation_rows = evidence.held_out;
        report.validation_predictions = evidence.predictions;
        report.validation = Some(evidence.metrics);
    }

    let promotion = match activation {
        Activation::IfPromoted => promotion_against(features, &data, &head, &report, active.as_ref())?,
        // Nothing to compare with (a new model's vectors): the decision
        // records the new head's validation accuracy.
        Activation::Never => decide_promotion(&report, None, &set)?,
    };
    let save_as = match activation == Activation::IfPromoted && promotion.promote {
        true => SaveAs::Active,
        false => SaveAs::Inactive,
    };
    let new_head = stored_head(&head, &report, data.trained_through, options.privacy.as_ref())?;
    let version = features.store.save_head(id, &new_head, save_as)?;
    Ok(TrainOutcome { report, promotion, version })
}

/// What an adaptation leaves for the head: its layers, and its held-out
/// rows with the adapted candidate's predictions and metrics there.
struct AdaptedEvidence {
    changes: TopChanges,
    held_out: Vec<usize>,
    predictions: Vec<usize>,
    metrics: Metrics,
}

/// Whether the new head replaces the active one (see [`decide_promotion`]).
/// A private head always replaces a public one: the task is private now.
fn promotion_against(
    features: Features<'_>,
    data: &TrainingData,
    head: &Head,
    report: &TrainReport,
    active: Option<&(Head, HeadInfo)>,
) -> Result<PromotionDecision> {
    let set = data.set(features.fingerprint());
    let Some((active_head, info)) = active else { return decide_promotion(report, None, &set) };
    if report.private_run.is_some() && info.privacy.is_none() {
        return Ok(PromotionDecision::private_replaces_public());
    }
    // A shared head saw the device's examples only through averaged updates
    // of past rounds: every example is evidence against it (which, if
    // anything, favours it). For forgetting, it counts as trained on them all.
    let unseen = match info.shared {
        true => vec![true; data.example_ids.len()],
        false => data.unseen_by(info),
    };
    let active_features = match active_head.top.is_some() || head.top.is_some() {
        true => Some(lifecycle::features_of_head(features, active_head, &data.texts)?),
        false => None,
    };
    let evidence = ActiveHeadEvidence {
        head: active_head,
        unseen: &unseen,
        validation_accuracy: validation_accuracy(info),
        shared: info.shared,
        features: active_features.as_deref(),
    };
    decide_promotion(report, Some(evidence), &set)
}

/// The accuracy a head's own training measured out of sample, from its
/// stored metrics.
fn validation_accuracy(info: &HeadInfo) -> Option<f64> {
    let metrics: serde_json::Value = serde_json::from_str(&info.metrics).ok()?;
    metrics.get("accuracy")?.as_f64()
}

/// A trained head with its report, as the store keeps it; a private head
/// carries its ledger entry and the task's policy.
fn stored_head(
    head: &Head,
    report: &TrainReport,
    trained_through: i64,
    privacy: Option<&PrivacyOptions>,
) -> Result<NewHead> {
    let to_json = |e: serde_json::Error| Error::Storage(format!("training report: {e}"));
    Ok(NewHead {
        kind: head.kind().name().to_string(),
        format_version: Head::format_version(),
        fingerprint: head.fingerprint().to_string(),
        labels: head.labels().to_vec(),
        weights: head.to_bytes(),
        report: serde_json::to_string(report).map_err(to_json)?,
        metrics: serde_json::to_string(&report.validation).map_err(to_json)?,
        trained_through_example: trained_through,
        privacy: privacy::head_privacy(report, privacy),
        shared: false,
    })
}

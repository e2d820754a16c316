//! Safe promotion: a new head replaces the active one only if it is not
//! worse on the same validation examples.

use serde::Serialize;

use super::{TrainReport, TrainingSet};
use crate::error::{Error, Result};
use crate::evaluation::evaluate;
use crate::heads::Head;

/// Whether a newly trained head should become active, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromotionDecision {
    pub promote: bool,
    /// The new head's accuracy on its validation examples (held out or out of fold).
    pub candidate_accuracy: Option<f64>,
    /// The active head's accuracy on the same examples.
    pub active_accuracy: Option<f64>,
    pub reason: String,
}

/// Compares the new head (through its training report) with `active` on the
/// validation examples of `set` that the training held out.
pub fn decide_promotion(
    report: &TrainReport,
    active: Option<&Head>,
    set: &TrainingSet<'_>,
) -> Result<PromotionDecision> {
    let decision = |promote, candidate_accuracy, active_accuracy, reason: &str| PromotionDecision {
        promote,
        candidate_accuracy,
        active_accuracy,
        reason: reason.to_string(),
    };
    let candidate = report.validation.as_ref().map(|m| m.accuracy);
    let Some(active) = active else {
        return Ok(decision(true, candidate, None, "no active head"));
    };
    if active.fingerprint() != set.fingerprint || active.dim() != set.dim {
        return Ok(decision(true, candidate, None, "the active head belongs to another backbone"));
    }
    let Some(candidate) = candidate else {
        return Ok(decision(false, None, None, "too few examples to validate the new head; the active head stays"));
    };
    let rows = &report.validation_rows;
    if rows.iter().any(|&r| r >= set.labels.len()) {
        return Err(Error::InvalidInput("the report does not belong to this training set".into()));
    }
    let features: Vec<f32> = rows.iter().flat_map(|&r| set.features[r * set.dim..(r + 1) * set.dim].to_vec()).collect();
    // Truth in the active head's label space; labels it never knew count as errors.
    let truth: Vec<usize> = rows
        .iter()
        .map(|&r| {
            let name = &set.label_names[set.labels[r]];
            active.labels().iter().position(|l| l == name).unwrap_or(usize::MAX)
        })
        .collect();
    let active_accuracy = evaluate(&active.probabilities(&features)?, &truth, active.labels()).accuracy;
    Ok(if candidate + 1e-9 >= active_accuracy {
        decision(true, Some(candidate), Some(active_accuracy), "not worse than the active head")
    } else {
        decision(
            false,
            Some(candidate),
            Some(active_accuracy),
            "worse than the active head on the same examples; kept as a candidate",
        )
    })
}

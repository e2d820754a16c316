//! Calibrating the refitted head on its validation predictions:
//! temperature scaling, the abstain threshold and the novelty check.

use super::candidates::example_prototypes;
use super::data::Data;
use super::validation::{ScoredCandidate, Validation};
use crate::evaluation::{Metrics, abstain_threshold, evaluate};
use crate::heads::Head;
use crate::numeric::{argmax, softmax_rows};

/// What calibration measured on the validation rows.
pub(crate) struct Calibrated {
    pub metrics: Metrics,
    /// The label predicted for each validation row (out of sample).
    pub predictions: Vec<usize>,
}

/// Sets `head`'s temperature, abstain threshold and, after a holdout, its
/// novelty check, from `chosen`'s predictions on the validation rows.
/// `abstain_rate` is the share of in-scope answers allowed to abstain.
pub(crate) fn calibrate(
    head: &mut Head,
    chosen: &ScoredCandidate,
    validation: &Validation,
    data: &Data,
    abstain_rate: f64,
) -> Calibrated {
    let classes = head.labels.len();
    let logits = chosen.logits.as_slice().expect("standard layout");
    head.temperature = chosen.temperature;
    let mut probabilities = logits.to_vec();
    softmax_rows(&mut probabilities, classes, head.temperature);
    // With a novelty check too, each check gets half the abstain budget.
    let share = if validation.novelty_threshold.is_some() { abstain_rate / 2.0 } else { abstain_rate };
    head.abstain_below = abstain_threshold(&probabilities, classes, share);
    if let Some(threshold) = validation.novelty_threshold {
        head.prototypes = Some(example_prototypes(data, classes));
        head.novelty_below = threshold;
    }
    Calibrated {
        metrics: evaluate(&probabilities, &validation.truth, &head.labels),
        predictions: probabilities.chunks_exact(classes).map(|row| argmax(row).0).collect(),
    }
}

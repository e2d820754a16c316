//! Safe promotion: a new head replaces the active one only when it is not
//! worse, judged fairly. Both heads are scored only on examples neither
//! was trained on — examples added after the active head, which the new
//! head predicted out of sample during its validation — so the active head
//! is not flattered by rows it learned. A new head that was trained on more
//! examples wins unless it is measurably worse there (a one-sided sign test
//! on the rows where exactly one of the two is right), so a few fresh rows
//! cannot keep a user on the old head. With no fresh examples both heads
//! saw the same data, and their own out-of-sample estimates are compared.

use serde::Serialize;

use super::{TrainReport, TrainingSet};
use crate::error::{Error, Result};
use crate::heads::Head;
use crate::numeric::argmax;

/// Below this p-value the active head is measurably better on fresh rows.
const SIGNIFICANCE: f64 = 0.05;

/// The active head, as promotion needs to know it.
#[derive(Debug, Clone, Copy)]
pub struct ActiveHeadEvidence<'a> {
    pub head: &'a Head,
    /// Per row of the training set: true when the active head was not
    /// trained on it (the example was added after it).
    pub unseen: &'a [bool],
    /// The active head's accuracy on its own validation rows, as its
    /// training report measured it (out of sample), when it was validated.
    pub validation_accuracy: Option<f64>,
    /// The active head is a shared model from federated rounds: a personal
    /// head replaces it only when at least as accurate on the compared rows,
    /// so personalizing never leaves a user worse off than the shared model.
    pub shared: bool,
    /// The active head's own features of the set's rows (`n × its dim`),
    /// when they are not the set's: a head over adapted top layers, or a
    /// frozen head compared with an adapted one.
    pub features: Option<&'a [f32]>,
}

/// What decided a promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PromotionBasis {
    /// Nothing was active, or the active head belongs to another backbone.
    NothingToCompare,
    /// Both heads on examples added after the active head, which the new
    /// head had not trained on either.
    FreshExamples,
    /// The new head saw more examples and too few fresh rows could tell the
    /// two apart: the head trained on more data wins.
    MoreData,
    /// No new examples: each head's own out-of-sample accuracy.
    OwnValidation,
    /// No new examples and nothing validated the new head: the active head stays.
    Unvalidated,
}

/// Whether a newly trained head should become active, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PromotionDecision {
    pub promote: bool,
    pub basis: PromotionBasis,
    /// Rows the two heads were compared on (neither trained on them); zero
    /// when their own validation estimates were compared.
    pub compared_rows: u64,
    /// Accuracy of the new and of the active head on those rows (or their
    /// own validation accuracy with `OwnValidation`).
    pub candidate_accuracy: Option<f64>,
    pub active_accuracy: Option<f64>,
    /// Compared rows only the new head, or only the active head, got right.
    pub candidate_only_right: u64,
    pub active_only_right: u64,
    /// One-sided sign-test p-value of "the active head is better" on them.
    pub p_value: Option<f64>,
    pub reason: String,
}

impl PromotionDecision {
    /// The first private head of a task replaces its public one whatever
    /// either scores: the app chose privacy for the task.
    pub fn private_replaces_public() -> Self {
        Self::new(
            true,
            PromotionBasis::NothingToCompare,
            "the task is trained with differential privacy now: its public head is replaced",
        )
    }

    fn new(promote: bool, basis: PromotionBasis, reason: impl Into<String>) -> Self {
        Self {
            promote,
            basis,
            compared_rows: 0,
            candidate_accuracy: None,
            active_accuracy: None,
            candidate_only_right: 0,
            active_only_right: 0,
            p_value: None,
            reason: reason.into(),
        }
    }
}

/// Compares the new head (through its training report on `set`) with the
/// active head; see the module documentation.
pub fn decide_promotion(
    report: &TrainReport,
    active: Option<ActiveHeadEvidence<'_>>,
    set: &TrainingSet<'_>,
) -> Result<PromotionDecision> {
    let candidate_accuracy = report.validation.as_ref().map(|m| m.accuracy);
    let Some(active) = active else {
        return Ok(PromotionDecision { candidate_accuracy, ..nothing_to_compare("no active head") });
    };
    if active.head.fingerprint() != set.fingerprint || (active.features.is_none() && active.head.dim() != set.dim) {
        return Ok(nothing_to_compare("the active head belongs to another backbone"));
    }
    if active.unseen.len() != set.labels.len()
        || report.validation_rows.len() != report.validation_predictions.len()
        || report.validation_rows.iter().any(|&r| r >= set.labels.len())
    {
        return Err(Error::InvalidInput(
            "the report or the active head's rows do not belong to this training set".into(),
        ));
    }
    let fresh = active.unseen.iter().filter(|&&u| u).count();
    if fresh == 0 {
        return Ok(on_own_validation(candidate_accuracy, active.validation_accuracy));
    }
    on_fresh_rows(report, active, set, fresh)
}

fn nothing_to_compare(reason: &str) -> PromotionDecision {
    PromotionDecision::new(true, PromotionBasis::NothingToCompare, reason)
}

/// Both heads trained on the same examples: their out-of-sample estimates.
fn on_own_validation(candidate: Option<f64>, active: Option<f64>) -> PromotionDecision {
    let (promote, basis, reason) = match (candidate, active) {
        (None, _) => (
            false,
            PromotionBasis::Unvalidated,
            "no new examples and too few to validate the new head: the active head stays",
        ),
        (Some(_), None) => {
            (true, PromotionBasis::OwnValidation, "no new examples; the active head was never validated")
        }
        (Some(c), Some(a)) if c + 1e-9 >= a => (
            true,
            PromotionBasis::OwnValidation,
            "no new examples; not worse than the active head's own validation accuracy",
        ),
        (Some(_), Some(_)) => (
            false,
            PromotionBasis::OwnValidation,
            "no new examples; worse than the active head's own validation accuracy: kept as a candidate",
        ),
    };
    PromotionDecision {
        candidate_accuracy: candidate,
        active_accuracy: active,
        ..PromotionDecision::new(promote, basis, reason)
    }
}

/// The new head saw `fresh` examples the active head did not: both are
/// scored on those the new head predicted out of sample.
fn on_fresh_rows(
    report: &TrainReport,
    active: ActiveHeadEvidence<'_>,
    set: &TrainingSet<'_>,
    fresh: usize,
) -> Result<PromotionDecision> {
    let compared: Vec<(usize, usize)> = report
        .validation_rows
        .iter()
        .zip(&report.validation_predictions)
        .filter(|&(&row, _)| active.unseen[row])
        .map(|(&row, &predicted)| (row, predicted))
        .collect();
    let rows: Vec<usize> = compared.iter().map(|&(row, _)| row).collect();
    let active_predictions = predictions_in_set_labels(active, set, &rows)?;
    let (mut candidate_right, mut active_right, mut only_candidate, mut only_active) = (0u64, 0u64, 0u64, 0u64);
    for (&(row, predicted), active_predicted) in compared.iter().zip(active_predictions) {
        let truth = set.labels[row];
        let (c, a) = (predicted == truth, active_predicted == Some(truth));
        candidate_right += u64::from(c);
        active_right += u64::from(a);
        only_candidate += u64::from(c && !a);
        only_active += u64::from(a && !c);
    }
    let p_value = sign_test(only_active, only_candidate);
    let n = compared.len() as u64;
    let accuracy = |right: u64| (n > 0).then(|| right as f64 / n as f64);
    let worse = p_value < SIGNIFICANCE || (active.shared && (n == 0 || candidate_right < active_right));
    let (basis, reason) = if worse && active.shared {
        (
            PromotionBasis::FreshExamples,
            format!(
                "less accurate than the shared model on {n} examples it was validated on \
                 ({candidate_right} against {active_right} right): the shared model stays"
            ),
        )
    } else if worse {
        (
            PromotionBasis::FreshExamples,
            format!(
                "measurably worse than the active head on {n} examples neither trained on \
                 (p = {p_value:.3}): kept as a candidate"
            ),
        )
    } else if only_active + only_candidate >= 5 && only_candidate >= only_active {
        (PromotionBasis::FreshExamples, format!("not worse than the active head on {n} examples neither trained on"))
    } else {
        (
            PromotionBasis::MoreData,
            format!(
                "trained on {fresh} examples the active head never saw, and not measurably worse on \
                 the {n} of them it was validated on"
            ),
        )
    };
    Ok(PromotionDecision {
        promote: !worse,
        basis,
        compared_rows: n,
        candidate_accuracy: accuracy(candidate_right),
        active_accuracy: accuracy(active_right),
        candidate_only_right: only_candidate,
        active_only_right: only_active,
        p_value: Some(p_value),
        reason,
    })
}

/// The active head's predicted label for each of `rows`, as an index into
/// the set's labels (`None` for a label the set does not have).
fn predictions_in_set_labels(
    active: ActiveHeadEvidence<'_>,
    set: &TrainingSet<'_>,
    rows: &[usize],
) -> Result<Vec<Option<usize>>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let head = active.head;
    let (all, dim) = active.features.map_or((set.features, set.dim), |own| (own, head.dim()));
    if all.len() != set.labels.len() * dim {
        return Err(Error::InvalidInput("the active head's features do not cover the training set".into()));
    }
    let features: Vec<f32> = rows.iter().flat_map(|&r| all[r * dim..(r + 1) * dim].to_vec()).collect();
    let probabilities = head.probabilities(&features)?;
    Ok(probabilities
        .chunks_exact(head.labels().len())
        .map(|row| {
            let name = &head.labels()[argmax(row).0];
            set.label_names.iter().position(|l| l == name)
        })
        .collect())
}

/// P(X ≥ `wins`) for X ~ Binomial(`wins + losses`, ½): how likely the
/// active head wins this many of the disagreements if both were equal.
fn sign_test(wins: u64, losses: u64) -> f64 {
    let n = wins + losses;
    let log_half_n = n as f64 * 0.5f64.ln();
    let mut log_choose = 0.0f64; // log C(n, k), from k = 0
    let mut tail = 0.0;
    for k in 0..=n {
        if k > 0 {
            log_choose += ((n - k + 1) as f64).ln() - (k as f64).ln();
        }
        if k >= wins {
            tail += (log_choose + log_half_n).exp();
        }
    }
    tail.min(1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::heads::HeadKind;
    use crate::training::{HeadChoice, QuietTraining, TrainOptions, train};

    const DIM: usize = 16;

    /// Three labels with a direction each; row `i` a small deterministic
    /// deviation from its label's.
    fn separable_rows() -> (Vec<f32>, Vec<usize>) {
        let mut features = Vec::new();
        let mut labels = Vec::new();
        for label in 0..3 {
            for i in 0..30 {
                let mut v: Vec<f32> = (0..DIM).map(|d| if d == label * 3 { 1.0 } else { 0.0 }).collect();
                for (d, x) in v.iter_mut().enumerate() {
                    *x += 0.15 * (((i * 31 + d * 17 + label * 7) % 11) as f32 / 11.0 - 0.5);
                }
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                features.extend(v.into_iter().map(|x| x / norm));
                labels.push(label);
            }
        }
        (features, labels)
    }

    #[test]
    fn a_run_on_mislabelled_rows_with_nothing_new_is_not_promoted_over_the_active_head() {
        let (features, labels) = separable_rows();
        let names: Vec<String> = ["bills", "family", "travel"].map(String::from).to_vec();
        let set = TrainingSet {
            features: &features,
            dim: DIM,
            labels: &labels,
            weights: None,
            label_names: &names,
            priors: &[],
            fingerprint: "synthetic",
        };
        let linear = TrainOptions { head: HeadChoice::Only(HeadKind::Linear), ..TrainOptions::default() };
        let (active, report) = train(&set, None, &linear, &QuietTraining).unwrap();
        assert!(decide_promotion(&report, None, &set).unwrap().promote);

        // Every other row mislabelled and no new rows: both heads saw the
        // same rows, so their own out-of-sample accuracies are compared, and
        // the noisy run's (scored against the wrong labels) is worse.
        let noisy: Vec<usize> =
            labels.iter().enumerate().map(|(i, &l)| if i % 2 == 1 { (l + 1) % 3 } else { l }).collect();
        let mlp = TrainOptions { head: HeadChoice::Only(HeadKind::Mlp), ..TrainOptions::default() };
        let (_, worse) = train(&TrainingSet { labels: &noisy, ..set }, None, &mlp, &QuietTraining).unwrap();
        let nothing_new = vec![false; labels.len()];
        let evidence = ActiveHeadEvidence {
            head: &active,
            unseen: &nothing_new,
            validation_accuracy: report.validation.as_ref().map(|m| m.accuracy),
            shared: false,
            features: None,
        };
        let decision = decide_promotion(&worse, Some(evidence), &set).unwrap();
        assert!(!decision.promote, "{decision:?}");
        assert_eq!(decision.basis, PromotionBasis::OwnValidation);
        assert!(decision.active_accuracy.unwrap() > decision.candidate_accuracy.unwrap() + 0.2, "{decision:?}");
    }

    #[test]
    fn sign_test_tails() {
        assert_eq!(sign_test(0, 0), 1.0);
        assert!((sign_test(5, 0) - 1.0 / 32.0).abs() < 1e-12);
        // P(X ≥ 8 | n = 10) = (45 + 10 + 1) / 1024.
        assert!((sign_test(8, 2) - 56.0 / 1024.0).abs() < 1e-12);
        assert!((sign_test(0, 7) - 1.0).abs() < 1e-12);
    }
}

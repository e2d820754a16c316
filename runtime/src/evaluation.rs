//! How good a head is: accuracy, macro-F1, per-class precision and recall,
//! log loss and expected calibration error; and calibration itself.

use serde::{Deserialize, Serialize};

use crate::numeric::{argmax, cross_entropy};

/// Precision and recall of one label.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassMetrics {
    pub label: String,
    pub precision: f64,
    pub recall: f64,
    pub f1: f64,
    /// Examples of this label in the evaluated set.
    pub support: u64,
}

/// Metrics over a labelled set.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    pub n: u64,
    pub accuracy: f64,
    pub macro_f1: f64,
    pub log_loss: f64,
    /// Expected calibration error over 15 equal-width confidence bins.
    pub ece: f64,
    pub per_class: Vec<ClassMetrics>,
}

impl Metrics {
    /// Reads metrics as heads store them (JSON, `null` when a head had no
    /// validation); `None` for `null` or for JSON that is not metrics.
    pub fn from_stored_json(json: &str) -> Option<Self> {
        serde_json::from_str::<Option<Self>>(json).ok().flatten()
    }
}

const ECE_BINS: usize = 15;
const PROBABILITY_FLOOR: f64 = 1e-12;

/// Scores `probabilities` (`n × labels.len()`, row-major) against `truth`.
/// A truth index of `labels.len()` or more is a label the head cannot know:
/// it counts as an error.
pub fn evaluate(probabilities: &[f32], truth: &[usize], labels: &[String]) -> Metrics {
    let classes = labels.len();
    let n = truth.len();
    let mut confusion = vec![[0u64; 3]; classes]; // true positives, predicted, actual
    let mut correct = 0u64;
    let mut log_loss = 0.0;
    let mut bins = [(0u64, 0.0f64, 0u64); ECE_BINS]; // count, confidence sum, correct
    for (row, &actual) in probabilities.chunks_exact(classes.max(1)).zip(truth) {
        let (predicted, confidence) = argmax(row);
        let hit = predicted == actual;
        correct += u64::from(hit);
        confusion[predicted][1] += 1;
        if let Some(counts) = confusion.get_mut(actual) {
            counts[2] += 1;
            counts[0] += u64::from(hit);
        }
        let p_true = row.get(actual).map_or(0.0, |p| f64::from(*p));
        log_loss -= p_true.max(PROBABILITY_FLOOR).ln();
        let bin = ((f64::from(confidence) * ECE_BINS as f64) as usize).min(ECE_BINS - 1);
        bins[bin].0 += 1;
        bins[bin].1 += f64::from(confidence);
        bins[bin].2 += u64::from(hit);
    }
    let per_class: Vec<ClassMetrics> = labels
        .iter()
        .zip(&confusion)
        .map(|(label, &[tp, predicted, actual])| {
            let precision = ratio(tp, predicted);
            let recall = ratio(tp, actual);
            let f1 = if precision + recall > 0.0 { 2.0 * precision * recall / (precision + recall) } else { 0.0 };
            ClassMetrics { label: label.clone(), precision, recall, f1, support: actual }
        })
        .collect();
    let present: Vec<&ClassMetrics> = per_class.iter().filter(|c| c.support > 0).collect();
    let macro_f1 = present.iter().map(|c| c.f1).sum::<f64>() / present.len().max(1) as f64;
    let ece = bins
        .iter()
        .filter(|b| b.0 > 0)
        .map(|&(count, confidence, hits)| {
            (count as f64 / n.max(1) as f64) * (confidence / count as f64 - hits as f64 / count as f64).abs()
        })
        .sum();
    Metrics {
        n: n as u64,
        accuracy: ratio(correct, n as u64),
        macro_f1,
        log_loss: log_loss / n.max(1) as f64,
        ece,
        per_class,
    }
}

fn ratio(a: u64, b: u64) -> f64 {
    if b == 0 { 0.0 } else { a as f64 / b as f64 }
}

/// The temperature that minimises the log loss of `logits` on `truth`
/// (golden-section search over log T in [1/20, 20]): temperature scaling.
pub(crate) fn fit_temperature(logits: &[f32], truth: &[usize], classes: usize) -> f32 {
    let nll = |log_t: f64| -> f64 {
        let t = log_t.exp() as f32;
        logits.chunks_exact(classes).zip(truth).map(|(row, &y)| cross_entropy(row.iter().copied(), y, t)).sum()
    };
    let (mut low, mut high) = ((1.0f64 / 20.0).ln(), 20.0f64.ln());
    let golden = (5f64.sqrt() - 1.0) / 2.0;
    for _ in 0..40 {
        let a = high - golden * (high - low);
        let b = low + golden * (high - low);
        if nll(a) < nll(b) { high = b } else { low = a }
    }
    ((low + high) / 2.0).exp() as f32
}

/// The confidence below which a prediction abstains: the `quantile` of the
/// top probabilities on in-scope validation examples, so that about
/// `1 - quantile` of in-scope inputs are still answered.
pub(crate) fn abstain_threshold(probabilities: &[f32], classes: usize, quantile: f64) -> f32 {
    let mut top: Vec<f32> = probabilities.chunks_exact(classes).map(|row| argmax(row).1).collect();
    if top.is_empty() {
        return 0.0;
    }
    top.sort_by(f32::total_cmp);
    top[((top.len() - 1) as f64 * quantile).floor() as usize]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("l{i}")).collect()
    }

    #[test]
    fn metrics_on_a_hand_computed_case() {
        // Three classes; rows predict 0, 1, 1, 2; truth 0, 1, 2, 2.
        let p = [0.8, 0.1, 0.1, 0.1, 0.7, 0.2, 0.2, 0.5, 0.3, 0.1, 0.1, 0.8];
        let m = evaluate(&p, &[0, 1, 2, 2], &labels(3));
        assert_eq!(m.accuracy, 0.75);
        assert_eq!(m.per_class[1].precision, 0.5);
        assert_eq!(m.per_class[2].recall, 0.5);
        // F1: class 0 = 1, class 1 = 2/3, class 2 = 2/3.
        assert!((m.macro_f1 - (1.0 + 2.0 / 3.0 + 2.0 / 3.0) / 3.0).abs() < 1e-12);
        let expected_loss = -(0.8f64.ln() + 0.7f64.ln() + 0.3f64.ln() + 0.8f64.ln()) / 4.0;
        assert!((m.log_loss - expected_loss).abs() < 1e-6);
    }

    #[test]
    fn unknown_truth_counts_as_an_error() {
        let m = evaluate(&[0.9, 0.1, 0.9, 0.1], &[0, 5], &labels(2));
        assert_eq!(m.accuracy, 0.5);
        assert!(m.log_loss > 10.0);
    }

    #[test]
    fn a_perfectly_calibrated_set_has_zero_ece() {
        // Confidence 0.5 and half of them right.
        let p = [0.5, 0.5, 0.5, 0.5];
        assert!(evaluate(&p, &[0, 1], &labels(2)).ece.abs() < 1e-12);
    }

    #[test]
    fn temperature_scaling_recovers_an_overconfident_scale() {
        // Logits scaled by 4 from well-calibrated ones: the best T is ~4.
        let mut logits = Vec::new();
        let mut truth = Vec::new();
        let mut state = 7u64;
        for _ in 0..4000 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            let margin = ((state >> 33) % 1000) as f32 / 250.0 - 2.0;
            // P(class 0) = sigmoid(margin); draw the truth from it.
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            let u = ((state >> 33) % 10_000) as f32 / 10_000.0;
            truth.push(usize::from(u >= 1.0 / (1.0 + (-margin).exp())));
            logits.extend([4.0 * margin, 0.0]);
        }
        let t = fit_temperature(&logits, &truth, 2);
        assert!((t - 4.0).abs() < 0.4, "temperature {t}");
    }
}

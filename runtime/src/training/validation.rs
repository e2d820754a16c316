//! Scoring candidates on examples they did not train on: a stratified
//! holdout, or out-of-fold predictions when labels have few examples.

use ndarray::{Array2, Axis};

use super::candidates::{example_prototypes, fit_candidate, grid, logits_of};
use super::data::Data;
use super::parallel::{CallerThreadListener, in_parallel};
use super::plan::{Budget, Plan, Regime};
use super::{CandidateHead, CandidateReport, TrainListener, ValidationMethod, split};
use crate::error::Result;
use crate::evaluation::{evaluate, fit_temperature};
use crate::numeric::softmax_rows;

/// One candidate's predictions on the validation rows.
pub(crate) struct ScoredCandidate {
    pub candidate: CandidateHead,
    /// `validation rows × classes`, from fits that did not see those rows.
    pub logits: Array2<f32>,
    pub epochs: usize,
    /// The temperature fitted on these predictions, and the accuracy and
    /// log loss after it, as the head would be used.
    pub temperature: f32,
    pub accuracy: f64,
    pub log_loss: f64,
}

impl ScoredCandidate {
    fn new(candidate: CandidateHead, logits: Array2<f32>, truth: &[usize], epochs: usize) -> Self {
        let classes = logits.ncols();
        let raw = logits.as_slice().expect("standard layout");
        let temperature = fit_temperature(raw, truth, classes);
        let mut probabilities = raw.to_vec();
        softmax_rows(&mut probabilities, classes, temperature);
        let names: Vec<String> = (0..classes).map(|c| c.to_string()).collect();
        let metrics = evaluate(&probabilities, truth, &names);
        Self { candidate, logits, epochs, temperature, accuracy: metrics.accuracy, log_loss: metrics.log_loss }
    }

    pub fn report(&self) -> CandidateReport {
        CandidateReport {
            candidate: self.candidate,
            validation_accuracy: self.accuracy,
            validation_log_loss: self.log_loss,
            epochs: self.epochs,
        }
    }
}

/// Every candidate of a run, scored on the same validation rows.
pub(crate) struct Validation {
    pub method: ValidationMethod,
    /// Rows of the training data that were validated on, and their labels.
    pub rows: Vec<usize>,
    pub truth: Vec<usize>,
    pub scored: Vec<ScoredCandidate>,
    /// Held-out inputs' cosine to the nearest training prototype falls
    /// below this for about half the abstain budget (holdout only).
    pub novelty_threshold: Option<f32>,
}

impl Validation {
    /// The candidate with the lowest calibrated log loss (a proper score,
    /// steadier than accuracy on a few thousand examples); ties go to the
    /// simpler head, tried first.
    pub fn best(&self) -> Option<&ScoredCandidate> {
        self.scored
            .iter()
            .reduce(|best, next| if next.log_loss.total_cmp(&best.log_loss).is_lt() { next } else { best })
    }
}

/// Scores the candidates of `plan` as its regime says; candidates after the
/// time budget ran out are skipped (never the first).
pub(crate) fn score_candidates(
    plan: &Plan<'_>,
    data: &Data,
    budget: &Budget,
    listener: &dyn TrainListener,
) -> Result<Validation> {
    let candidates = grid(plan, data.len());
    match plan.regime {
        Regime::Unvalidated => Ok(Validation {
            method: ValidationMethod::None,
            rows: Vec::new(),
            truth: Vec::new(),
            scored: Vec::new(),
            novelty_threshold: None,
        }),
        Regime::Folds(k) => by_folds(plan, data, k, &candidates, budget, listener),
        Regime::Holdout => by_holdout(plan, data, &candidates, budget, listener),
    }
}

fn by_folds(
    plan: &Plan<'_>,
    data: &Data,
    k: usize,
    candidates: &[CandidateHead],
    budget: &Budget,
    listener: &dyn TrainListener,
) -> Result<Validation> {
    let folds = split::folds(&data.labels, plan.classes, k, plan.options.seed);
    let mut scored = Vec::new();
    for &candidate in candidates {
        if budget.exhausted() && !scored.is_empty() {
            break;
        }
        // Folds are independent: they are fitted on all cores at once.
        let fold_listener = CallerThreadListener::new(listener);
        let fitted = in_parallel(&folds, |(train_rows, validation_rows)| -> Result<(Array2<f32>, usize)> {
            let (train, held) = (data.subset(train_rows), data.subset(validation_rows));
            let fitted = fit_candidate(plan, candidate, &train, None, budget, &fold_listener)?;
            Ok((logits_of(&fitted.params, held.features.view()), fitted.epochs))
        });
        let mut logits = Array2::zeros((data.len(), plan.classes));
        let mut epochs = 0;
        for ((_, validation_rows), fold) in folds.iter().zip(fitted) {
            let (fold_logits, fold_epochs) = fold?;
            epochs = epochs.max(fold_epochs);
            for (row, &i) in validation_rows.iter().enumerate() {
                logits.row_mut(i).assign(&fold_logits.row(row));
            }
        }
        scored.push(ScoredCandidate::new(candidate, logits, &data.labels, epochs));
    }
    Ok(Validation {
        method: ValidationMethod::KFold { k },
        rows: (0..data.len()).collect(),
        truth: data.labels.clone(),
        scored,
        novelty_threshold: None,
    })
}

fn by_holdout(
    plan: &Plan<'_>,
    data: &Data,
    candidates: &[CandidateHead],
    budget: &Budget,
    listener: &dyn TrainListener,
) -> Result<Validation> {
    let options = plan.options;
    let (train_rows, validation_rows) =
        split::holdout(&data.labels, plan.classes, options.validation_fraction, options.seed);
    let (train, held) = (data.subset(&train_rows), data.subset(&validation_rows));
    let novelty_threshold = novelty_threshold(&train, &held, plan.classes, options.abstain_rate / 2.0);
    let mut scored = Vec::new();
    for &candidate in candidates {
        if budget.exhausted() && !scored.is_empty() {
            break;
        }
        let fitted = fit_candidate(plan, candidate, &train, Some(&held), budget, listener)?;
        let logits = logits_of(&fitted.params, held.features.view());
        scored.push(ScoredCandidate::new(candidate, logits, &held.labels, fitted.epochs));
    }
    Ok(Validation {
        method: ValidationMethod::Holdout { fraction: options.validation_fraction },
        rows: validation_rows,
        truth: held.labels,
        scored,
        novelty_threshold: Some(novelty_threshold),
    })
}

/// The `share` quantile of held-out inputs' cosine to their nearest
/// training prototype: prototypes of the training rows only, so the
/// held-out cosines are honest.
fn novelty_threshold(train: &Data, held: &Data, classes: usize, share: f64) -> f32 {
    let prototypes = example_prototypes(train, classes);
    let mut nearest: Vec<f32> = held
        .features
        .axis_iter(Axis(0))
        .map(|row| prototypes.dot(&row).iter().fold(f32::NEG_INFINITY, |m, &c| m.max(c)))
        .collect();
    if nearest.is_empty() {
        return -1.0;
    }
    nearest.sort_by(f32::total_cmp);
    nearest[((nearest.len() - 1) as f64 * share).floor() as usize]
}

//! Everything fixed before candidates are tried: how they are validated
//! and the fit's defaults (batch size, epochs, learning rate, time budget).

use std::time::{Duration, Instant};

use super::data::{Data, count_labels};
use super::{OptimizerKind, TrainOptions, TrainingSet};
use crate::heads::Head;

/// Mini-batch steps a fit aims for: k-fold fits (few examples, five times
/// over) and holdout fits (early stopping ends them sooner when they converge).
const TARGET_STEPS_FOLDS: usize = 400;
const TARGET_STEPS_HOLDOUT: usize = 1000;
/// Below this many examples in its smallest label, k-fold validation.
const FEW_SHOT: usize = 8;

/// How candidates are validated, from the examples per label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Regime {
    /// Too few examples per label: nothing to validate on.
    Unvalidated,
    /// Out-of-fold predictions of `k` folds.
    Folds(usize),
    /// A stratified holdout.
    Holdout,
}

/// The settings every candidate of one run shares.
#[derive(Clone, Copy)]
pub(crate) struct Plan<'a> {
    pub set: &'a TrainingSet<'a>,
    pub warm_start: Option<&'a Head>,
    pub options: &'a TrainOptions,
    pub regime: Regime,
    pub classes: usize,
    /// Labels with at least one example.
    pub present: usize,
    pub batch_size: usize,
    pub epochs: usize,
    pub learning_rate: f32,
}

impl<'a> Plan<'a> {
    pub fn new(set: &'a TrainingSet<'a>, warm_start: Option<&'a Head>, options: &'a TrainOptions, data: &Data) -> Self {
        let classes = set.label_names.len();
        let counts = count_labels(&data.labels, classes);
        let present: Vec<usize> = counts.iter().copied().filter(|&c| c > 0).collect();
        let knows_every_label = options.independent_warm_start
            && warm_start.is_some_and(|head| {
                head.fingerprint == set.fingerprint
                    && head.dim == set.dim
                    && set.label_names.iter().all(|label| head.labels.contains(label))
            });
        let regime = regime(&present, data.len(), knows_every_label);
        let n = data.len();
        let batch_size = options.batch_size.unwrap_or((n / 24).clamp(8, 256)).max(1);
        let target_steps = if regime == Regime::Holdout { TARGET_STEPS_HOLDOUT } else { TARGET_STEPS_FOLDS };
        let epochs =
            options.epochs.unwrap_or(target_steps.div_ceil(n.div_ceil(batch_size)).clamp(8, options.max_epochs.max(1)));
        let learning_rate = options.learning_rate.unwrap_or(match options.optimizer {
            OptimizerKind::AdamW => 0.01,
            OptimizerKind::Sgd => 1.0,
        });
        Plan { set, warm_start, options, regime, classes, present: present.len(), batch_size, epochs, learning_rate }
    }
}

/// `present` holds the example count of each label that has examples;
/// `knows_every_label`: the warm start is independent of them and has every label.
fn regime(present: &[usize], n: usize, knows_every_label: bool) -> Regime {
    let smallest = present.iter().copied().min().unwrap_or(0);
    let singletons = present.iter().filter(|&&c| c == 1).count();
    if present.len() < 2 || n < 4 || (2 * singletons > present.len() && !knows_every_label) {
        // Held-out examples of single-example labels cannot be predicted by
        // a candidate that learns labels from examples alone: nothing to
        // validate on.
        Regime::Unvalidated
    } else if smallest < FEW_SHOT {
        Regime::Folds(smallest.clamp(2, 5))
    } else {
        Regime::Holdout
    }
}

/// A training run's time budget; the final refit ignores it.
pub(crate) struct Budget {
    start: Instant,
    limit: Option<Duration>,
}

impl Budget {
    pub fn new(start: Instant, limit: Option<Duration>) -> Self {
        Self { start, limit }
    }

    /// No limit: a head must come out of the final refit.
    pub fn unlimited() -> Self {
        Self { start: Instant::now(), limit: None }
    }

    pub fn exhausted(&self) -> bool {
        self.limit.is_some_and(|limit| self.start.elapsed() >= limit)
    }
}

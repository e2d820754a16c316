//! The examples a training run learns from, checked once and weighted.

use std::collections::BTreeMap;

use ndarray::{Array2, Axis};

use super::{TrainOptions, TrainingSet};
use crate::error::{Error, Result};

/// Checked training rows: features `n × dim`, a label index and a loss
/// weight per row.
#[derive(Clone)]
pub(crate) struct Data {
    pub features: Array2<f32>,
    pub labels: Vec<usize>,
    pub weights: Vec<f32>,
}

impl Data {
    /// Checks `set` and `options` and builds the weighted rows: with
    /// `class_balanced`, every label weighs the same in the loss.
    pub fn checked(set: &TrainingSet<'_>, options: &TrainOptions) -> Result<Self> {
        check_set(set)?;
        check_options(options)?;
        let n = set.labels.len();
        let example_weights = example_weights(set)?;
        let counts = count_labels(set.labels, set.label_names.len());
        let present = counts.iter().filter(|&&c| c > 0).count() as f32;
        let weights = set
            .labels
            .iter()
            .zip(example_weights)
            .map(|(&l, w)| if options.class_balanced { w * n as f32 / (present * counts[l] as f32) } else { w })
            .collect();
        let features = Array2::from_shape_vec((n, set.dim), set.features.to_vec())
            .map_err(|e| Error::InvalidInput(e.to_string()))?;
        Ok(Data { features, labels: set.labels.to_vec(), weights })
    }

    pub fn len(&self) -> usize {
        self.labels.len()
    }

    pub fn subset(&self, rows: &[usize]) -> Data {
        Data {
            features: self.features.select(Axis(0), rows),
            labels: rows.iter().map(|&i| self.labels[i]).collect(),
            weights: rows.iter().map(|&i| self.weights[i]).collect(),
        }
    }
}

fn check_set(set: &TrainingSet<'_>) -> Result<()> {
    let n = set.labels.len();
    let classes = set.label_names.len();
    if n == 0 || classes == 0 || set.dim == 0 {
        return Err(Error::InvalidInput("training needs examples, labels and a feature width".into()));
    }
    if set.features.len() != n * set.dim {
        return Err(Error::InvalidInput(format!(
            "{} feature values for {n} examples of width {}",
            set.features.len(),
            set.dim
        )));
    }
    if set.labels.iter().any(|&l| l >= classes) {
        return Err(Error::InvalidInput("an example's label is not in the label list".into()));
    }
    if set.features.iter().any(|x| !x.is_finite()) {
        return Err(Error::InvalidInput("features hold NaN or infinity".into()));
    }
    if set.priors.iter().flatten().any(|p| p.len() != set.dim || p.iter().any(|x| !x.is_finite())) {
        return Err(Error::InvalidInput("a label description embedding has the wrong width or NaN".into()));
    }
    Ok(())
}

fn check_options(options: &TrainOptions) -> Result<()> {
    if !(0.0..1.0).contains(&options.label_smoothing) || !(0.01..0.5).contains(&options.validation_fraction) {
        return Err(Error::InvalidInput(
            "label smoothing must be in [0, 1), the validation share in [0.01, 0.5)".into(),
        ));
    }
    let positive = options.learning_rate.is_none_or(|v| v.is_finite() && v > 0.0);
    let not_negative = options.weight_decay.is_none_or(|d| d.is_finite() && d >= 0.0);
    if !positive || !not_negative {
        return Err(Error::InvalidInput("the learning rate must be positive, the weight decay not negative".into()));
    }
    Ok(())
}

fn example_weights(set: &TrainingSet<'_>) -> Result<Vec<f32>> {
    match set.weights {
        Some(w) if w.len() != set.labels.len() => Err(Error::InvalidInput("one weight per example is needed".into())),
        Some(w) if w.iter().any(|x| !x.is_finite() || *x <= 0.0) => {
            Err(Error::InvalidInput("weights must be positive numbers".into()))
        }
        Some(w) => Ok(w.to_vec()),
        None => Ok(vec![1.0; set.labels.len()]),
    }
}

/// Examples per label index.
pub(crate) fn count_labels(labels: &[usize], classes: usize) -> Vec<usize> {
    let mut counts = vec![0; classes];
    labels.iter().for_each(|&l| counts[l] += 1);
    counts
}

/// Labels with at least one example, with their counts, for the report.
pub(crate) fn examples_per_class(names: &[String], counts: &[usize]) -> BTreeMap<String, u64> {
    names.iter().cloned().zip(counts.iter().map(|&c| c as u64)).filter(|(_, c)| *c > 0).collect()
}

//! A task's examples as the trainer wants them: labels numbered, vectors
//! from the feature cache, and label descriptions as priors.

use super::features::Features;
use crate::error::Result;
use crate::store::{HeadInfo, TaskId};
use crate::training::TrainingSet;

/// A task's examples, in the store's order, with their vectors.
pub(super) struct TrainingData {
    pub texts: Vec<String>,
    /// Labels with a description, and the description.
    pub described: Vec<(usize, String)>,
    pub example_ids: Vec<i64>,
    pub features: Vec<f32>,
    pub label_index: Vec<usize>,
    pub weights: Vec<f32>,
    pub labels: Vec<String>,
    pub priors: Vec<Option<Vec<f32>>>,
    pub dim: usize,
    pub trained_through: i64,
}

impl TrainingData {
    /// The task's examples over their own labels.
    pub fn load(features: Features<'_>, task: TaskId) -> Result<Self> {
        Self::load_with_labels(features, task, &[])
    }

    /// The task's examples over their labels and `more_labels`.
    pub fn load_with_labels(features: Features<'_>, task: TaskId, more_labels: &[String]) -> Result<Self> {
        let store = features.store;
        let examples = store.examples(task)?;
        let descriptions = store.label_descriptions(task)?;
        let mut labels: Vec<String> =
            examples.iter().map(|e| e.label.clone()).chain(more_labels.iter().cloned()).collect();
        labels.sort();
        labels.dedup();
        let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        let vectors = features.stored(&texts)?;
        let described: Vec<(usize, &str)> = labels
            .iter()
            .enumerate()
            .filter_map(|(i, l)| descriptions.iter().find(|(d, _)| d == l).map(|(_, text)| (i, text.as_str())))
            .collect();
        let mut priors = vec![None; labels.len()];
        let description_texts: Vec<&str> = described.iter().map(|(_, t)| *t).collect();
        let description_vectors = features.stored(&description_texts)?;
        for ((i, _), row) in described.iter().zip(description_vectors.chunks_exact(features.dim())) {
            priors[*i] = Some(row.to_vec());
        }
        Ok(Self {
            texts: examples.iter().map(|e| e.text.clone()).collect(),
            described: described.iter().map(|&(i, text)| (i, text.to_string())).collect(),
            example_ids: examples.iter().map(|e| e.id).collect(),
            label_index: examples.iter().map(|e| labels.binary_search(&e.label).unwrap_or(0)).collect(),
            weights: examples.iter().map(|e| e.weight as f32).collect(),
            trained_through: examples.iter().map(|e| e.id).max().unwrap_or(0),
            features: vectors,
            labels,
            priors,
            dim: features.dim(),
        })
    }

    /// Per example: true when `head` was trained before it was added.
    pub fn unseen_by(&self, head: &HeadInfo) -> Vec<bool> {
        self.example_ids.iter().map(|&id| id > head.trained_through_example).collect()
    }

    /// The same examples over other features (and label-description priors).
    pub fn with_features(self, features: Vec<f32>, priors: Vec<Option<Vec<f32>>>) -> Self {
        let dim = if self.texts.is_empty() { self.dim } else { features.len() / self.texts.len() };
        Self { features, priors, dim, ..self }
    }

    /// `rows` of these examples over `features` (all rows' features).
    pub fn subset(&self, features: &[f32], rows: &[usize]) -> Self {
        Self {
            texts: rows.iter().map(|&r| self.texts[r].clone()).collect(),
            described: self.described.clone(),
            example_ids: rows.iter().map(|&r| self.example_ids[r]).collect(),
            features: rows_of(features, self.dim, rows),
            label_index: rows.iter().map(|&r| self.label_index[r]).collect(),
            weights: rows.iter().map(|&r| self.weights[r]).collect(),
            labels: self.labels.clone(),
            priors: self.priors.clone(),
            dim: self.dim,
            trained_through: self.trained_through,
        }
    }

    pub fn set<'a>(&'a self, fingerprint: &'a str) -> TrainingSet<'a> {
        TrainingSet {
            features: &self.features,
            dim: self.dim,
            labels: &self.label_index,
            weights: Some(&self.weights),
            label_names: &self.labels,
            priors: &self.priors,
            fingerprint,
        }
    }
}

/// The rows `rows` of a row-major matrix of width `dim`, in that order.
pub(super) fn rows_of(values: &[f32], dim: usize, rows: &[usize]) -> Vec<f32> {
    rows.iter().flat_map(|&r| values[r * dim..(r + 1) * dim].iter().copied()).collect()
}

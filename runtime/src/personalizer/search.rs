//! Exact semantic search over a task's documents: every document vector is
//! scored against the query (they are unit length, so the dot product is the
//! cosine), and the best `k` are kept.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::error::Result;
use crate::store::Document;

/// A ranked search result.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub key: String,
    pub text: String,
    pub metadata: Option<String>,
    /// Cosine similarity to the query.
    pub score: f32,
}

/// One task's documents in one contiguous row-major matrix.
pub(crate) struct Index {
    documents: Vec<Document>,
    vectors: Vec<f32>,
    dim: usize,
}

impl Index {
    pub fn new(documents: Vec<Document>, vectors: Vec<f32>, dim: usize) -> Self {
        Self { documents, vectors, dim }
    }

    pub fn top_k(&self, query: &[f32], k: usize) -> Vec<SearchHit> {
        let mut scored: Vec<(usize, f32)> = self
            .vectors
            .chunks_exact(self.dim)
            .enumerate()
            .map(|(i, row)| (i, row.iter().zip(query).map(|(a, b)| a * b).sum()))
            .collect();
        let k = k.min(scored.len());
        if k == 0 {
            return Vec::new();
        }
        scored.select_nth_unstable_by(k - 1, |a, b| b.1.total_cmp(&a.1));
        scored.truncate(k);
        scored.sort_by(|a, b| b.1.total_cmp(&a.1));
        scored
            .into_iter()
            .map(|(i, score)| {
                let d = &self.documents[i];
                SearchHit { key: d.key.clone(), text: d.text.clone(), metadata: d.metadata.clone(), score }
            })
            .collect()
    }
}

/// Built indexes per task, rebuilt after any change to the task's documents.
#[derive(Default)]
pub(crate) struct Indexes(Mutex<HashMap<String, Arc<Index>>>);

impl Indexes {
    pub fn get_or_build(&self, task: &str, build: impl FnOnce() -> Result<Index>) -> Result<Arc<Index>> {
        if let Some(index) = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(task) {
            return Ok(Arc::clone(index));
        }
        let index = Arc::new(build()?);
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(task.to_string(), Arc::clone(&index));
        Ok(index)
    }

    pub fn invalidate(&self, task: &str) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(task);
    }

    pub fn clear(&self) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clear();
    }
}

//! Sentence vectors through the store's feature cache. Texts a stored row
//! holds (examples, documents, descriptions, feedback queries) have their
//! vectors cached, so that forgetting the row removes them too; texts the
//! app only asks about (predictions, search queries) are read from the
//! cache when there and never written to it, so they leave no trace.

use std::collections::HashMap;

use crate::encoder::{EncodeListener, Encoder};
use crate::error::{Error, Result};
use crate::store::{Example, Store, VectorEncoding};

/// Texts embedded between two progress reports (and cancellation checks).
const PREPARE_CHUNK: usize = 1_024;

/// One model's vectors, cached in one store.
#[derive(Clone, Copy)]
pub(super) struct Features<'a> {
    pub store: &'a Store,
    pub encoder: &'a dyn Encoder,
}

impl<'a> Features<'a> {
    pub fn new(store: &'a Store, encoder: &'a dyn Encoder) -> Self {
        Self { store, encoder }
    }

    pub fn dim(&self) -> usize {
        self.encoder.dim()
    }

    pub fn fingerprint(&self) -> &'a str {
        self.encoder.fingerprint()
    }

    /// Vectors (`texts.len() × dim`) of texts a stored row holds: from the
    /// cache, or embedded now and cached.
    pub fn stored(&self, texts: &[&str]) -> Result<Vec<f32>> {
        self.lookup(texts, CacheNew::Yes)
    }

    /// Embeds and caches `texts` ahead of use, reporting `done` of
    /// `texts.len()` and honouring cancellation between chunks.
    pub fn prepare(&self, texts: &[&str], listener: &dyn EncodeListener) -> Result<()> {
        let mut done = 0;
        for chunk in texts.chunks(PREPARE_CHUNK) {
            if listener.is_cancelled() {
                return Err(Error::Cancelled);
            }
            self.stored(chunk)?;
            done += chunk.len();
            listener.on_progress(done, texts.len());
        }
        Ok(())
    }

    /// Vectors of texts the app only asks about: never written to the cache.
    pub fn transient(&self, texts: &[&str]) -> Result<Vec<f32>> {
        self.lookup(texts, CacheNew::No)
    }

    fn lookup(&self, texts: &[&str], cache_new: CacheNew) -> Result<Vec<f32>> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let fingerprint = self.fingerprint();
        let cached = self.store.cached_features(fingerprint, texts)?;
        let missing: Vec<&str> = texts.iter().zip(&cached).filter(|(_, c)| c.is_none()).map(|(t, _)| *t).collect();
        let mut fresh: HashMap<&str, Vec<f32>> = HashMap::new();
        if !missing.is_empty() {
            let embedded = self.encoder.embed(&missing)?;
            let entries: Vec<(&str, &[f32])> = missing.iter().copied().zip(embedded.rows()).collect();
            if cache_new == CacheNew::Yes {
                self.store.cache_features(fingerprint, &entries, VectorEncoding::F32)?;
            }
            fresh.extend(entries.into_iter().map(|(t, v)| (t, v.to_vec())));
        }
        Ok(texts.iter().zip(cached).flat_map(|(text, hit)| hit.unwrap_or_else(|| fresh[text].clone())).collect())
    }
}

/// Whether vectors embedded for a lookup are written to the cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CacheNew {
    Yes,
    No,
}

/// A task's stored texts with their vectors: feature extraction over the
/// user's own data, for a report or a model of the app's own.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskVectors {
    pub dim: usize,
    pub examples: Vec<Example>,
    /// One row of `dim` values per example, in the same order.
    pub example_vectors: Vec<f32>,
    /// Each described label and its description.
    pub descriptions: Vec<(String, String)>,
    /// One row per description, in the same order.
    pub description_vectors: Vec<f32>,
}

impl TaskVectors {
    /// The task's examples and descriptions with their cached vectors (the
    /// missing ones embedded and cached: they belong to stored rows).
    pub(super) fn load(features: Features<'_>, task: &str) -> Result<Self> {
        let id = features.store.task_id(task)?;
        let examples = features.store.examples(id)?;
        let descriptions = features.store.label_descriptions(id)?;
        let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        let described: Vec<&str> = descriptions.iter().map(|(_, d)| d.as_str()).collect();
        Ok(Self {
            dim: features.dim(),
            example_vectors: features.stored(&texts)?,
            description_vectors: features.stored(&described)?,
            examples,
            descriptions,
        })
    }
}

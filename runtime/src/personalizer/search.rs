//! A task's documents and feedback as the search engine wants them: the
//! documents' vectors from the feature cache, and the preference fitted to
//! the feedback (its queries' vectors cached with their rows).

use std::collections::HashMap;

use super::features::Features;
use crate::error::Result;
use crate::search::{Index, Preference, fit_preference};

/// The task's documents over their vectors.
pub(super) fn build_index(features: Features<'_>, task: &str) -> Result<Index> {
    let documents = features.store.documents(features.store.task_id(task)?)?;
    let texts: Vec<&str> = documents.iter().map(|d| d.text.as_str()).collect();
    let vectors = features.stored(&texts)?;
    Ok(Index::new(documents, vectors, features.dim()))
}

/// The user's preference, learned from the task's feedback on `index`'s documents.
pub(super) fn preference(features: Features<'_>, task: &str, index: &Index) -> Result<Preference> {
    let events = features.store.feedback(features.store.task_id(task)?)?;
    let queries: Vec<&str> = events.iter().filter_map(|e| e.query.as_deref()).collect();
    let vectors = features.stored(&queries)?;
    let query_vectors: HashMap<&str, Vec<f32>> =
        queries.iter().copied().zip(vectors.chunks_exact(features.dim()).map(<[f32]>::to_vec)).collect();
    let dim = features.dim();
    Ok(fit_preference(&events, dim, &|key| index.vector(key), &|text| query_vectors.get(text).cloned()))
}

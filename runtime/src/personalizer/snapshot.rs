//! What the facade's calls share: a call's view of the store through one
//! model snapshot, the head a task predicts with (decoded once and kept),
//! and ranking with the index and preference kept per task.

use std::sync::Arc;

use super::features::Features;
use super::lifecycle::{self, ActiveHead};
use super::{Personalizer, search};
use crate::encoder::Encoder;
use crate::error::Result;
use crate::search::SearchHit;

impl Personalizer {
    pub(super) fn features<'a>(&'a self, encoder: &'a dyn Encoder) -> Features<'a> {
        Features::new(&self.store, encoder)
    }

    /// The head a task predicts with now, decoded once and kept per task.
    pub(super) fn current_head(&self, task: &str, encoder: &dyn Encoder) -> Result<Arc<ActiveHead>> {
        if let Some(active) = self.caches.head(task, encoder.fingerprint()) {
            return Ok(active);
        }
        let active = lifecycle::current_head(self.features(encoder), task)?;
        Ok(self.caches.keep_head(task, active))
    }

    /// Search (with a query) or recommendation (without) over the task's
    /// documents, with the index and preference kept per task.
    pub(super) fn rank(&self, task: &str, query: Option<&str>, k: usize) -> Result<Vec<SearchHit>> {
        let encoder = self.encoder();
        let features = self.features(&*encoder);
        let index = self.caches.index(task, || search::build_index(features, task))?;
        let query = query.map(|q| features.transient(&[q])).transpose()?;
        let preference = self.caches.preference(task, || search::preference(features, task, &index))?;
        Ok(index.top_k(query.as_deref(), &preference, k))
    }
}

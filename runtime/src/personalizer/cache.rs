//! What the `Personalizer` keeps decoded in memory per task — the head
//! predictions come from, the search index and the learned ranking
//! preference — and which change drops which.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use super::lifecycle::ActiveHead;
use crate::error::Result;
use crate::search::{Index, Preference};

/// One value per task name, built on first use.
struct TaskMap<T>(Mutex<HashMap<String, Arc<T>>>);

impl<T> Default for TaskMap<T> {
    fn default() -> Self {
        Self(Mutex::new(HashMap::new()))
    }
}

impl<T> TaskMap<T> {
    fn get(&self, task: &str) -> Option<Arc<T>> {
        self.lock().get(task).cloned()
    }

    fn insert(&self, task: &str, value: T) -> Arc<T> {
        let value = Arc::new(value);
        self.lock().insert(task.to_string(), Arc::clone(&value));
        value
    }

    /// The task's value, built by `build` when there is none. Two callers
    /// may both build it; the last one is kept (building only reads).
    fn get_or_build(&self, task: &str, build: impl FnOnce() -> Result<T>) -> Result<Arc<T>> {
        match self.get(task) {
            Some(value) => Ok(value),
            None => Ok(self.insert(task, build()?)),
        }
    }

    fn remove(&self, task: &str) {
        self.lock().remove(task);
    }

    fn clear(&self) {
        self.lock().clear();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<T>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The per-task caches of one `Personalizer`.
#[derive(Default)]
pub(crate) struct Caches {
    heads: TaskMap<ActiveHead>,
    indexes: TaskMap<Index>,
    preferences: TaskMap<Preference>,
}

impl Caches {
    /// The task's prediction head, if decoded for the model `fingerprint`.
    pub fn head(&self, task: &str, fingerprint: &str) -> Option<Arc<ActiveHead>> {
        self.heads.get(task).filter(|active| active.head.fingerprint() == fingerprint)
    }

    pub fn keep_head(&self, task: &str, active: ActiveHead) -> Arc<ActiveHead> {
        self.heads.insert(task, active)
    }

    pub fn index(&self, task: &str, build: impl FnOnce() -> Result<Index>) -> Result<Arc<Index>> {
        self.indexes.get_or_build(task, build)
    }

    pub fn preference(&self, task: &str, build: impl FnOnce() -> Result<Preference>) -> Result<Arc<Preference>> {
        self.preferences.get_or_build(task, build)
    }

    /// Examples, label descriptions or heads changed: predictions change.
    pub fn examples_changed(&self, task: &str) {
        self.heads.remove(task);
    }

    /// Documents changed: the index and the preference over it.
    pub fn documents_changed(&self, task: &str) {
        self.indexes.remove(task);
        self.preferences.remove(task);
    }

    pub fn feedback_changed(&self, task: &str) {
        self.preferences.remove(task);
    }

    /// Anything of the task may have changed (forgetting).
    pub fn task_changed(&self, task: &str) {
        self.examples_changed(task);
        self.documents_changed(task);
    }

    /// Every task may have changed (forgetting everything, a new model).
    pub fn clear(&self) {
        self.heads.clear();
        self.indexes.clear();
        self.preferences.clear();
    }
}

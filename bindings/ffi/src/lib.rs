//! Attune for apps: the runtime's `Personalizer` exported through uniffi to
//! Kotlin (Android), Swift (iOS) and Python.
//!
//! Every exported object holds a runtime object as `inner` and every method
//! is a short delegate; the only code here converts values at the boundary.
//!
//! Threading: every object is `Send + Sync` and every method may be called
//! from any thread at once. Calls marked *blocking* run the model or train
//! and can take from milliseconds to seconds: never call them on a UI thread.

mod error;
mod progress;
mod records;

use std::path::Path;
use std::sync::Arc;

pub use error::AttuneError;
pub use progress::{CancelToken, Progress, ProgressListener};
pub use records::*;

uniffi::setup_scaffolding!();

/// On-device personalization for one app: one per database, shared by all threads.
#[derive(Debug, uniffi::Object)]
pub struct Personalizer {
    inner: attune::Personalizer,
}

#[uniffi::export]
impl Personalizer {
    /// Opens (or creates) the database and loads the model once. *Blocking*
    /// (the model loads in under a second).
    #[uniffi::constructor]
    pub fn open(config: Config) -> Result<Arc<Self>, AttuneError> {
        Ok(Arc::new(Self { inner: attune::Personalizer::open(&config.try_into()?)? }))
    }

    /// Width of the sentence vectors of the loaded model.
    pub fn dimension(&self) -> u32 {
        use attune::Encoder;
        self.inner.encoder().dim() as u32
    }

    /// Identity of the loaded model; heads and cached vectors are bound to it.
    pub fn model_fingerprint(&self) -> String {
        use attune::Encoder;
        self.inner.encoder().fingerprint().to_string()
    }

    /// Adds labelled examples to `task` (created if needed). *Blocking*: embeds them.
    pub fn add_examples(&self, task: String, examples: Vec<LabelledText>) -> Result<AddResult, AttuneError> {
        let examples: Vec<attune::NewExample> = examples.into_iter().map(Into::into).collect();
        Ok(self.inner.add_examples(&task, &examples)?.into())
    }

    /// Imports a CSV (header with `text` and `label`) or JSON Lines file into
    /// `task`; a file with bad lines is refused whole. *Blocking*.
    pub fn import_file(
        &self,
        task: String,
        path: String,
        listener: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<AddResult, AttuneError> {
        let observer = progress::Observer::new(listener, cancel);
        let columns = attune::Columns::default();
        let result = self.inner.import_file(&task, Path::new(&path), None, &columns, &observer);
        observer.finish(result).map(Into::into)
    }

    /// Labels of `task` with their example counts.
    pub fn labels(&self, task: String) -> Result<Vec<LabelCount>, AttuneError> {
        Ok(self.inner.labels(&task)?.into_iter().map(Into::into).collect())
    }

    /// Describes a label in words: zero-shot predictions before any example.
    /// *Blocking*: embeds the description.
    pub fn describe_label(&self, task: String, label: String, description: String) -> Result<(), AttuneError> {
        Ok(self.inner.describe_label(&task, &label, &description)?)
    }

    /// Trains a head; it becomes active only if it is not worse than the
    /// active one. *Blocking* (up to seconds): progress goes to `listener`
    /// on the calling thread; `cancel` stops it between epochs.
    pub fn train(
        &self,
        task: String,
        settings: TrainSettings,
        listener: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<TrainSummary, AttuneError> {
        let observer = progress::Observer::new(listener, cancel);
        let options = settings.into();
        let result = self.inner.train(&task, &options, &observer);
        observer.finish(result).map(Into::into)
    }

    /// Top-`top_k` (at least 1) labels with calibrated probabilities per text, and whether
    /// the head abstains ("none of these"). *Blocking*: embeds new texts.
    pub fn predict(&self, task: String, texts: Vec<String>, top_k: u32) -> Result<Vec<Prediction>, AttuneError> {
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let (predictions, source) = self.inner.predict(&task, &texts, top_k as usize)?;
        Ok(predictions.into_iter().map(|p| Prediction::new(p, source)).collect())
    }

    /// Scores the task's current head on labelled texts. *Blocking*.
    pub fn evaluate(&self, task: String, examples: Vec<LabelledText>) -> Result<Metrics, AttuneError> {
        let examples: Vec<(String, String)> = examples.into_iter().map(|e| (e.text, e.label)).collect();
        Ok(self.inner.evaluate(&task, &examples)?.into())
    }

    /// Forgets data for good: rows, cached vectors and heads trained on them;
    /// the task's head is retrained from what remains (privately for a
    /// private task, whose spent budget leaves it on its label
    /// descriptions instead: `ForgetSummary.retrain` says which). `task` is ignored for
    /// `ForgetScope::Everything`. *Blocking*.
    pub fn forget(&self, task: Option<String>, scope: ForgetScope) -> Result<ForgetSummary, AttuneError> {
        Ok(self.inner.forget(task.as_deref(), &scope.into())?.into())
    }

    /// What `task` holds.
    pub fn stats(&self, task: String) -> Result<TaskStats, AttuneError> {
        Ok(self.inner.stats(&task)?.into())
    }

    /// Every stored head version of `task`, oldest first.
    pub fn heads(&self, task: String) -> Result<Vec<HeadVersion>, AttuneError> {
        Ok(self.inner.heads(&task)?.into_iter().map(Into::into).collect())
    }

    /// Makes an earlier head version active again.
    pub fn rollback(&self, task: String, version: u32) -> Result<(), AttuneError> {
        Ok(self.inner.rollback(&task, version)?)
    }

    /// Adds or replaces documents for search (by key). *Blocking*: embeds them.
    pub fn add_documents(&self, task: String, documents: Vec<Document>) -> Result<u64, AttuneError> {
        let documents: Vec<attune::NewDocument> = documents.into_iter().map(Into::into).collect();
        Ok(self.inner.add_documents(&task, &documents)?)
    }

    /// The `k` best documents for `query`, re-ranked by the user's feedback.
    /// *Blocking*: embeds the query.
    pub fn search(&self, task: String, query: String, k: u32) -> Result<Vec<SearchResult>, AttuneError> {
        Ok(self.inner.search(&task, &query, k as usize)?.into_iter().map(Into::into).collect())
    }

    /// The `k` documents the user most likely wants, from feedback alone.
    pub fn recommend(&self, task: String, k: u32) -> Result<Vec<SearchResult>, AttuneError> {
        Ok(self.inner.recommend(&task, k as usize)?.into_iter().map(Into::into).collect())
    }

    /// Records what the user did with a result; returns the event's id.
    pub fn record_feedback(&self, task: String, feedback: Feedback) -> Result<i64, AttuneError> {
        Ok(self.inner.record_feedback(&task, &feedback.into())?)
    }

    /// Sentence vectors for a model of the app's own; nothing is stored. *Blocking*.
    pub fn embed(
        &self,
        texts: Vec<String>,
        listener: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<Vec<Vec<f32>>, AttuneError> {
        let observer = progress::Observer::new(listener, cancel);
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        let result = self.inner.embed(&texts, &observer);
        observer.finish(result).map(attune::Embeddings::into_vecs)
    }

    /// Moves the database to the model in `model_dir` (an app update that
    /// ships a new backbone): re-embeds every stored text and retrains each
    /// task's head while the current model keeps answering other threads,
    /// then switches. Cancelled or interrupted, the next call resumes.
    /// *Blocking* (minutes on large stores): run it in the background.
    pub fn upgrade_model(
        &self,
        model_dir: String,
        listener: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<UpgradeSummary, AttuneError> {
        let observer = progress::Observer::new(listener, cancel);
        // The new model runs as the current one does (backend, threads, batch).
        let options = self.inner.encoder().options().clone();
        let result = self.inner.upgrade_model(Path::new(&model_dir), &options, &observer);
        observer.finish(result).map(Into::into)
    }

    /// Writes everything the database holds about the user as JSON to `path`
    /// (the user's right to a copy). *Blocking*.
    pub fn export_json(&self, path: String) -> Result<(), AttuneError> {
        Ok(self.inner.export_json_file(Path::new(&path))?)
    }
}

//! Attune for apps: the runtime's `Personalizer` exported through uniffi to
//! Kotlin (Android), Swift (iOS) and Python.
//!
//! Every exported object holds a runtime object and every method is a short
//! delegate; the only code here converts values at the boundary and runs
//! long calls off the app's threads.
//!
//! Calls that run the model, train or rewrite the database are `async`: a
//! Kotlin `suspend fun`, a Swift `async throws` function, a Python
//! coroutine. Each runs on a thread of its own, so the caller's thread
//! (UI thread, event loop) is never blocked; cancelling the coroutine or
//! task stops the work at its next check, with nothing half-written (Swift:
//! pass a `CancelToken` to the long calls, see there). The
//! remaining calls read a few rows and return at once. Every object is
//! `Send + Sync`: any thread may call any method at any time.

mod background;
mod error;
mod federated;
mod progress;
mod records;
mod session;

use std::path::Path;
use std::sync::Arc;

pub use error::AttuneError;
pub use federated::*;
pub use progress::{CancelToken, Progress, ProgressListener};
pub use records::*;
use session::Session;

uniffi::setup_scaffolding!();

/// A loaded backbone, shareable by many personalizers (`Personalizer.open_with_model`).
#[derive(Debug, uniffi::Object)]
pub struct Model {
    encoder: Arc<attune::OnnxEncoder>,
    /// How it runs; an upgrade loads the next model the same way.
    options: attune::EncoderOptions,
}

#[uniffi::export]
impl Model {
    /// Loads the model in `model_dir`; `backend`, `threads` and
    /// `ort_library` as in `Config`.
    #[uniffi::constructor(default(backend = None, threads = None, ort_library = None))]
    pub async fn load(
        model_dir: String,
        backend: Option<Backend>,
        threads: Option<u32>,
        ort_library: Option<String>,
    ) -> Result<Arc<Self>, AttuneError> {
        let options = records::encoder_options(backend, threads, ort_library);
        let load_options = options.clone();
        let load = move || attune::OnnxEncoder::load(Path::new(&model_dir), &load_options);
        let encoder = background::run_to_end(load).await??;
        Ok(Arc::new(Self { encoder: Arc::new(encoder), options }))
    }

    /// Identity of the model; shared models and heads are bound to it.
    pub fn fingerprint(&self) -> String {
        use attune::Encoder;
        self.encoder.fingerprint().to_string()
    }

    /// Width of its sentence vectors.
    pub fn dimension(&self) -> u32 {
        use attune::Encoder;
        self.encoder.dim() as u32
    }
}

/// On-device personalization for one app: one per database, shared by all
/// threads. Close it when done (`close()`; `shutdown()` in Kotlin, where
/// `close()` is `AutoCloseable`'s).
#[derive(Debug, uniffi::Object)]
pub struct Personalizer {
    session: Arc<Session>,
    /// How the model runs; an upgrade loads the next model the same way.
    encoder_options: attune::EncoderOptions,
}

#[uniffi::export]
impl Personalizer {
    /// Opens (or creates) the database and loads the model once (under a
    /// second for the default model).
    #[uniffi::constructor]
    pub async fn open(config: Config) -> Result<Arc<Self>, AttuneError> {
        let config: attune::PersonalizerConfig = config.try_into()?;
        let encoder_options = config.encoder.clone();
        let runtime = background::run_to_end(move || attune::Personalizer::open(&config)).await??;
        Ok(Arc::new(Self { session: Session::new(runtime), encoder_options }))
    }

    /// Opens (or creates) the database with a model already loaded by
    /// `Model.load`: many databases (accounts, simulated users) share one
    /// copy of the backbone.
    #[uniffi::constructor(default(encryption_key = None))]
    pub async fn open_with_model(
        database_path: String,
        model: Arc<Model>,
        encryption_key: Option<EncryptionKey>,
    ) -> Result<Arc<Self>, AttuneError> {
        let key = encryption_key.map(attune::EncryptionKey::try_from).transpose()?;
        let encoder: Arc<dyn attune::Encoder> = model.encoder.clone();
        let open = move || attune::Personalizer::open_with_encoder(Path::new(&database_path), key, encoder);
        let runtime = background::run_to_end(open).await??;
        Ok(Arc::new(Self { session: Session::new(runtime), encoder_options: model.options.clone() }))
    }

    /// Width of the sentence vectors of the loaded model.
    pub fn dimension(&self) -> Result<u32, AttuneError> {
        self.session.now(|p| Ok(p.encoder().dim() as u32))
    }

    /// Identity of the loaded model; heads and cached vectors are bound to it.
    pub fn model_fingerprint(&self) -> Result<String, AttuneError> {
        self.session.now(|p| Ok(p.encoder().fingerprint().to_string()))
    }

    /// Adds labelled examples to `task` (created if needed) and embeds them.
    pub async fn add_examples(&self, task: String, examples: Vec<LabelledText>) -> Result<AddResult, AttuneError> {
        let examples: Vec<attune::NewExample> = examples.into_iter().map(Into::into).collect();
        self.session.background(None, None, move |p, _| p.add_examples(&task, &examples).map(Into::into)).await
    }

    /// Imports a CSV (header with `text` and `label`) or JSON Lines file into
    /// `task`; a file with bad lines is refused whole. Cancelled before it
    /// writes (files of up to 8,192 rows are written at the end), the
    /// database is as before; otherwise `ImportInterrupted` says what is
    /// stored, and importing again resumes.
    #[uniffi::method(default(listener = None, cancel = None))]
    pub async fn import_file(
        &self,
        task: String,
        path: String,
        listener: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<AddResult, AttuneError> {
        self.session
            .background(listener, cancel, move |p, observer| {
                let columns = attune::Columns::default();
                p.import_file(&task, Path::new(&path), None, &columns, observer).map(Into::into)
            })
            .await
    }

    /// Labels of `task` with their example counts.
    pub fn labels(&self, task: String) -> Result<Vec<LabelCount>, AttuneError> {
        self.session.now(|p| Ok(p.labels(&task)?.into_iter().map(Into::into).collect()))
    }

    /// Describes a label in words: zero-shot predictions before any example.
    pub async fn describe_label(&self, task: String, label: String, description: String) -> Result<(), AttuneError> {
        self.session.background(None, None, move |p, _| p.describe_label(&task, &label, &description)).await
    }

    /// Trains a head; it becomes active only if it is not worse than the
    /// active one. `settings` default to the automatic choice; progress goes
    /// to `listener`; a cancelled call stores nothing.
    #[uniffi::method(default(listener = None, cancel = None, settings))]
    pub async fn train(
        &self,
        task: String,
        settings: TrainSettings,
        listener: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<TrainSummary, AttuneError> {
        let options = settings.into();
        self.session
            .background(listener, cancel, move |p, observer| p.train(&task, &options, observer).map(Into::into))
            .await
    }

    /// Top-`top_k` (at least 1) labels with calibrated probabilities per
    /// text, and whether the head abstains ("none of these").
    #[uniffi::method(default(top_k = 3))]
    pub async fn predict(&self, task: String, texts: Vec<String>, top_k: u32) -> Result<Vec<Prediction>, AttuneError> {
        self.session
            .background(None, None, move |p, _| {
                let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                let (predictions, source) = p.predict(&task, &texts, top_k as usize)?;
                Ok(predictions.into_iter().map(|prediction| Prediction::new(prediction, source)).collect())
            })
            .await
    }

    /// `predict` for one text.
    #[uniffi::method(default(top_k = 3))]
    pub async fn predict_one(&self, task: String, text: String, top_k: u32) -> Result<Prediction, AttuneError> {
        self.session
            .background(None, None, move |p, _| {
                let (mut predictions, source) = p.predict(&task, &[text.as_str()], top_k as usize)?;
                let prediction = predictions.pop().ok_or_else(|| attune::Error::Inference("no prediction".into()))?;
                Ok(Prediction::new(prediction, source))
            })
            .await
    }

    /// Scores the task's current head on labelled texts.
    pub async fn evaluate(&self, task: String, examples: Vec<LabelledText>) -> Result<Metrics, AttuneError> {
        let examples: Vec<(String, String)> = examples.into_iter().map(|e| (e.text, e.label)).collect();
        self.session.background(None, None, move |p, _| p.evaluate(&task, &examples).map(Into::into)).await
    }

    /// Forgets data for good: rows, cached vectors and heads trained on them;
    /// the task's head is retrained from what remains (privately for a
    /// private task, whose spent budget leaves it on its label
    /// descriptions instead: `ForgetSummary.retrain` says which). `task` is
    /// ignored for `ForgetScope::Everything`.
    pub async fn forget(&self, task: Option<String>, scope: ForgetScope) -> Result<ForgetSummary, AttuneError> {
        let scope = scope.into();
        self.session.background(None, None, move |p, _| p.forget(task.as_deref(), &scope).map(Into::into)).await
    }

    /// What `task` holds.
    pub fn stats(&self, task: String) -> Result<TaskStats, AttuneError> {
        self.session.now(|p| Ok(p.stats(&task)?.into()))
    }

    /// Every stored head version of `task`, oldest first: the 5 newest,
    /// the active one and the latest shared one (older ones are deleted).
    pub fn heads(&self, task: String) -> Result<Vec<HeadVersion>, AttuneError> {
        self.session.now(|p| Ok(p.heads(&task)?.into_iter().map(Into::into).collect()))
    }

    /// Makes an earlier head version active again (one still stored).
    pub fn rollback(&self, task: String, version: u32) -> Result<(), AttuneError> {
        self.session.now(|p| Ok(p.rollback(&task, version)?))
    }

    /// Adds or replaces documents for search (by key) and embeds them;
    /// returns how many were stored.
    pub async fn add_documents(&self, task: String, documents: Vec<Document>) -> Result<u64, AttuneError> {
        let documents: Vec<attune::NewDocument> = documents.into_iter().map(Into::into).collect();
        self.session.background(None, None, move |p, _| p.add_documents(&task, &documents)).await
    }

    /// The `k` best documents for `query`, re-ranked by the user's feedback.
    #[uniffi::method(default(k = 10))]
    pub async fn search(&self, task: String, query: String, k: u32) -> Result<Vec<SearchResult>, AttuneError> {
        self.session
            .background(None, None, move |p, _| {
                Ok(p.search(&task, &query, k as usize)?.into_iter().map(Into::into).collect())
            })
            .await
    }

    /// The `k` documents the user most likely wants, from feedback alone.
    #[uniffi::method(default(k = 10))]
    pub async fn recommend(&self, task: String, k: u32) -> Result<Vec<SearchResult>, AttuneError> {
        self.session
            .background(None, None, move |p, _| {
                Ok(p.recommend(&task, k as usize)?.into_iter().map(Into::into).collect())
            })
            .await
    }

    /// Records what the user did with a result (embedding its query);
    /// returns the event's id.
    pub async fn record_feedback(&self, task: String, feedback: Feedback) -> Result<i64, AttuneError> {
        let feedback = feedback.into();
        self.session.background(None, None, move |p, _| p.record_feedback(&task, &feedback)).await
    }

    /// Sentence vectors for a model of the app's own, one per text; nothing
    /// is stored.
    #[uniffi::method(default(listener = None, cancel = None))]
    pub async fn embed(
        &self,
        texts: Vec<String>,
        listener: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<Vec<Vec<f32>>, AttuneError> {
        self.session
            .background(listener, cancel, move |p, observer| {
                let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
                p.embed(&texts, observer).map(attune::Embeddings::into_vecs)
            })
            .await
    }

    /// Moves the database to the model in `model_dir` (an app update that
    /// ships a new backbone): re-embeds every stored text and retrains each
    /// task's head while the current model keeps answering other calls,
    /// then switches. Cancelled or interrupted, the next call resumes. The
    /// new model runs as the current one does (backend, threads, batch).
    #[uniffi::method(default(listener = None, cancel = None))]
    pub async fn upgrade_model(
        &self,
        model_dir: String,
        listener: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<UpgradeSummary, AttuneError> {
        let options = self.encoder_options.clone();
        self.session
            .background(listener, cancel, move |p, observer| {
                p.upgrade_model(Path::new(&model_dir), &options, observer).map(Into::into)
            })
            .await
    }

    /// Writes everything the database holds about the user as JSON to `path`
    /// (the user's right to a copy).
    pub async fn export_json(&self, path: String) -> Result<(), AttuneError> {
        self.session.background(None, None, move |p, _| p.export_json_file(Path::new(&path))).await
    }

    /// Trains `shared` on the task's examples of its labels for one
    /// federated round and returns the update; stores nothing. A task with
    /// no example of the shared labels is `NotTrained`.
    #[uniffi::method(default(listener = None, cancel = None, settings))]
    pub async fn federated_fit(
        &self,
        task: String,
        shared: SharedModel,
        settings: FederatedSettings,
        listener: Option<Arc<dyn ProgressListener>>,
        cancel: Option<Arc<CancelToken>>,
    ) -> Result<FederatedUpdate, AttuneError> {
        let shared = attune::SharedModel::try_from(shared)?;
        let options = settings.try_into()?;
        self.session
            .background(listener, cancel, move |p, observer| {
                p.federated_fit(&task, &shared, &options, observer).map(Into::into)
            })
            .await
    }

    /// Metrics of `shared` on the task's examples; nothing is trained or stored.
    pub async fn federated_evaluate(&self, task: String, shared: SharedModel) -> Result<Metrics, AttuneError> {
        let shared = attune::SharedModel::try_from(shared)?;
        self.session.background(None, None, move |p, _| p.federated_evaluate(&task, &shared).map(Into::into)).await
    }

    /// Keeps `shared` on the device: predictions follow personal head →
    /// shared head → prototypes → zero-shot, and `train` starts from it.
    pub async fn adopt_shared(&self, task: String, shared: SharedModel) -> Result<AdoptSummary, AttuneError> {
        let shared = attune::SharedModel::try_from(shared)?;
        self.session.background(None, None, move |p, _| p.adopt_shared(&task, &shared).map(Into::into)).await
    }

    /// Stops every call in flight at its next check (each fails with
    /// `Cancelled`, storing nothing half-done); the personalizer stays open.
    pub fn interrupt(&self) {
        self.session.interrupt();
    }

    /// Stops the calls in flight, waits for them (until their next check),
    /// and closes the database; every later call fails with `Closed`.
    /// Closing twice is harmless. Called from a progress listener, it does
    /// not wait: the database closes when that call ends.
    pub fn close(&self) {
        self.session.close();
    }
}

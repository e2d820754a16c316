//! The `Personalizer`: the one object apps use. It holds the user's store,
//! the model and what is kept decoded per task; each call takes one
//! snapshot of the model and hands the work to the service with that job:
//! `lifecycle` (which head predicts), `training`, `forget`, `search`,
//! `import`, `federated` and `upgrade`, all of them reading vectors through
//! `features` (the store's feature cache).
//!
//! A task trained with differential privacy stays private: every head made
//! for it afterwards is private too, or it falls back to its label
//! descriptions (`privacy`).

mod adaptation;
mod cache;
mod features;
mod federated;
mod forget;
mod head_versions;
mod import;
mod lifecycle;
mod privacy;
mod search;
mod snapshot;
mod training;
mod training_data;
mod upgrade;

use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

pub use features::TaskVectors;
pub use federated::{AdoptOutcome, FederatedUpdate};
pub use forget::{ForgetReport, Retrain};
pub use head_versions::{HeadVersion, PrivacyBound};
pub use lifecycle::PredictionSource;
pub use training::TrainOutcome;
pub use upgrade::{TaskUpgrade, UpgradeOutcome};

use crate::encoder::{Embeddings, EncodeListener, Encoder, EncoderOptions, OnnxEncoder, SILENT};
use crate::error::{Error, Result};
use crate::evaluation::Metrics;
use crate::federated::SharedModel;
use crate::heads::Prediction;
use crate::import::{Columns, ImportFormat};
use crate::search::SearchHit;
use crate::store::{
    AddOutcome, EncryptionKey, Example, Forget, LabelCount, NewDocument, NewExample, NewFeedback, Store, StoreOptions,
    TaskInfo,
};
use crate::training::{FederatedOptions, TrainListener, TrainOptions};
use training::Activation;

/// Where the user's data and the model are, and how to run the model.
#[derive(Debug, Clone)]
pub struct PersonalizerConfig {
    pub database: PathBuf,
    pub model_dir: PathBuf,
    pub encoder: EncoderOptions,
    pub encryption_key: Option<EncryptionKey>,
}

/// On-device personalization for one app: `Send + Sync`, share it in an `Arc`.
pub struct Personalizer {
    store: Store,
    /// Swapped as a whole by a model upgrade; every call works with one snapshot.
    encoder: upgrade::ModelSlot,
    caches: cache::Caches,
}

impl std::fmt::Debug for Personalizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Personalizer")
            .field("store", &self.store)
            .field("model", &self.encoder().model_id())
            .finish_non_exhaustive()
    }
}

impl Personalizer {
    /// Opens the database and loads the model (once; it is shared by all calls).
    pub fn open(config: &PersonalizerConfig) -> Result<Self> {
        let encoder = Arc::new(OnnxEncoder::load(&config.model_dir, &config.encoder)?);
        Self::open_with_encoder(&config.database, config.encryption_key.clone(), encoder)
    }

    /// Opens the database with an encoder already loaded, so that many
    /// databases (several accounts in one app, simulated users) share one
    /// copy of the backbone; or with an encoder of the app's own.
    pub fn open_with_encoder(
        database: &Path,
        encryption_key: Option<EncryptionKey>,
        encoder: Arc<dyn Encoder>,
    ) -> Result<Self> {
        let options = StoreOptions { encryption_key, ..StoreOptions::default() };
        let store = Store::open(database, &options)?;
        Ok(Self { store, encoder: RwLock::new(encoder), caches: cache::Caches::default() })
    }

    /// The model in use now (a model upgrade may replace it).
    pub fn encoder(&self) -> Arc<dyn Encoder> {
        Arc::clone(&self.encoder.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Adds labelled examples to `task` (created if needed) and embeds them.
    pub fn add_examples(&self, task: &str, examples: &[NewExample]) -> Result<AddOutcome> {
        let id = self.store.ensure_task(task)?;
        let outcome = self.store.add_examples(id, examples)?;
        self.caches.examples_changed(task);
        let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        self.features(&*self.encoder()).stored(&texts)?;
        Ok(outcome)
    }

    /// Streams examples into `task` in committed batches (see `Store::import_examples`).
    pub fn import_examples<I>(&self, task: &str, rows: I, on_batch: &mut dyn FnMut(&AddOutcome)) -> Result<AddOutcome>
    where
        I: IntoIterator<Item = Result<NewExample>>,
    {
        let id = self.store.ensure_task(task)?;
        let outcome = self.store.import_examples(id, rows, 1_000, on_batch);
        self.caches.examples_changed(task);
        outcome
    }

    /// Reads a CSV or JSON Lines file of labelled texts into `task` with
    /// their vectors, resumably: a cancelled or failed import can be run again. Blocking.
    pub fn import_file(
        &self,
        task: &str,
        path: &Path,
        format: Option<ImportFormat>,
        columns: &Columns,
        listener: &dyn EncodeListener,
    ) -> Result<AddOutcome> {
        let encoder = self.encoder();
        let outcome = import::import_file(self.features(&*encoder), task, path, format, columns, listener);
        self.caches.examples_changed(task);
        outcome
    }

    /// Embeds and caches `texts` now (e.g. after a bulk import), so training
    /// and prediction find them ready. Blocking.
    pub fn prepare_features(&self, texts: &[&str]) -> Result<()> {
        self.prepare_features_with(texts, &SILENT)
    }

    /// [`Self::prepare_features`] with progress (`done` of `texts.len()`) and cancellation.
    pub fn prepare_features_with(&self, texts: &[&str], listener: &dyn EncodeListener) -> Result<()> {
        self.features(&*self.encoder()).prepare(texts, listener)
    }

    /// Sentence vectors for `texts`, for a model of the app's own (feature
    /// extraction). Nothing is stored. Blocking.
    pub fn embed(&self, texts: &[&str], listener: &dyn EncodeListener) -> Result<Embeddings> {
        self.encoder().embed_with(texts, listener)
    }

    pub fn labels(&self, task: &str) -> Result<Vec<LabelCount>> {
        self.store.label_counts(self.store.task_id(task)?)
    }

    /// The task's labelled examples, oldest first.
    pub fn examples(&self, task: &str) -> Result<Vec<Example>> {
        self.store.examples(self.store.task_id(task)?)
    }

    /// The task's examples and label descriptions with their vectors.
    pub fn task_vectors(&self, task: &str) -> Result<TaskVectors> {
        TaskVectors::load(self.features(&*self.encoder()), task)
    }

    /// Describes a label in words: zero-shot prediction before any example,
    /// and a head start for training afterwards.
    pub fn describe_label(&self, task: &str, label: &str, description: &str) -> Result<()> {
        let id = self.store.ensure_task(task)?;
        self.store.set_label_description(id, label, description)?;
        self.caches.examples_changed(task);
        Ok(())
    }

    /// Trains a head on the task's examples; it becomes active only if it is
    /// not worse than the active one, judged on examples neither was trained
    /// on (docs/training.md, "Promotion"). A task trained
    /// privately before is trained privately again, within what is left of
    /// its budget. Blocks for up to seconds: call it off the main thread.
    pub fn train(&self, task: &str, options: &TrainOptions, listener: &dyn TrainListener) -> Result<TrainOutcome> {
        let id = self.store.task_id(task)?;
        let encoder = self.encoder();
        let outcome =
            training::train_and_store(self.features(&*encoder), id, options, listener, Activation::IfPromoted);
        self.caches.examples_changed(task);
        outcome
    }

    /// Top-`k` labels (`k` ≥ 1) with calibrated probabilities and an abstain flag, per text.
    pub fn predict(&self, task: &str, texts: &[&str], top_k: usize) -> Result<(Vec<Prediction>, PredictionSource)> {
        if top_k == 0 {
            return Err(Error::InvalidInput("top_k must be at least 1".into()));
        }
        let encoder = self.encoder();
        let active = self.current_head(task, &*encoder)?;
        Ok((active.predict(self.features(&*encoder), texts, top_k)?, active.source))
    }

    /// Scores the task's current head on labelled texts; labels it does not
    /// know count as errors.
    pub fn evaluate(&self, task: &str, examples: &[(String, String)]) -> Result<Metrics> {
        let encoder = self.encoder();
        self.current_head(task, &*encoder)?.evaluate(self.features(&*encoder), examples)
    }

    /// Forgets data (see [`Forget`]) and compacts the file. A task whose
    /// active head was trained on forgotten data is retrained from what
    /// remains (privately for a private task, or left on its label
    /// descriptions when its budget is spent), so nothing predicts from
    /// forgotten data. Blocking.
    pub fn forget(&self, task: Option<&str>, what: &Forget) -> Result<ForgetReport> {
        let drop_decoded = || match task {
            Some(name) => self.caches.task_changed(name),
            None => self.caches.clear(),
        };
        let encoder = self.encoder();
        let report = forget::forget(self.features(&*encoder), task, what, &drop_decoded);
        drop_decoded();
        report
    }

    /// Writes everything stored about the user as JSON to `path` (the
    /// user's copy of their data). Blocking.
    pub fn export_json_file(&self, path: &Path) -> Result<()> {
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut out = std::io::BufWriter::new(file);
        self.store.export_json(&mut out)?;
        std::io::Write::flush(&mut out).map_err(|e| Error::io(path, e))
    }

    pub fn stats(&self, task: &str) -> Result<TaskInfo> {
        self.store.task(task)
    }

    /// Every task, with its counts.
    pub fn tasks(&self) -> Result<Vec<TaskInfo>> {
        self.store.tasks()
    }

    pub fn heads(&self, task: &str) -> Result<Vec<HeadVersion>> {
        self.store.heads(self.store.task_id(task)?)?.into_iter().map(HeadVersion::try_from).collect()
    }

    /// Makes an earlier head version active again (one still stored: see
    /// `KEPT_HEAD_VERSIONS`). A private task only goes back to a private head.
    pub fn rollback(&self, task: &str, version: u32) -> Result<()> {
        let id = self.store.task_id(task)?;
        privacy::check_rollback(&self.store, id, version)?;
        self.store.activate_head(id, version)?;
        self.caches.examples_changed(task);
        Ok(())
    }

    /// Adds or replaces documents for search; each is embedded once.
    pub fn add_documents(&self, task: &str, documents: &[NewDocument]) -> Result<u64> {
        let id = self.store.ensure_task(task)?;
        let changed = self.store.upsert_documents(id, documents)?;
        self.caches.documents_changed(task);
        let texts: Vec<&str> = documents.iter().map(|d| d.text.as_str()).collect();
        self.features(&*self.encoder()).stored(&texts)?;
        Ok(changed)
    }

    /// The `k` best documents for `query`: exact cosine over all of the
    /// task's documents, re-ranked by the preference learned from the user's
    /// feedback (with no feedback, plain semantic order).
    pub fn search(&self, task: &str, query: &str, k: usize) -> Result<Vec<SearchHit>> {
        self.rank(task, Some(query), k)
    }

    /// The `k` documents the user most likely wants, from feedback alone
    /// (without feedback: the oldest documents, in order).
    pub fn recommend(&self, task: &str, k: usize) -> Result<Vec<SearchHit>> {
        self.rank(task, None, k)
    }

    /// Records what the user did with a search result or recommendation.
    pub fn record_feedback(&self, task: &str, feedback: &NewFeedback) -> Result<i64> {
        let id = self.store.record_feedback(self.store.task_id(task)?, feedback)?;
        self.caches.feedback_changed(task);
        Ok(id)
    }

    /// Trains `shared` on the task's examples (see [`FederatedOptions`]) and
    /// returns the update; stores nothing. A task without an example of the
    /// shared labels is `Error::NotTrained`.
    pub fn federated_fit(
        &self,
        task: &str,
        shared: &SharedModel,
        options: &FederatedOptions,
        listener: &dyn TrainListener,
    ) -> Result<FederatedUpdate> {
        federated::fit(self.features(&*self.encoder()), task, shared, options, listener)
    }

    /// Metrics of `shared` on the task's examples of its labels; nothing
    /// is trained or stored.
    pub fn federated_evaluate(&self, task: &str, shared: &SharedModel) -> Result<Metrics> {
        federated::evaluate_shared(self.features(&*self.encoder()), task, shared)
    }

    /// Keeps `shared` on the device as a head of `task` (created if
    /// needed). Predictions follow personal head → shared head →
    /// prototypes → zero-shot; `train` then starts from the shared head and
    /// keeps its labels, and promotion weighs the personal head against it.
    pub fn adopt_shared(&self, task: &str, shared: &SharedModel) -> Result<AdoptOutcome> {
        let outcome = federated::adopt(self.features(&*self.encoder()), task, shared);
        self.caches.examples_changed(task);
        outcome
    }

    /// Moves everything to the model in `model_dir`: every stored text
    /// embedded with it and each task's head retrained, while the current
    /// model keeps answering; then one switch of model and heads together.
    /// Progress is over the texts to embed; a cancelled or crashed upgrade
    /// resumes. Blocking, for minutes on large stores.
    pub fn upgrade_model(
        &self,
        model_dir: &Path,
        options: &EncoderOptions,
        listener: &dyn EncodeListener,
    ) -> Result<UpgradeOutcome> {
        self.upgrade_encoder(Arc::new(OnnxEncoder::load(model_dir, options)?), listener)
    }

    /// [`Self::upgrade_model`] to an encoder already loaded.
    pub fn upgrade_encoder(&self, target: Arc<dyn Encoder>, listener: &dyn EncodeListener) -> Result<UpgradeOutcome> {
        upgrade::upgrade(&self.store, &self.encoder, &self.caches, target, listener)
    }
}

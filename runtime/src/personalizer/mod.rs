//! The `Personalizer`: the one object apps use. It ties the frozen encoder,
//! the user's store and the trainer together, per task.
//!
//! Prediction follows the task's lifecycle: the active trained head when
//! there is one; otherwise prototypes of the examples so far; otherwise
//! zero-shot from label descriptions; otherwise `Error::NotTrained`.

mod ranker;
mod search;
mod upgrade;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

pub use search::{SearchHit, VectorIndex};
pub use upgrade::{TaskUpgrade, UpgradeOutcome};

use crate::encoder::{Embeddings, EncodeListener, Encoder, EncoderOptions, OnnxEncoder, SILENT};
use crate::error::{Error, Result};
use crate::evaluation::{Metrics, evaluate};
use crate::heads::{Head, HeadKind, Prediction};
use crate::import::{Columns, ImportFormat, read_labelled_file};
use crate::store::{
    AddOutcome, EncryptionKey, Forget, ForgetOutcome, HeadInfo, LabelCount, LedgerEntry, NewDocument, NewExample,
    NewFeedback, NewHead, Store, StoreOptions, TaskId, TaskInfo, VectorEncoding,
};
use crate::training::{
    HeadChoice, PrivateRun, PromotionDecision, TrainListener, TrainOptions, TrainReport, TrainingSet, decide_promotion,
    train, zero_shot_head,
};

/// Where the user's data and the model are, and how to run the model.
#[derive(Debug, Clone)]
pub struct PersonalizerConfig {
    pub database: PathBuf,
    pub model_dir: PathBuf,
    pub encoder: EncoderOptions,
    pub encryption_key: Option<EncryptionKey>,
}

/// What a training call did.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainOutcome {
    pub report: TrainReport,
    pub promotion: PromotionDecision,
    /// The stored version of the new head (active only when promoted).
    pub version: u32,
}

/// Where a task's predictions come from right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PredictionSource {
    TrainedHead,
    Prototypes,
    ZeroShot,
}

/// On-device personalization for one app: `Send + Sync`, share it in an `Arc`.
pub struct Personalizer {
    store: Store,
    /// Swapped as a whole by a model upgrade; every call works with one snapshot.
    encoder: RwLock<Arc<OnnxEncoder>>,
    /// Decoded active heads per task, dropped whenever the task's data or
    /// heads change.
    heads: Mutex<HashMap<String, Arc<(Head, PredictionSource)>>>,
    search: search::Indexes,
    /// Learned ranking preferences per task, dropped on new feedback.
    preferences: Mutex<HashMap<String, Arc<ranker::Preference>>>,
}

impl std::fmt::Debug for Personalizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Personalizer")
            .field("store", &self.store)
            .field("encoder", &self.encoder())
            .finish_non_exhaustive()
    }
}

impl Personalizer {
    /// Opens the database and loads the model (once; it is shared by all calls).
    pub fn open(config: &PersonalizerConfig) -> Result<Self> {
        let encoder = Arc::new(OnnxEncoder::load(&config.model_dir, &config.encoder)?);
        let options = StoreOptions { encryption_key: config.encryption_key.clone(), ..StoreOptions::default() };
        let store = Store::open(&config.database, &options)?;
        Ok(Self {
            store,
            encoder: RwLock::new(encoder),
            heads: Mutex::new(HashMap::new()),
            search: search::Indexes::default(),
            preferences: Mutex::new(HashMap::new()),
        })
    }

    /// The underlying store, for export, statistics and maintenance.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The model in use now (a model upgrade may replace it).
    pub fn encoder(&self) -> Arc<OnnxEncoder> {
        Arc::clone(&self.encoder.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Adds labelled examples to `task` (created if needed) and embeds them.
    pub fn add_examples(&self, task: &str, examples: &[NewExample]) -> Result<AddOutcome> {
        let id = self.store.ensure_task(task)?;
        let outcome = self.store.add_examples(id, examples)?;
        let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        self.features(&texts)?;
        self.invalidate(task);
        Ok(outcome)
    }

    /// Streams examples into `task` in committed batches (see `Store::import_examples`).
    pub fn import_examples<I>(&self, task: &str, rows: I, on_batch: &mut dyn FnMut(&AddOutcome)) -> Result<AddOutcome>
    where
        I: IntoIterator<Item = Result<NewExample>>,
    {
        let id = self.store.ensure_task(task)?;
        let outcome = self.store.import_examples(id, rows, 1_000, on_batch)?;
        self.invalidate(task);
        Ok(outcome)
    }

    /// Reads a CSV or JSON Lines file of labelled texts (see
    /// [`read_labelled_file`]) into `task`, then embeds what is new with
    /// progress. A file with bad lines is refused whole. Blocking.
    pub fn import_file(
        &self,
        task: &str,
        path: &Path,
        format: Option<ImportFormat>,
        columns: &Columns,
        listener: &dyn EncodeListener,
    ) -> Result<AddOutcome> {
        let rows = read_labelled_file(path, format, columns)?;
        let texts: Vec<&str> = rows.iter().map(|(text, _)| text.as_str()).collect();
        let examples = rows.iter().map(|(text, label)| Ok(NewExample::new(text.as_str(), label.as_str())));
        let outcome = self.import_examples(task, examples, &mut |_| {})?;
        self.prepare_features_with(&texts, listener)?;
        Ok(outcome)
    }

    /// Embeds and caches `texts` now (e.g. after a bulk import), so training
    /// and prediction find them ready. Blocking.
    pub fn prepare_features(&self, texts: &[&str]) -> Result<()> {
        self.prepare_features_with(texts, &SILENT)
    }

    /// [`Self::prepare_features`] with progress (`done` of `texts.len()`) and cancellation.
    pub fn prepare_features_with(&self, texts: &[&str], listener: &dyn EncodeListener) -> Result<()> {
        let mut done = 0;
        for chunk in texts.chunks(1_024) {
            if listener.is_cancelled() {
                return Err(Error::Cancelled);
            }
            self.features(chunk)?;
            done += chunk.len();
            listener.on_progress(done, texts.len());
        }
        Ok(())
    }

    /// Sentence vectors for `texts`, for a model of the app's own (feature
    /// extraction). Nothing is stored. Blocking.
    pub fn embed(&self, texts: &[&str], listener: &dyn EncodeListener) -> Result<Embeddings> {
        self.encoder().embed_with(texts, listener)
    }

    pub fn labels(&self, task: &str) -> Result<Vec<LabelCount>> {
        self.store.label_counts(self.store.task_id(task)?)
    }

    /// Describes a label in words: zero-shot prediction before any example,
    /// and a head start for training afterwards.
    pub fn describe_label(&self, task: &str, label: &str, description: &str) -> Result<()> {
        let id = self.store.ensure_task(task)?;
        self.store.set_label_description(id, label, description)?;
        self.invalidate(task);
        Ok(())
    }

    /// Trains a head on the task's examples; it becomes active only if it is
    /// not worse than the active one on the same validation examples.
    /// Blocks for up to seconds: call it off the main thread.
    pub fn train(&self, task: &str, options: &TrainOptions, listener: &dyn TrainListener) -> Result<TrainOutcome> {
        let id = self.store.task_id(task)?;
        let encoder = self.encoder();
        let data = self.training_data(id, &encoder)?;
        let active = self.stored_active_head(id, &encoder)?;
        let mut options = options.clone();
        if let Some(privacy) = options.privacy.as_mut() {
            privacy.previous = self
                .store
                .private_runs(id)?
                .into_iter()
                .map(|e| PrivateRun {
                    sampling_rate: e.sampling_rate,
                    noise_multiplier: e.noise_multiplier,
                    steps: e.steps,
                })
                .collect();
        }
        let set = data.set(encoder.fingerprint());
        let (head, report) = train(&set, active.as_ref(), &options, listener)?;
        let promotion = decide_promotion(&report, active.as_ref(), &set)?;
        let version =
            self.store.save_head(id, &stored_head(&head, &report, data.trained_through)?, promotion.promote)?;
        if let Some(run) = report.private_run {
            let entry = LedgerEntry {
                sampling_rate: run.sampling_rate,
                noise_multiplier: run.noise_multiplier,
                steps: run.steps,
            };
            self.store.record_private_run(id, entry)?;
        }
        self.invalidate(task);
        Ok(TrainOutcome { report, promotion, version })
    }

    /// Top-`k` labels with calibrated probabilities and an abstain flag, per text.
    pub fn predict(&self, task: &str, texts: &[&str], top_k: usize) -> Result<(Vec<Prediction>, PredictionSource)> {
        let encoder = self.encoder();
        let head = self.current_head(task, &encoder)?;
        let features = self.lookup_features(&encoder, texts, false)?;
        let dim = encoder.dim();
        let predictions = features.chunks_exact(dim).map(|row| head.0.predict(row, top_k)).collect::<Result<_>>()?;
        Ok((predictions, head.1))
    }

    /// Scores the task's current head on labelled texts; labels it does not
    /// know count as errors.
    pub fn evaluate(&self, task: &str, examples: &[(String, String)]) -> Result<Metrics> {
        if examples.is_empty() {
            return Err(Error::InvalidInput("nothing to evaluate".into()));
        }
        let encoder = self.encoder();
        let head = self.current_head(task, &encoder)?;
        let texts: Vec<&str> = examples.iter().map(|(t, _)| t.as_str()).collect();
        let probabilities = head.0.probabilities(&self.lookup_features(&encoder, &texts, false)?)?;
        let truth: Vec<usize> = examples
            .iter()
            .map(|(_, label)| head.0.labels().iter().position(|l| l == label).unwrap_or(usize::MAX))
            .collect();
        Ok(evaluate(&probabilities, &truth, head.0.labels()))
    }

    /// Forgets data (see [`Forget`]) and compacts the file. A task whose
    /// active head was trained on forgotten data is retrained from what
    /// remains, so nothing predicts from forgotten data. Blocking.
    pub fn forget(&self, task: Option<&str>, what: &Forget) -> Result<ForgetOutcome> {
        let had_active = match task {
            Some(name) if *what != Forget::Task => self.store.task(name)?.active_head_version.is_some(),
            _ => false,
        };
        let outcome = self.store.forget(task, what)?;
        self.heads.lock().unwrap_or_else(PoisonError::into_inner).clear();
        self.search.clear();
        self.lock_preferences().clear();
        if let (true, Some(name)) = (had_active, task) {
            let id = self.store.task_id(name)?;
            if self.store.active_head(id)?.is_none() && !self.store.examples(id)?.is_empty() {
                self.train(name, &TrainOptions::default(), &crate::training::QuietTraining)?;
            }
        }
        self.store.compact()?;
        Ok(outcome)
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

    pub fn heads(&self, task: &str) -> Result<Vec<HeadInfo>> {
        self.store.heads(self.store.task_id(task)?)
    }

    /// Makes an earlier head version active again.
    pub fn rollback(&self, task: &str, version: u32) -> Result<()> {
        self.store.activate_head(self.store.task_id(task)?, version)?;
        self.invalidate(task);
        Ok(())
    }

    /// Adds or replaces documents for search; each is embedded once.
    pub fn add_documents(&self, task: &str, documents: &[NewDocument]) -> Result<u64> {
        let id = self.store.ensure_task(task)?;
        let changed = self.store.upsert_documents(id, documents)?;
        let texts: Vec<&str> = documents.iter().map(|d| d.text.as_str()).collect();
        self.features(&texts)?;
        self.search.invalidate(task);
        self.lock_preferences().remove(task);
        Ok(changed)
    }

    /// The `k` best documents for `query`: exact cosine over all of the
    /// task's documents, re-ranked by the preference learned from the user's
    /// feedback (with no feedback, plain semantic order).
    pub fn search(&self, task: &str, query: &str, k: usize) -> Result<Vec<SearchHit>> {
        let encoder = self.encoder();
        let index = self.search.get_or_build(task, || self.build_index(task, &encoder))?;
        let query = self.lookup_features(&encoder, &[query], false)?;
        let preference = self.preference(task, &index, &encoder)?;
        Ok(index.top_k(Some(&query), &preference, k))
    }

    /// The `k` documents the user most likely wants, from feedback alone
    /// (without feedback: the oldest documents, in order).
    pub fn recommend(&self, task: &str, k: usize) -> Result<Vec<SearchHit>> {
        let encoder = self.encoder();
        let index = self.search.get_or_build(task, || self.build_index(task, &encoder))?;
        let preference = self.preference(task, &index, &encoder)?;
        Ok(index.top_k(None, &preference, k))
    }

    /// Records what the user did with a search result or recommendation.
    pub fn record_feedback(&self, task: &str, feedback: &NewFeedback) -> Result<i64> {
        let id = self.store.record_feedback(self.store.task_id(task)?, feedback)?;
        self.lock_preferences().remove(task);
        Ok(id)
    }

    fn preference(&self, task: &str, index: &search::Index, encoder: &OnnxEncoder) -> Result<Arc<ranker::Preference>> {
        if let Some(preference) = self.lock_preferences().get(task) {
            return Ok(Arc::clone(preference));
        }
        let events = self.store.feedback(self.store.task_id(task)?)?;
        let queries: Vec<&str> = events.iter().filter_map(|e| e.query.as_deref()).collect();
        let query_vectors: HashMap<&str, Vec<f32>> = if queries.is_empty() {
            HashMap::new()
        } else {
            let vectors = self.lookup_features(encoder, &queries, true)?;
            queries.iter().copied().zip(vectors.chunks_exact(encoder.dim()).map(<[f32]>::to_vec)).collect()
        };
        let preference = Arc::new(ranker::fit(&events, encoder.dim(), &|key| index.vector(key), &|text| {
            query_vectors.get(text).cloned()
        }));
        self.lock_preferences().insert(task.to_string(), Arc::clone(&preference));
        Ok(preference)
    }

    fn lock_preferences(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<ranker::Preference>>> {
        self.preferences.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn build_index(&self, task: &str, encoder: &OnnxEncoder) -> Result<search::Index> {
        let documents = self.store.documents(self.store.task_id(task)?)?;
        let texts: Vec<&str> = documents.iter().map(|d| d.text.as_str()).collect();
        let vectors = if texts.is_empty() { Vec::new() } else { self.lookup_features(encoder, &texts, true)? };
        Ok(search::Index::new(documents, vectors, encoder.dim()))
    }

    /// Vectors for `texts` (`texts.len() × dim`) from the current model,
    /// from the cache or embedded now and cached.
    fn features(&self, texts: &[&str]) -> Result<Vec<f32>> {
        self.lookup_features(&self.encoder(), texts, true)
    }

    /// `encoder`'s vectors for `texts`, from the cache or embedded now. Only
    /// texts a stored row holds (examples, documents, descriptions, feedback
    /// queries) are cached (`keep`), so forgetting the row removes them;
    /// texts the app only asks about (predictions, search queries) leave no
    /// trace on disk.
    fn lookup_features(&self, encoder: &OnnxEncoder, texts: &[&str], keep: bool) -> Result<Vec<f32>> {
        let fingerprint = encoder.fingerprint();
        let cached = self.store.cached_features(fingerprint, texts)?;
        let missing: Vec<&str> = texts.iter().zip(&cached).filter(|(_, c)| c.is_none()).map(|(t, _)| *t).collect();
        let mut fresh: HashMap<&str, Vec<f32>> = HashMap::new();
        if !missing.is_empty() {
            let embedded = encoder.embed(&missing)?;
            let entries: Vec<(&str, &[f32])> = missing.iter().copied().zip(embedded.rows()).collect();
            if keep {
                self.store.cache_features(fingerprint, &entries, VectorEncoding::F32)?;
            }
            fresh.extend(entries.into_iter().map(|(t, v)| (t, v.to_vec())));
        }
        Ok(texts.iter().zip(cached).flat_map(|(text, hit)| hit.unwrap_or_else(|| fresh[text].clone())).collect())
    }

    fn training_data(&self, task: TaskId, encoder: &OnnxEncoder) -> Result<TrainingData> {
        let examples = self.store.examples(task)?;
        let descriptions = self.store.label_descriptions(task)?;
        let mut labels: Vec<String> = examples.iter().map(|e| e.label.clone()).collect();
        labels.sort();
        labels.dedup();
        let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        let features = if texts.is_empty() { Vec::new() } else { self.lookup_features(encoder, &texts, true)? };
        let described: Vec<(usize, &str)> = labels
            .iter()
            .enumerate()
            .filter_map(|(i, l)| descriptions.iter().find(|(d, _)| d == l).map(|(_, text)| (i, text.as_str())))
            .collect();
        let mut priors = vec![None; labels.len()];
        if !described.is_empty() {
            let texts: Vec<&str> = described.iter().map(|(_, t)| *t).collect();
            let vectors = self.lookup_features(encoder, &texts, true)?;
            for ((i, _), row) in described.iter().zip(vectors.chunks_exact(encoder.dim())) {
                priors[*i] = Some(row.to_vec());
            }
        }
        Ok(TrainingData {
            label_index: examples.iter().map(|e| labels.binary_search(&e.label).unwrap_or(0)).collect(),
            weights: examples.iter().map(|e| e.weight as f32).collect(),
            trained_through: examples.iter().map(|e| e.id).max().unwrap_or(0),
            features,
            labels,
            priors,
            dim: encoder.dim(),
        })
    }

    fn stored_active_head(&self, task: TaskId, encoder: &OnnxEncoder) -> Result<Option<Head>> {
        match self.store.active_head(task)? {
            // A head for another backbone (after a model upgrade) cannot be
            // used on this model's features: it is ignored until retrained.
            Some(stored) if stored.info.fingerprint == encoder.fingerprint() => {
                Ok(Some(Head::from_bytes(&stored.weights, encoder.fingerprint())?))
            }
            _ => Ok(None),
        }
    }

    /// The head predictions come from now, following the task's lifecycle,
    /// for `encoder`'s features.
    fn current_head(&self, task: &str, encoder: &OnnxEncoder) -> Result<Arc<(Head, PredictionSource)>> {
        if let Some(head) = self.heads.lock().unwrap_or_else(PoisonError::into_inner).get(task)
            && head.0.fingerprint() == encoder.fingerprint()
        {
            return Ok(Arc::clone(head));
        }
        let id = self.store.task_id(task)?;
        let head = match self.stored_active_head(id, encoder)? {
            Some(head) => (head, PredictionSource::TrainedHead),
            None => self.untrained_head(task, id, encoder)?,
        };
        let head = Arc::new(head);
        self.heads.lock().unwrap_or_else(PoisonError::into_inner).insert(task.to_string(), Arc::clone(&head));
        Ok(head)
    }

    fn untrained_head(&self, task: &str, id: TaskId, encoder: &OnnxEncoder) -> Result<(Head, PredictionSource)> {
        let data = self.training_data(id, encoder)?;
        if !data.labels.is_empty() {
            let options = TrainOptions { head: HeadChoice::Only(HeadKind::Prototype), ..TrainOptions::default() };
            let (head, _) = train(&data.set(encoder.fingerprint()), None, &options, &crate::training::QuietTraining)?;
            return Ok((head, PredictionSource::Prototypes));
        }
        let descriptions = self.store.label_descriptions(id)?;
        if descriptions.is_empty() {
            return Err(Error::NotTrained(task.to_string()));
        }
        let texts: Vec<&str> = descriptions.iter().map(|(_, d)| d.as_str()).collect();
        let vectors = self.lookup_features(encoder, &texts, true)?;
        let names = descriptions.into_iter().map(|(label, _)| label).collect();
        Ok((zero_shot_head(encoder.fingerprint(), names, &vectors, encoder.dim())?, PredictionSource::ZeroShot))
    }

    fn invalidate(&self, task: &str) {
        self.heads.lock().unwrap_or_else(PoisonError::into_inner).remove(task);
    }
}

/// A trained head with its report, as the store keeps it.
fn stored_head(head: &Head, report: &TrainReport, trained_through: i64) -> Result<NewHead> {
    let to_json = |e: serde_json::Error| Error::Storage(format!("training report: {e}"));
    Ok(NewHead {
        kind: head.kind().name().to_string(),
        format_version: Head::format_version(),
        fingerprint: head.fingerprint().to_string(),
        labels: head.labels().to_vec(),
        weights: head.to_bytes(),
        report: serde_json::to_string(report).map_err(to_json)?,
        metrics: serde_json::to_string(&report.validation).map_err(to_json)?,
        trained_through_example: trained_through,
    })
}

/// A task's examples as the trainer wants them.
struct TrainingData {
    features: Vec<f32>,
    label_index: Vec<usize>,
    weights: Vec<f32>,
    labels: Vec<String>,
    priors: Vec<Option<Vec<f32>>>,
    dim: usize,
    trained_through: i64,
}

impl TrainingData {
    fn set<'a>(&'a self, fingerprint: &'a str) -> TrainingSet<'a> {
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

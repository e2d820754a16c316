//! The `Personalizer`: the one object apps use. It ties the frozen encoder,
//! the user's store and the trainer together, per task.
//!
//! Prediction follows the task's lifecycle: the active trained head when
//! there is one; otherwise prototypes of the examples so far; otherwise
//! zero-shot from label descriptions; otherwise `Error::NotTrained`. A task
//! trained with differential privacy stays private: every head made for it
//! afterwards is private too, or it falls back to its label descriptions.

mod adaptation;
mod cache;
mod coarse;
mod federated;
mod import;
mod privacy;
mod ranker;
mod scan;
mod scan_pool;
mod search;
mod upgrade;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};

pub use federated::{AdoptOutcome, FederatedUpdate};
pub use search::{SearchHit, VectorIndex};
pub use upgrade::{TaskUpgrade, UpgradeOutcome};

use crate::encoder::{Embeddings, EncodeListener, Encoder, EncoderOptions, OnnxEncoder, SILENT};
use crate::error::{Error, Result};
use crate::evaluation::{Metrics, evaluate};
use crate::heads::{Head, HeadKind, Prediction};
use crate::store::{
    AddOutcome, EncryptionKey, Forget, ForgetOutcome, HeadInfo, LabelCount, NewDocument, NewExample, NewFeedback,
    NewHead, Store, StoreOptions, StoredHead, TaskId, TaskInfo, VectorEncoding,
};
use crate::training::{
    ActiveHeadEvidence, AdaptedTop, HeadChoice, PromotionDecision, QuietTraining, TrainListener, TrainOptions,
    TrainReport, TrainingSet, decide_promotion, train, zero_shot_head,
};
use adaptation::{Adapted, Decision};

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
    /// A shared model from federated rounds, adopted on this device.
    SharedHead,
    Prototypes,
    ZeroShot,
}

/// The head a task predicts with now, and where it comes from.
#[derive(Debug)]
pub(crate) struct ActiveHead {
    pub head: Head,
    pub source: PredictionSource,
    /// The adapted top layers the head's features come from, if any.
    pub top: Option<AdaptedTop>,
}

/// What `forget` did: the rows it removed and what became of the task's head.
#[derive(Debug, Clone, PartialEq)]
pub struct ForgetReport {
    pub forgotten: ForgetOutcome,
    pub retrain: Retrain,
}

/// Whether forgetting retrained the task's head.
#[derive(Debug, Clone, PartialEq)]
pub enum Retrain {
    /// The active head was not trained on forgotten data (or there was none).
    NotNeeded,
    /// Retrained from what remains; for a private task, privately (its
    /// ledger charged).
    Retrained { version: u32, private: bool },
    /// The task has no examples left to train on.
    NoExamples,
    /// A private task whose budget cannot pay for a private retrain: it has
    /// no head now, and predicts from its label descriptions.
    PublicStart { reason: String },
}

/// On-device personalization for one app: `Send + Sync`, share it in an `Arc`.
pub struct Personalizer {
    store: Store,
    /// Swapped as a whole by a model upgrade; every call works with one snapshot.
    encoder: RwLock<Arc<OnnxEncoder>>,
    caches: cache::Caches,
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
        Self::open_with_encoder(&config.database, config.encryption_key.clone(), encoder)
    }

    /// Opens the database with a model already loaded, so that many
    /// databases (several accounts in one app, simulated users) share one
    /// copy of the backbone.
    pub fn open_with_encoder(
        database: &Path,
        encryption_key: Option<EncryptionKey>,
        encoder: Arc<OnnxEncoder>,
    ) -> Result<Self> {
        let options = StoreOptions { encryption_key, ..StoreOptions::default() };
        let store = Store::open(database, &options)?;
        Ok(Self { store, encoder: RwLock::new(encoder), caches: cache::Caches::default() })
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
        self.caches.examples_changed(task);
        Ok(outcome)
    }

    /// Streams examples into `task` in committed batches (see `Store::import_examples`).
    pub fn import_examples<I>(&self, task: &str, rows: I, on_batch: &mut dyn FnMut(&AddOutcome)) -> Result<AddOutcome>
    where
        I: IntoIterator<Item = Result<NewExample>>,
    {
        let id = self.store.ensure_task(task)?;
        let outcome = self.store.import_examples(id, rows, 1_000, on_batch)?;
        self.caches.examples_changed(task);
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
        self.caches.examples_changed(task);
        Ok(())
    }

    /// Trains a head on the task's examples; it becomes active only if it is
    /// not worse than the active one, judged on examples neither was trained
    /// on (see [`decide_promotion`]). A task trained privately before is
    /// trained privately again, within what is left of its budget.
    /// Blocks for up to seconds: call it off the main thread.
    pub fn train(&self, task: &str, options: &TrainOptions, listener: &dyn TrainListener) -> Result<TrainOutcome> {
        let id = self.store.task_id(task)?;
        let outcome = self.train_and_store(id, &self.encoder(), options, listener, Activation::IfPromoted)?;
        self.caches.examples_changed(task);
        Ok(outcome)
    }

    /// Trains on `encoder`'s vectors and stores the head (with its ledger
    /// entry when private) in one transaction, activated as `activation` says.
    fn train_and_store(
        &self,
        id: TaskId,
        encoder: &OnnxEncoder,
        options: &TrainOptions,
        listener: &dyn TrainListener,
        activation: Activation,
    ) -> Result<TrainOutcome> {
        // A task with a shared head keeps its labels and starts from it.
        let shared = self.shared_head(id, encoder)?;
        let shared_labels = shared.as_ref().map_or(&[][..], |head| head.labels());
        let frozen = self.training_data_with(id, encoder, shared_labels)?;
        let stored_active = self.stored_active_head(id, encoder)?;
        let mut options = privacy::with_task_privacy(&self.store, id, options)?;
        options.independent_warm_start = shared.is_some();
        let decision = self.adapt_for_training(encoder, &frozen, &options, shared.is_some(), listener)?;
        let (data, adapted, adaptation) = match decision {
            Decision::Adapted(adapted) => {
                let Adapted { changes, features, priors, held_out, predictions, metrics, report } = *adapted;
                (frozen.with_features(features, priors), Some((changes, held_out, predictions, metrics)), Some(report))
            }
            Decision::Frozen(report) => (frozen, None, report),
        };
        let set = data.set(encoder.fingerprint());
        // A warm start is only a start in its own feature space.
        let active_space_matches =
            stored_active.as_ref().is_some_and(|(head, _)| head.top.is_none()) && adapted.is_none();
        let warm_start =
            shared.as_ref().or(stored_active.as_ref().filter(|_| active_space_matches).map(|(head, _)| head));
        let (mut head, mut report) = train(&set, warm_start, &options, listener)?;
        report.adaptation = adaptation;
        if let Some((changes, held_out, predictions, metrics)) = adapted {
            head.top = Some(changes);
            report.validation_rows = held_out;
            report.validation_predictions = predictions;
            report.validation = Some(metrics);
        }
        let replaces_public =
            report.private_run.is_some() && stored_active.as_ref().is_some_and(|(_, info)| info.privacy.is_none());
        let promotion = match activation {
            Activation::IfPromoted if replaces_public => PromotionDecision::private_replaces_public(),
            Activation::IfPromoted => {
                // A shared head saw the device's examples only through averaged
                // updates of past rounds: every example is evidence against it
                // (which, if anything, favours it). For forgetting, it counts
                // as trained on them all.
                let unseen = stored_active.as_ref().map(|(_, info)| match info.shared {
                    true => vec![true; data.example_ids.len()],
                    false => data.unseen_by(info),
                });
                let active_features = match &stored_active {
                    Some((active, _)) if active.top.is_some() || head.top.is_some() => {
                        Some(self.features_of_head(encoder, active, &data.texts)?)
                    }
                    _ => None,
                };
                let active =
                    stored_active.as_ref().zip(unseen.as_deref()).map(|((head, info), unseen)| ActiveHeadEvidence {
                        head,
                        unseen,
                        validation_accuracy: validation_accuracy(info),
                        shared: info.shared,
                        features: active_features.as_deref(),
                    });
                decide_promotion(&report, active, &set)?
            }
            // Nothing to compare with (a new model's vectors): the decision
            // records the new head's validation accuracy.
            Activation::Never => decide_promotion(&report, None, &set)?,
        };
        let activate = activation == Activation::IfPromoted && promotion.promote;
        let new_head = stored_head(&head, &report, data.trained_through, options.privacy.as_ref())?;
        let version = self.store.save_head(id, &new_head, activate)?;
        Ok(TrainOutcome { report, promotion, version })
    }

    /// `head`'s features of stored `texts`: through its adapted top layers
    /// when it has them (trunk states from the cache), else the frozen ones.
    fn features_of_head(&self, encoder: &OnnxEncoder, head: &Head, texts: &[String]) -> Result<Vec<f32>> {
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        match self.adapted_top(encoder, head)? {
            Some(top) => self.stored_adapted_features(encoder, &top, &texts),
            None => self.stored_features(encoder, &texts),
        }
    }

    /// The adapted top layers `head` carries, applied to `encoder`'s own.
    fn adapted_top(&self, encoder: &OnnxEncoder, head: &Head) -> Result<Option<AdaptedTop>> {
        let Some(changes) = head.top_changes() else { return Ok(None) };
        let misfit =
            |reason: String| Error::InvalidHead(format!("the head's adapted layers do not fit the model: {reason}"));
        let frozen = match AdaptedTop::of(encoder, changes.layers()) {
            Err(Error::CannotAdapt(reason)) => return Err(misfit(reason)),
            other => other?,
        };
        Ok(Some(frozen.with_changes(changes)?))
    }

    /// The features `active` predicts from, for texts the app asks about
    /// (nothing of them is stored).
    fn prediction_features(&self, encoder: &OnnxEncoder, active: &ActiveHead, texts: &[&str]) -> Result<Vec<f32>> {
        match &active.top {
            Some(top) => adaptation::adapted_features(encoder, top, texts),
            None => self.transient_features(encoder, texts),
        }
    }

    /// Top-`k` labels (`k` ≥ 1) with calibrated probabilities and an abstain flag, per text.
    pub fn predict(&self, task: &str, texts: &[&str], top_k: usize) -> Result<(Vec<Prediction>, PredictionSource)> {
        if top_k == 0 {
            return Err(Error::InvalidInput("top_k must be at least 1".into()));
        }
        let encoder = self.encoder();
        let active = self.current_head(task, &encoder)?;
        let features = self.prediction_features(&encoder, &active, texts)?;
        let dim = active.head.dim();
        let predictions =
            features.chunks_exact(dim).map(|row| active.head.predict(row, top_k)).collect::<Result<_>>()?;
        Ok((predictions, active.source))
    }

    /// Scores the task's current head on labelled texts; labels it does not
    /// know count as errors.
    pub fn evaluate(&self, task: &str, examples: &[(String, String)]) -> Result<Metrics> {
        if examples.is_empty() {
            return Err(Error::InvalidInput("nothing to evaluate".into()));
        }
        let encoder = self.encoder();
        let active = self.current_head(task, &encoder)?;
        let head = &active.head;
        let texts: Vec<&str> = examples.iter().map(|(t, _)| t.as_str()).collect();
        let probabilities = head.probabilities(&self.prediction_features(&encoder, &active, &texts)?)?;
        let truth: Vec<usize> = examples
            .iter()
            .map(|(_, label)| head.labels().iter().position(|l| l == label).unwrap_or(usize::MAX))
            .collect();
        Ok(evaluate(&probabilities, &truth, head.labels()))
    }

    /// Forgets data (see [`Forget`]) and compacts the file. A task whose
    /// active head was trained on forgotten data is retrained from what
    /// remains (privately for a private task, or left on its label
    /// descriptions when its budget is spent), so nothing predicts from
    /// forgotten data. Blocking.
    pub fn forget(&self, task: Option<&str>, what: &Forget) -> Result<ForgetReport> {
        let had_active = match task {
            Some(name) if *what != Forget::Task => self.store.task(name)?.active_head_version.is_some(),
            _ => false,
        };
        let forgotten = self.store.forget(task, what)?;
        match task {
            Some(name) => self.caches.task_changed(name),
            None => self.caches.clear(),
        }
        let retrain = match (had_active, task) {
            (true, Some(name)) => self.retrain_after_forget(name)?,
            _ => Retrain::NotNeeded,
        };
        self.store.compact()?;
        Ok(ForgetReport { forgotten, retrain })
    }

    fn retrain_after_forget(&self, task: &str) -> Result<Retrain> {
        let id = self.store.task_id(task)?;
        if self.store.active_head(id)?.is_some() {
            return Ok(Retrain::NotNeeded);
        }
        if self.store.examples(id)?.is_empty() {
            return Ok(Retrain::NoExamples);
        }
        let outcome = match self.train(task, &TrainOptions::default(), &QuietTraining) {
            Err(Error::BudgetExceeded(reason)) => return Ok(Retrain::PublicStart { reason }),
            other => other?,
        };
        Ok(Retrain::Retrained { version: outcome.version, private: outcome.report.private_run.is_some() })
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

    /// Makes an earlier head version active again (one still stored: see
    /// `KEPT_HEAD_VERSIONS`).
    /// A private task only goes back to a private head.
    pub fn rollback(&self, task: &str, version: u32) -> Result<()> {
        let id = self.store.task_id(task)?;
        if self.store.privacy_policy(id)?.is_some()
            && let Some(head) = self.store.heads(id)?.into_iter().find(|h| h.version == version)
            && head.privacy.is_none()
        {
            return Err(Error::InvalidInput(format!(
                "the task is trained with differential privacy: head version {version} is not private"
            )));
        }
        self.store.activate_head(id, version)?;
        self.caches.examples_changed(task);
        Ok(())
    }

    /// Adds or replaces documents for search; each is embedded once.
    pub fn add_documents(&self, task: &str, documents: &[NewDocument]) -> Result<u64> {
        let id = self.store.ensure_task(task)?;
        let changed = self.store.upsert_documents(id, documents)?;
        let texts: Vec<&str> = documents.iter().map(|d| d.text.as_str()).collect();
        self.features(&texts)?;
        self.caches.documents_changed(task);
        Ok(changed)
    }

    /// The `k` best documents for `query`: exact cosine over all of the
    /// task's documents, re-ranked by the preference learned from the user's
    /// feedback (with no feedback, plain semantic order).
    pub fn search(&self, task: &str, query: &str, k: usize) -> Result<Vec<SearchHit>> {
        let encoder = self.encoder();
        let index = self.caches.index(task, || self.build_index(task, &encoder))?;
        let query = self.transient_features(&encoder, &[query])?;
        let preference = self.caches.preference(task, || self.fit_preference(task, &index, &encoder))?;
        Ok(index.top_k(Some(&query), &preference, k))
    }

    /// The `k` documents the user most likely wants, from feedback alone
    /// (without feedback: the oldest documents, in order).
    pub fn recommend(&self, task: &str, k: usize) -> Result<Vec<SearchHit>> {
        let encoder = self.encoder();
        let index = self.caches.index(task, || self.build_index(task, &encoder))?;
        let preference = self.caches.preference(task, || self.fit_preference(task, &index, &encoder))?;
        Ok(index.top_k(None, &preference, k))
    }

    /// Records what the user did with a search result or recommendation.
    pub fn record_feedback(&self, task: &str, feedback: &NewFeedback) -> Result<i64> {
        let id = self.store.record_feedback(self.store.task_id(task)?, feedback)?;
        self.caches.feedback_changed(task);
        Ok(id)
    }

    fn fit_preference(&self, task: &str, index: &search::Index, encoder: &OnnxEncoder) -> Result<ranker::Preference> {
        let events = self.store.feedback(self.store.task_id(task)?)?;
        let queries: Vec<&str> = events.iter().filter_map(|e| e.query.as_deref()).collect();
        let query_vectors: HashMap<&str, Vec<f32>> = if queries.is_empty() {
            HashMap::new()
        } else {
            let vectors = self.stored_features(encoder, &queries)?;
            queries.iter().copied().zip(vectors.chunks_exact(encoder.dim()).map(<[f32]>::to_vec)).collect()
        };
        Ok(ranker::fit(&events, encoder.dim(), &|key| index.vector(key), &|text| query_vectors.get(text).cloned()))
    }

    fn build_index(&self, task: &str, encoder: &OnnxEncoder) -> Result<search::Index> {
        let documents = self.store.documents(self.store.task_id(task)?)?;
        let texts: Vec<&str> = documents.iter().map(|d| d.text.as_str()).collect();
        let vectors = if texts.is_empty() { Vec::new() } else { self.stored_features(encoder, &texts)? };
        Ok(search::Index::new(documents, vectors, encoder.dim()))
    }

    /// Vectors for `texts` (`texts.len() × dim`) from the current model,
    /// from the cache or embedded now and cached.
    fn features(&self, texts: &[&str]) -> Result<Vec<f32>> {
        self.stored_features(&self.encoder(), texts)
    }

    /// `encoder`'s vectors for texts a stored row holds (examples,
    /// documents, descriptions, feedback queries): from the cache, or
    /// embedded now and cached, so forgetting the row removes them too.
    fn stored_features(&self, encoder: &OnnxEncoder, texts: &[&str]) -> Result<Vec<f32>> {
        self.features_with(encoder, texts, true)
    }

    /// `encoder`'s vectors for texts the app only asks about (predictions,
    /// search queries): read from the cache when there, never written to it,
    /// so they leave no trace on disk.
    fn transient_features(&self, encoder: &OnnxEncoder, texts: &[&str]) -> Result<Vec<f32>> {
        self.features_with(encoder, texts, false)
    }

    fn features_with(&self, encoder: &OnnxEncoder, texts: &[&str], cache_new: bool) -> Result<Vec<f32>> {
        let fingerprint = encoder.fingerprint();
        let cached = self.store.cached_features(fingerprint, texts)?;
        let missing: Vec<&str> = texts.iter().zip(&cached).filter(|(_, c)| c.is_none()).map(|(t, _)| *t).collect();
        let mut fresh: HashMap<&str, Vec<f32>> = HashMap::new();
        if !missing.is_empty() {
            let embedded = encoder.embed(&missing)?;
            let entries: Vec<(&str, &[f32])> = missing.iter().copied().zip(embedded.rows()).collect();
            if cache_new {
                self.store.cache_features(fingerprint, &entries, VectorEncoding::F32)?;
            }
            fresh.extend(entries.into_iter().map(|(t, v)| (t, v.to_vec())));
        }
        Ok(texts.iter().zip(cached).flat_map(|(text, hit)| hit.unwrap_or_else(|| fresh[text].clone())).collect())
    }

    fn training_data(&self, task: TaskId, encoder: &OnnxEncoder) -> Result<TrainingData> {
        self.training_data_with(task, encoder, &[])
    }

    /// The task's examples, over their labels and `more_labels`.
    fn training_data_with(&self, task: TaskId, encoder: &OnnxEncoder, more_labels: &[String]) -> Result<TrainingData> {
        let examples = self.store.examples(task)?;
        let descriptions = self.store.label_descriptions(task)?;
        let mut labels: Vec<String> =
            examples.iter().map(|e| e.label.clone()).chain(more_labels.iter().cloned()).collect();
        labels.sort();
        labels.dedup();
        let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
        let features = if texts.is_empty() { Vec::new() } else { self.stored_features(encoder, &texts)? };
        let described: Vec<(usize, &str)> = labels
            .iter()
            .enumerate()
            .filter_map(|(i, l)| descriptions.iter().find(|(d, _)| d == l).map(|(_, text)| (i, text.as_str())))
            .collect();
        let mut priors = vec![None; labels.len()];
        if !described.is_empty() {
            let texts: Vec<&str> = described.iter().map(|(_, t)| *t).collect();
            let vectors = self.stored_features(encoder, &texts)?;
            for ((i, _), row) in described.iter().zip(vectors.chunks_exact(encoder.dim())) {
                priors[*i] = Some(row.to_vec());
            }
        }
        Ok(TrainingData {
            texts: examples.iter().map(|e| e.text.clone()).collect(),
            described: described.iter().map(|&(i, text)| (i, text.to_string())).collect(),
            example_ids: examples.iter().map(|e| e.id).collect(),
            label_index: examples.iter().map(|e| labels.binary_search(&e.label).unwrap_or(0)).collect(),
            weights: examples.iter().map(|e| e.weight as f32).collect(),
            trained_through: examples.iter().map(|e| e.id).max().unwrap_or(0),
            features,
            labels,
            priors,
            dim: encoder.dim(),
        })
    }

    /// The active head, decoded, with its stored record, when it belongs
    /// to `encoder`'s backbone. (After a model upgrade a head for another
    /// backbone cannot be used on this model's features: it is ignored
    /// until retrained.)
    fn stored_active_head(&self, task: TaskId, encoder: &OnnxEncoder) -> Result<Option<(Head, HeadInfo)>> {
        match self.store.active_head(task)? {
            Some(StoredHead { info, weights, .. }) if info.fingerprint == encoder.fingerprint() => {
                Ok(Some((Head::from_bytes(&weights, encoder.fingerprint())?, info)))
            }
            _ => Ok(None),
        }
    }

    /// The head predictions come from now, following the task's lifecycle,
    /// for `encoder`'s features.
    fn current_head(&self, task: &str, encoder: &OnnxEncoder) -> Result<Arc<ActiveHead>> {
        if let Some(active) = self.caches.head(task, encoder.fingerprint()) {
            return Ok(active);
        }
        let id = self.store.task_id(task)?;
        let (head, source) = match self.stored_active_head(id, encoder)? {
            Some((head, info)) if head.kind() == HeadKind::Prototype && head.top.is_none() => {
                (self.with_current_prototypes(id, encoder, head, &info)?, PredictionSource::TrainedHead)
            }
            Some((head, info)) => (head, federated::source_of(info.shared)),
            None => self.untrained_head(task, id, encoder)?,
        };
        let top = self.adapted_top(encoder, &head)?;
        Ok(self.caches.keep_head(task, ActiveHead { head, source, top }))
    }

    /// A stored prototype head never freezes the prototypes: with examples
    /// added after it, its centroids are rebuilt from all of them (its
    /// calibration is kept).
    fn with_current_prototypes(
        &self,
        id: TaskId,
        encoder: &OnnxEncoder,
        stored: Head,
        info: &HeadInfo,
    ) -> Result<Head> {
        let data = self.training_data(id, encoder)?;
        if data.trained_through <= info.trained_through_example || data.labels.is_empty() {
            return Ok(stored);
        }
        let mut head = prototype_head(&data, encoder)?;
        head.temperature = stored.temperature;
        head.abstain_below = stored.abstain_below;
        Ok(head)
    }

    fn untrained_head(&self, task: &str, id: TaskId, encoder: &OnnxEncoder) -> Result<(Head, PredictionSource)> {
        // A private task never predicts from prototypes of its raw examples:
        // without a private head it is back at its public start.
        let private = self.store.privacy_policy(id)?.is_some();
        let data = self.training_data(id, encoder)?;
        if !data.labels.is_empty() && !private {
            return Ok((prototype_head(&data, encoder)?, PredictionSource::Prototypes));
        }
        let descriptions = self.store.label_descriptions(id)?;
        if descriptions.is_empty() {
            return Err(Error::NotTrained(task.to_string()));
        }
        let texts: Vec<&str> = descriptions.iter().map(|(_, d)| d.as_str()).collect();
        let vectors = self.stored_features(encoder, &texts)?;
        let names = descriptions.into_iter().map(|(label, _)| label).collect();
        Ok((zero_shot_head(encoder.fingerprint(), names, &vectors, encoder.dim())?, PredictionSource::ZeroShot))
    }
}

/// How a trained head is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Activation {
    /// Active when promotion says so.
    IfPromoted,
    /// Inactive, whatever promotion says (a model upgrade activates later).
    Never,
}

/// Prototypes of all of the task's examples (and label descriptions).
fn prototype_head(data: &TrainingData, encoder: &OnnxEncoder) -> Result<Head> {
    let options = TrainOptions { head: HeadChoice::Only(HeadKind::Prototype), ..TrainOptions::default() };
    Ok(train(&data.set(encoder.fingerprint()), None, &options, &QuietTraining)?.0)
}

/// The accuracy a head's own training measured out of sample, from its
/// stored metrics.
fn validation_accuracy(info: &HeadInfo) -> Option<f64> {
    let metrics: serde_json::Value = serde_json::from_str(&info.metrics).ok()?;
    metrics.get("accuracy")?.as_f64()
}

/// A trained head with its report, as the store keeps it; a private head
/// carries its ledger entry and the task's policy.
fn stored_head(
    head: &Head,
    report: &TrainReport,
    trained_through: i64,
    privacy: Option<&crate::training::PrivacyOptions>,
) -> Result<NewHead> {
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
        privacy: privacy::head_privacy(report, privacy),
        shared: false,
    })
}

/// The rows `rows` of a row-major matrix of width `dim`, in that order.
fn rows_of(values: &[f32], dim: usize, rows: &[usize]) -> Vec<f32> {
    rows.iter().flat_map(|&r| values[r * dim..(r + 1) * dim].iter().copied()).collect()
}

/// A task's examples as the trainer wants them.
struct TrainingData {
    texts: Vec<String>,
    /// Labels with a description, and the description.
    described: Vec<(usize, String)>,
    example_ids: Vec<i64>,
    features: Vec<f32>,
    label_index: Vec<usize>,
    weights: Vec<f32>,
    labels: Vec<String>,
    priors: Vec<Option<Vec<f32>>>,
    dim: usize,
    trained_through: i64,
}

impl TrainingData {
    /// Per example: true when `head` was trained before it was added.
    fn unseen_by(&self, head: &HeadInfo) -> Vec<bool> {
        self.example_ids.iter().map(|&id| id > head.trained_through_example).collect()
    }

    /// The same examples over other features (and label-description priors).
    fn with_features(self, features: Vec<f32>, priors: Vec<Option<Vec<f32>>>) -> Self {
        let dim = if self.texts.is_empty() { self.dim } else { features.len() / self.texts.len() };
        Self { features, priors, dim, ..self }
    }

    /// `rows` of these examples over `features` (all rows' features).
    fn subset(&self, features: &[f32], rows: &[usize]) -> Self {
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

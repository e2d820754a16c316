//! Model upgrades: when the app ships a new backbone, every stored text is
//! embedded again with it and every task's head retrained on the new
//! vectors, while the current model and heads keep serving; then the new
//! model and heads take over at once and the old model's vectors are dropped.

use std::sync::{Arc, PoisonError, RwLock};

use super::cache::Caches;
use super::features::Features;
use super::training::{Activation, TrainOutcome, train_and_store};
use crate::encoder::{EncodeListener, Encoder};
use crate::error::{Error, Result};
use crate::store::{Store, TaskId};
use crate::training::{QuietTraining, TrainOptions};

/// Texts embedded per step: progress and cancellation happen between steps,
/// and every step's vectors are committed, so an interrupted upgrade resumes
/// where it stopped.
const STEP: usize = 256;

/// What a model upgrade did.
#[derive(Debug, Clone, PartialEq)]
pub struct UpgradeOutcome {
    pub from_fingerprint: String,
    pub to_fingerprint: String,
    /// Distinct stored texts that need the new model's vectors.
    pub texts: u64,
    /// Of those, embedded by this call (the rest were done by an earlier,
    /// interrupted call).
    pub embedded_now: u64,
    pub tasks: Vec<TaskUpgrade>,
    /// Cached vectors of other models, dropped at the end.
    pub old_vectors_dropped: u64,
}

/// One task's new head.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskUpgrade {
    pub task: String,
    /// The new head (private for a private task); `None` when `skipped` says why.
    pub trained: Option<TrainOutcome>,
    pub skipped: Option<String>,
}

/// The model in use, swapped as a whole by an upgrade.
pub(super) type ModelSlot = RwLock<Arc<dyn Encoder>>;

/// Moves `store` from the model in `slot` to `target`: embeds every stored
/// text with it, trains each task's head on the new vectors (stored
/// inactive), then switches the model and activates the new heads in one
/// step under the slot's lock, so other threads see either the old model
/// with its heads or the new one with its own.
pub(super) fn upgrade(
    store: &Store,
    slot: &ModelSlot,
    caches: &Caches,
    target: Arc<dyn Encoder>,
    listener: &dyn EncodeListener,
) -> Result<UpgradeOutcome> {
    let current = Arc::clone(&slot.read().unwrap_or_else(PoisonError::into_inner));
    let target = match target {
        loaded if loaded.fingerprint() == current.fingerprint() => Arc::clone(&current),
        loaded => loaded,
    };
    let features = Features::new(store, &*target);
    let texts = stored_texts(store)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let before = store.cached_features(target.fingerprint(), &refs)?.iter().filter(|v| v.is_some()).count();
    for (step, chunk) in refs.chunks(STEP).enumerate() {
        if listener.is_cancelled() {
            return Err(Error::Cancelled);
        }
        features.stored(chunk)?;
        listener.on_progress((step * STEP + chunk.len()).min(refs.len()), refs.len());
    }

    // Heads are trained and stored inactive first, so the current ones
    // keep serving; then activated together with the switch.
    let mut tasks = Vec::new();
    let mut activate: Vec<(TaskId, u32)> = Vec::new();
    for info in store.tasks()? {
        let id = store.task_id(&info.name)?;
        if listener.is_cancelled() {
            return Err(Error::Cancelled);
        }
        let (trained, skipped) = if info.examples == 0 {
            (None, Some("no examples: it keeps working from label descriptions".to_string()))
        } else {
            // A private task is trained privately again, charged to its
            // ledger; when its budget cannot pay, it is left on its
            // label descriptions rather than given a non-private head.
            match train_and_store(features, id, &TrainOptions::default(), &QuietTraining, Activation::Never) {
                Ok(outcome) => {
                    activate.push((id, outcome.version));
                    (Some(outcome), None)
                }
                Err(Error::PrivacyBudgetExceeded(reason)) => (
                    None,
                    Some(format!(
                        "trained with differential privacy and {reason}: it predicts from its label descriptions"
                    )),
                ),
                Err(other) => return Err(other),
            }
        };
        tasks.push(TaskUpgrade { task: info.name, trained, skipped });
    }
    {
        let mut encoder = slot.write().unwrap_or_else(PoisonError::into_inner);
        store.activate_heads(&activate)?;
        *encoder = Arc::clone(&target);
        caches.clear();
    }
    let old_vectors_dropped = store.drop_features_except(target.fingerprint())?;
    store.drop_trunk_states_except(target.fingerprint())?;
    Ok(UpgradeOutcome {
        from_fingerprint: current.fingerprint().to_string(),
        to_fingerprint: target.fingerprint().to_string(),
        texts: refs.len() as u64,
        embedded_now: (refs.len() - before) as u64,
        tasks,
        old_vectors_dropped,
    })
}

/// Every distinct text a stored row holds, in a stable order.
fn stored_texts(store: &Store) -> Result<Vec<String>> {
    let mut texts = Vec::new();
    for info in store.tasks()? {
        let id = store.task_id(&info.name)?;
        texts.extend(store.examples(id)?.into_iter().map(|e| e.text));
        texts.extend(store.documents(id)?.into_iter().map(|d| d.text));
        texts.extend(store.label_descriptions(id)?.into_iter().map(|(_, d)| d));
        texts.extend(store.feedback(id)?.into_iter().filter_map(|f| f.query));
    }
    texts.sort();
    texts.dedup();
    Ok(texts)
}

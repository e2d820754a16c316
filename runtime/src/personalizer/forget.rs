//! Forgetting: the rows go, the file is compacted, and a task whose active
//! head was trained on forgotten data is retrained from what remains, so
//! nothing predicts from forgotten data.

use super::features::Features;
use super::training::{Activation, train_and_store};
use crate::error::{Error, Result};
use crate::store::{Forget, ForgetOutcome};
use crate::training::{QuietTraining, TrainOptions};

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

/// Forgets `what` of `task` (all tasks when `None`). `rows_gone` runs
/// once the rows are deleted, before any retrain, so that nothing cached
/// from them is used again.
pub(super) fn forget(
    features: Features<'_>,
    task: Option<&str>,
    what: &Forget,
    rows_gone: &dyn Fn(),
) -> Result<ForgetReport> {
    let store = features.store;
    let had_active = match task {
        Some(name) if *what != Forget::Task => store.task(name)?.active_head_version.is_some(),
        _ => false,
    };
    let forgotten = store.forget(task, what)?;
    rows_gone();
    let retrain = match (had_active, task) {
        (true, Some(name)) => retrain_after_forget(features, name)?,
        _ => Retrain::NotNeeded,
    };
    store.compact()?;
    Ok(ForgetReport { forgotten, retrain })
}

/// A new head from what remains, when forgetting deactivated the old one.
fn retrain_after_forget(features: Features<'_>, task: &str) -> Result<Retrain> {
    let store = features.store;
    let id = store.task_id(task)?;
    if store.active_head(id)?.is_some() {
        return Ok(Retrain::NotNeeded);
    }
    if store.examples(id)?.is_empty() {
        return Ok(Retrain::NoExamples);
    }
    let outcome = match train_and_store(features, id, &TrainOptions::default(), &QuietTraining, Activation::IfPromoted)
    {
        Err(Error::PrivacyBudgetExceeded(reason)) => return Ok(Retrain::PublicStart { reason }),
        other => other?,
    };
    Ok(Retrain::Retrained { version: outcome.version, private: outcome.report.private_run.is_some() })
}

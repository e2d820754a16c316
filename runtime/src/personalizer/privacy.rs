//! A task trained with differential privacy stays private: its policy (the
//! budget and DP-SGD settings the app chose) is stored with its first
//! private head, and every later training of the task — by the app,
//! `forget`'s retrain or a model upgrade — runs privately under it, charged
//! to the same ledger.

use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::store::{HeadPrivacy, LedgerEntry, Store, TaskId};
use crate::training::{
    PrivacyOptions, PrivacySpent, PrivateRun, TrainOptions, TrainReport, UpdatePrivacy, privacy_spent,
};

/// `options` with the task's privacy applied: the app's own privacy
/// options, else the task's stored policy; either way with its ledger.
pub(super) fn with_task_privacy(store: &Store, task: TaskId, options: &TrainOptions) -> Result<TrainOptions> {
    let mut options = options.clone();
    if options.privacy.is_none()
        && let Some(policy) = store.privacy_policy(task)?
    {
        options.privacy = Some(from_policy(&policy)?);
    }
    if let Some(privacy) = options.privacy.as_mut() {
        privacy.previous = store
            .private_runs(task)?
            .into_iter()
            .map(|e| PrivateRun {
                sampling_rate: e.sampling_rate,
                noise_multiplier: e.noise_multiplier,
                steps: e.steps,
            })
            .collect();
    }
    Ok(options)
}

/// A private task only goes back to a private head.
pub(super) fn check_rollback(store: &Store, task: TaskId, version: u32) -> Result<()> {
    let private_task = store.privacy_policy(task)?.is_some();
    let public_head = store.heads(task)?.into_iter().any(|h| h.version == version && h.privacy.is_none());
    if private_task && public_head {
        return Err(Error::InvalidInput(format!(
            "the task is trained with differential privacy: head version {version} is not private"
        )));
    }
    Ok(())
}

/// What a private federated update costs, checked against the budget
/// before anything is trained.
pub(super) struct UpdateCharge {
    pub privacy: UpdatePrivacy,
    pub entry: LedgerEntry,
    /// The task's policy, for a task that becomes private with this update.
    pub policy: String,
    /// The task's (ε, δ) with this update included.
    pub spent: PrivacySpent,
}

/// The charge of a federated update, or `None` for a public update of a
/// public task. A private task's updates are private too, within its own
/// budget; a release the budget cannot afford is `PrivacyBudgetExceeded`.
pub(super) fn update_charge(
    store: &Store,
    task: TaskId,
    asked: Option<&UpdatePrivacy>,
) -> Result<Option<UpdateCharge>> {
    let policy = store.privacy_policy(task)?;
    let asked = match (asked, &policy) {
        (None, None) => return Ok(None),
        (None, Some(_)) => {
            return Err(Error::InvalidInput(
                "the task is private: its federated updates must be private too (pass update privacy)".into(),
            ));
        }
        (Some(asked), _) => asked.checked()?,
    };
    let budget = match &policy {
        Some(policy) => from_policy(policy)?.epsilon,
        None => asked.epsilon,
    };
    let delta = asked.delta.unwrap_or(1e-5);
    let entry = LedgerEntry { sampling_rate: 1.0, noise_multiplier: asked.noise_multiplier, steps: 1 };
    let mut runs: Vec<PrivateRun> = store
        .private_runs(task)?
        .into_iter()
        .map(|e| PrivateRun { sampling_rate: e.sampling_rate, noise_multiplier: e.noise_multiplier, steps: e.steps })
        .collect();
    runs.push(PrivateRun { sampling_rate: 1.0, noise_multiplier: asked.noise_multiplier, steps: 1 });
    let spent = privacy_spent(&runs, delta);
    if spent.epsilon > budget {
        return Err(Error::PrivacyBudgetExceeded(format!(
            "this update would bring the task to ε = {:.2} (budget {budget:.2}): send none, or more noise",
            spent.epsilon
        )));
    }
    let options =
        PrivacyOptions { delta: Some(delta), clip_norm: asked.clip_norm, ..PrivacyOptions::with_budget(budget) };
    Ok(Some(UpdateCharge { privacy: asked, entry, policy: to_policy(&options), spent }))
}

/// What a private head stores beside its weights (`None` for a public run).
pub(super) fn head_privacy(report: &TrainReport, options: Option<&PrivacyOptions>) -> Option<HeadPrivacy> {
    let (run, spent, options) = (report.private_run?, report.privacy?, options?);
    Some(HeadPrivacy {
        run: LedgerEntry { sampling_rate: run.sampling_rate, noise_multiplier: run.noise_multiplier, steps: run.steps },
        epsilon: spent.epsilon,
        delta: spent.delta,
        policy: to_policy(options),
    })
}

fn to_policy(options: &PrivacyOptions) -> String {
    json!({
        "epsilon": options.epsilon,
        "delta": options.delta,
        "clip_norm": options.clip_norm,
        "sampling_rate": options.sampling_rate,
        "epochs": options.epochs,
        "run_share": options.run_share,
    })
    .to_string()
}

/// The stored policy; fields it lacks (a policy carried over from an
/// older schema has only its budget) take the defaults.
fn from_policy(policy: &str) -> Result<PrivacyOptions> {
    let damaged = || Error::DatabaseUnreadable(format!("a task's privacy policy is damaged: {policy}"));
    let value: Value = serde_json::from_str(policy).map_err(|_| damaged())?;
    let epsilon = value.get("epsilon").and_then(Value::as_f64).ok_or_else(damaged)?;
    let defaults = PrivacyOptions::with_budget(epsilon);
    Ok(PrivacyOptions {
        delta: value.get("delta").and_then(Value::as_f64),
        clip_norm: value.get("clip_norm").and_then(Value::as_f64).map_or(defaults.clip_norm, |c| c as f32),
        sampling_rate: value.get("sampling_rate").and_then(Value::as_f64),
        epochs: value.get("epochs").and_then(Value::as_u64).map_or(defaults.epochs, |e| e as usize),
        run_share: value.get("run_share").and_then(Value::as_f64).unwrap_or(defaults.run_share),
        ..defaults
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_round_trips_and_an_old_one_takes_defaults() {
        let options =
            PrivacyOptions { delta: Some(1e-6), sampling_rate: Some(0.1), ..PrivacyOptions::with_budget(3.0) };
        assert_eq!(from_policy(&to_policy(&options)).unwrap(), options);
        assert_eq!(from_policy(r#"{"epsilon": 2.5}"#).unwrap(), PrivacyOptions::with_budget(2.5));
        assert!(matches!(from_policy("{}"), Err(Error::DatabaseUnreadable(_))));
    }
}

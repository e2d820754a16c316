//! A task trained with differential privacy stays private on every path
//! that makes a head for it: the app's next training, `forget`'s retrain and
//! a model upgrade train privately within the remaining budget (charged to
//! the ledger in the head's own transaction), or leave the task on its label
//! descriptions; prototypes of the raw examples are never used.

mod support;

use attune::{
    EncoderOptions, Forget, PersonalizerConfig, PredictionSource, PrivacyOptions, QuietTraining, Retrain, SILENT,
    TrainOptions,
};
use support::{Intents, scratch_dir, tiny_dir};

fn open(tag: &str) -> (support::Opened, std::path::PathBuf) {
    let dir = scratch_dir(tag);
    let config = PersonalizerConfig {
        database: dir.join("user.db"),
        model_dir: tiny_dir(),
        encoder: EncoderOptions::default(),
        encryption_key: None,
    };
    (support::Opened::open(&config), dir)
}

/// A private task: every intent described, three examples each, trained
/// with a budget of `epsilon` over `epochs` epochs, the first run taking
/// `run_share` of it.
fn private_task(tag: &str, epsilon: f64, run_share: f64) -> (support::Opened, std::path::PathBuf) {
    let (p, dir) = open(tag);
    let data = Intents::read();
    for intent in &data.intents {
        p.describe_label("support", &intent.label, &intent.description).unwrap();
    }
    p.add_examples("support", &data.examples(0..3)).unwrap();
    let privacy = PrivacyOptions { epochs: 2, run_share, ..PrivacyOptions::with_budget(epsilon) };
    let options = TrainOptions { privacy: Some(privacy), ..TrainOptions::default() };
    let outcome = p.train("support", &options, &QuietTraining).unwrap();
    assert!(outcome.report.private_run.is_some());
    (p, dir)
}

fn ledger_len(p: &support::Opened) -> usize {
    p.store().private_runs(p.store().task_id("support").unwrap()).unwrap().len()
}

#[test]
fn a_private_head_shows_its_epsilon_and_its_run_is_in_the_ledger() {
    let (p, dir) = private_task("dp-visible", 4.0, 0.5);
    let heads = p.heads("support").unwrap();
    let attune::PrivacyBound { epsilon, delta } = heads[0].privacy.expect("the head is marked private");
    assert!(epsilon > 0.0 && epsilon <= 4.0 && delta > 0.0 && delta < 1e-4, "{:?}", heads[0]);
    assert_eq!(ledger_len(&p), 1);

    let export = dir.join("export.json");
    p.export_json_file(&export).unwrap();
    let exported: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(export).unwrap()).unwrap();
    let head = &exported["tasks"][0]["heads"][0];
    assert_eq!(head["private"], true, "{head}");
    assert_eq!(head["epsilon"].as_f64(), Some(epsilon));
}

#[test]
fn a_private_task_trains_privately_again_without_being_asked() {
    let (p, _) = private_task("dp-again", 8.0, 0.5);
    let outcome = p.train("support", &TrainOptions::default(), &QuietTraining).unwrap();
    assert!(outcome.report.private_run.is_some(), "{:?}", outcome.report.chosen);
    assert_eq!(ledger_len(&p), 2);
    assert!(p.heads("support").unwrap().iter().all(|h| h.privacy.is_some()));
    // The second run spent more of the same budget.
    let spent: Vec<f64> = p.heads("support").unwrap().iter().map(|h| h.privacy.unwrap().epsilon).collect();
    assert!(spent[1] > spent[0] && spent[1] <= 8.0, "{spent:?}");
}

#[test]
fn forgetting_retrains_privately_within_the_budget() {
    let (p, _) = private_task("dp-forget", 8.0, 0.5);
    let data = Intents::read();
    let report = p.forget(Some("support"), &Forget::Text(data.intents[0].train[0].clone())).unwrap();
    let Retrain::Retrained { version, private } = report.retrain else { panic!("{:?}", report.retrain) };
    assert!(private);
    let heads = p.heads("support").unwrap();
    let retrained = heads.iter().find(|h| h.version == version).unwrap();
    assert!(retrained.active && retrained.privacy.is_some(), "{retrained:?}");
    assert_eq!(ledger_len(&p), 2);
}

#[test]
fn forgetting_with_the_budget_spent_leaves_the_task_on_its_descriptions() {
    // The first run spends the whole budget: a second cannot be afforded.
    let (p, _) = private_task("dp-spent", 4.0, 1.0);
    let data = Intents::read();
    let report = p.forget(Some("support"), &Forget::Text(data.intents[0].train[0].clone())).unwrap();
    assert!(matches!(report.retrain, Retrain::PublicStart { .. }), "{:?}", report.retrain);
    assert_eq!(p.stats("support").unwrap().active_head_version, None);
    assert_eq!(ledger_len(&p), 1, "nothing was trained, nothing charged");
    // Not prototypes of the remaining raw examples: the label descriptions.
    let (_, source) = p.predict("support", &["play a song"], 1).unwrap();
    assert_eq!(source, PredictionSource::ZeroShot);
    assert!(p.heads("support").unwrap().iter().all(|h| h.privacy.is_some()), "no public head was stored");
}

#[test]
fn a_model_upgrade_retrains_a_private_task_privately_or_says_why_not() {
    let (p, _) = private_task("dp-upgrade", 8.0, 0.5);
    let outcome = p.upgrade_model(&tiny_dir(), &EncoderOptions::default(), &SILENT).unwrap();
    let task = &outcome.tasks[0];
    let trained = task.trained.as_ref().expect("budget left: retrained");
    assert!(trained.report.private_run.is_some());
    assert_eq!(ledger_len(&p), 2);

    let (spent, _) = private_task("dp-upgrade-spent", 4.0, 1.0);
    let outcome = spent.upgrade_model(&tiny_dir(), &EncoderOptions::default(), &SILENT).unwrap();
    let task = &outcome.tasks[0];
    assert!(task.trained.is_none());
    assert!(task.skipped.as_deref().unwrap().contains("differential privacy"), "{task:?}");
    assert_eq!(ledger_len(&spent), 1);
    assert!(spent.heads("support").unwrap().iter().all(|h| h.privacy.is_some()));
}

#[test]
fn a_private_task_never_rolls_back_to_a_public_head() {
    let (p, _) = open("dp-rollback");
    let data = Intents::read();
    for intent in &data.intents {
        p.describe_label("support", &intent.label, &intent.description).unwrap();
    }
    p.add_examples("support", &data.examples(0..3)).unwrap();
    let public = p.train("support", &TrainOptions::default(), &QuietTraining).unwrap();
    let privacy = PrivacyOptions { epochs: 2, ..PrivacyOptions::with_budget(8.0) };
    let private = TrainOptions { privacy: Some(privacy), ..TrainOptions::default() };
    let first_private = p.train("support", &private, &QuietTraining).unwrap();
    assert!(first_private.promotion.promote, "the private head replaces the public one: {:?}", first_private.promotion);
    p.train("support", &TrainOptions::default(), &QuietTraining).unwrap();
    let refused = p.rollback("support", public.version);
    assert!(matches!(refused, Err(attune::Error::InvalidInput(_))), "{refused:?}");
    p.rollback("support", first_private.version).unwrap();
    let active = p.heads("support").unwrap().into_iter().find(|h| h.active).unwrap();
    assert_eq!(active.version, first_private.version);
}

//! Training that adapts the backbone's top layers, through the
//! `Personalizer` on the tiny model: the head carries its layers and
//! predicts through them, from a reopened file too; forced adaptation is
//! refused for a private task and skipped, said in the report, when labels
//! have no pairs; a head whose layers do not fit the model is refused at
//! prediction; cancellation stores nothing; an upgrade drops the old
//! model's trunk states.

mod support;

use std::path::{Path, PathBuf};

use attune::{
    AdaptChoice, AdaptOptions, EncoderOptions, Error, Head, NewExample, NewHead, PersonalizerConfig, PredictionSource,
    PrivacyOptions, QuietTraining, StoredHead, TrainListener, TrainOptions,
};

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attune-adaptation-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn open(dir: &Path) -> support::Opened {
    let config = PersonalizerConfig {
        database: dir.join("user.db"),
        model_dir: support::tiny_dir(),
        encoder: EncoderOptions::default(),
        encryption_key: None,
    };
    support::Opened::open(&config)
}

/// Three labels with `per_label` examples each.
fn examples(per_label: usize) -> Vec<NewExample> {
    let topics = [("travel", "flight to"), ("food", "dinner recipe with"), ("money", "transfer the rent for")];
    topics
        .iter()
        .flat_map(|(label, stem)| (0..per_label).map(move |i| NewExample::new(format!("{stem} item {i}"), *label)))
        .collect()
}

/// Adaptation of the tiny model's top layer, forced and short.
fn adapting(choice: AdaptChoice) -> TrainOptions {
    let adaptation = AdaptOptions { steps: 12, learning_rate: 1e-3, ..AdaptOptions::default() };
    TrainOptions { adapt: choice, adapt_layers: 1, adaptation, ..TrainOptions::default() }
}

const QUERIES: [&str; 3] = ["a flight to rome", "a recipe with leeks", "pay the rent"];

fn probabilities(p: &attune::Personalizer) -> Vec<Vec<attune::ScoredLabel>> {
    p.predict("inbox", &QUERIES, 3).unwrap().0.into_iter().map(|prediction| prediction.top).collect()
}

#[test]
fn an_adapted_head_carries_its_layers_and_predicts_through_them() {
    let dir = scratch("carries");
    let p = open(&dir);
    p.add_examples("inbox", &examples(6)).unwrap();
    let frozen = p.train("inbox", &adapting(AdaptChoice::Never), &QuietTraining).unwrap();
    assert!(frozen.report.adaptation.is_none());
    let before = probabilities(&p);

    let outcome = p.train("inbox", &adapting(AdaptChoice::Always), &QuietTraining).unwrap();
    let adaptation = outcome.report.adaptation.clone().expect("an adaptation report");
    assert!(adaptation.adapted, "{adaptation:?}");
    assert_eq!((adaptation.layers, adaptation.steps), (1, 12));
    assert!(adaptation.trained_values > 0 && adaptation.holdout_rows >= 3, "{adaptation:?}");
    // The head's evidence is the held-out rows adaptation never saw.
    assert_eq!(outcome.report.validation_rows.len() as u64, adaptation.holdout_rows);

    let stored = p.store().heads(p.store().task_id("inbox").unwrap()).unwrap();
    let head = decode_version(&p, outcome.version);
    let changes = head.top_changes().expect("the head carries its layers");
    assert_eq!((changes.layers(), changes.values() as u64), (1, adaptation.trained_values));
    assert_eq!(stored.len(), 2);
    // Each example's trunk states are cached once; predicted texts leave none.
    let stats = p.stats("inbox").unwrap();
    assert_eq!(stats.trunk_states, 18);
    assert!(stats.trunk_state_bytes > 0);

    if outcome.promotion.promote {
        let (_, source) = p.predict("inbox", &QUERIES, 1).unwrap();
        assert_eq!(source, PredictionSource::TrainedHead);
        let adapted = probabilities(&p);
        assert_ne!(adapted, before, "predictions go through the adapted layers");
        assert_eq!(p.stats("inbox").unwrap().trunk_states, 18);
        drop(p);
        assert_eq!(probabilities(&open(&dir)), adapted, "a reopened file predicts the same");
    } else {
        // Not promoted: make it active and check it predicts through its layers.
        p.rollback("inbox", outcome.version).unwrap();
        assert_ne!(probabilities(&p), before);
    }
}

#[test]
fn adaptation_repeats_given_a_seed_from_fresh_and_from_cached_states() {
    let dir = scratch("repeats");
    let p = open(&dir);
    p.add_examples("inbox", &examples(6)).unwrap();
    let first = p.train("inbox", &adapting(AdaptChoice::Always), &QuietTraining).unwrap();
    let second = p.train("inbox", &adapting(AdaptChoice::Always), &QuietTraining).unwrap();
    assert_eq!(decode_version(&p, first.version), decode_version(&p, second.version));
    let other = p.train("inbox", &TrainOptions { seed: 9, ..adapting(AdaptChoice::Always) }, &QuietTraining).unwrap();
    assert_ne!(decode_version(&p, first.version).top_changes(), decode_version(&p, other.version).top_changes());
}

#[test]
fn forced_adaptation_is_refused_for_a_private_task_and_skipped_by_the_automatic_choice() {
    let p = open(&scratch("private"));
    p.add_examples("inbox", &examples(6)).unwrap();
    let private = TrainOptions { privacy: Some(PrivacyOptions::with_budget(8.0)), ..adapting(AdaptChoice::Auto) };
    let outcome = p.train("inbox", &private, &QuietTraining).unwrap();
    let skipped = outcome.report.adaptation.expect("a report").skipped.expect("a reason");
    assert!(skipped.contains("differential privacy"), "{skipped}");
    assert!(decode_version(&p, outcome.version).top_changes().is_none());
    // The task stays private: forcing adaptation later is refused, and the
    // private head stays active.
    let forced = p.train("inbox", &adapting(AdaptChoice::Always), &QuietTraining);
    assert!(
        matches!(&forced, Err(Error::InvalidInput(reason)) if reason.contains("differential privacy")),
        "{forced:?}"
    );
    assert_eq!(p.stats("inbox").unwrap().active_head_version, Some(outcome.version));
}

#[test]
fn labels_without_pairs_skip_adaptation_and_the_report_says_so() {
    let p = open(&scratch("pairs"));
    p.add_examples("inbox", &examples(1)).unwrap();
    let outcome = p.train("inbox", &adapting(AdaptChoice::Always), &QuietTraining).unwrap();
    let adaptation = outcome.report.adaptation.expect("a report");
    assert!(!adaptation.adapted);
    assert!(adaptation.skipped.as_deref().is_some_and(|r| r.contains("pairs")), "{adaptation:?}");
    assert!(decode_version(&p, outcome.version).top_changes().is_none());
    // The automatic choice wants more examples per label before it adapts.
    p.add_examples("inbox", &examples(3)).unwrap();
    let auto = p.train("inbox", &adapting(AdaptChoice::Auto), &QuietTraining).unwrap();
    let skipped = auto.report.adaptation.and_then(|a| a.skipped).expect("a reason");
    assert!(skipped.contains("examples"), "{skipped}");
}

#[test]
fn the_automatic_choice_leaves_plentiful_labels_to_a_frozen_head() {
    let p = open(&scratch("plentiful"));
    p.add_examples("inbox", &examples(51)).unwrap();
    let auto = p.train("inbox", &adapting(AdaptChoice::Auto), &QuietTraining).unwrap();
    let adaptation = auto.report.adaptation.expect("a report");
    assert!(!adaptation.adapted && adaptation.steps == 0, "{adaptation:?}");
    assert!(adaptation.skipped.as_deref().is_some_and(|r| r.contains("51 examples each on average")), "{adaptation:?}");
    assert_eq!(p.stats("inbox").unwrap().trunk_states, 0, "skipped before any trunk state was computed");
    let forced = p.train("inbox", &adapting(AdaptChoice::Always), &QuietTraining).unwrap();
    assert!(forced.report.adaptation.is_some_and(|a| a.adapted));
}

#[test]
fn a_head_whose_layers_do_not_fit_the_model_is_refused_at_prediction() {
    let p = open(&scratch("misfit"));
    p.add_examples("inbox", &examples(6)).unwrap();
    let outcome = p.train("inbox", &adapting(AdaptChoice::Always), &QuietTraining).unwrap();
    let id = p.store().task_id("inbox").unwrap();
    let StoredHead { info, weights, .. } = p.store().head(id, outcome.version).unwrap().unwrap();
    // The same changes claimed for two layers: the model's top two layers
    // have twice the tensors.
    let mut misfit = weights.clone();
    let flag = misfit.len() - changes_bytes(&weights, &info.fingerprint) - 1;
    assert_eq!(misfit[flag], 1);
    misfit[flag + 1..flag + 5].copy_from_slice(&2u32.to_le_bytes());
    let head = NewHead {
        kind: info.kind.clone(),
        format_version: Head::format_version(),
        fingerprint: info.fingerprint.clone(),
        labels: decode_version(&p, outcome.version).labels().to_vec(),
        weights: misfit,
        report: "{}".into(),
        metrics: "null".into(),
        trained_through_example: info.trained_through_example,
        privacy: None,
        shared: false,
    };
    p.store().save_head(id, &head, attune::SaveAs::Active).unwrap();
    let refused = p.predict("inbox", &QUERIES, 1);
    assert!(matches!(&refused, Err(Error::InvalidHead(reason)) if reason.contains("do not fit")), "{refused:?}");
    // Going back to the good head mends the task.
    p.rollback("inbox", outcome.version).unwrap();
    assert_eq!(p.predict("inbox", &QUERIES, 1).unwrap().0.len(), 3);
}

#[test]
fn cancelling_adaptation_stores_no_head() {
    struct CancelAtOnce;
    impl TrainListener for CancelAtOnce {
        fn is_cancelled(&self) -> bool {
            true
        }
    }
    let p = open(&scratch("cancel"));
    p.add_examples("inbox", &examples(6)).unwrap();
    let cancelled = p.train("inbox", &adapting(AdaptChoice::Always), &CancelAtOnce);
    assert!(matches!(cancelled, Err(Error::Cancelled)), "{cancelled:?}");
    assert!(p.heads("inbox").unwrap().is_empty());
}

#[test]
fn a_model_upgrade_retrains_an_adapted_task_and_drops_the_old_trunk_states() {
    let p = open(&scratch("upgrade"));
    p.add_examples("inbox", &examples(6)).unwrap();
    p.train("inbox", &adapting(AdaptChoice::Always), &QuietTraining).unwrap();
    assert_eq!(p.store().trunk_state_size().unwrap().0, 18);
    let outcome = p.upgrade_model(&support::tiny_next_dir(), &EncoderOptions::default(), &attune::SILENT).unwrap();
    let trained = outcome.tasks[0].trained.as_ref().expect("retrained");
    // The upgrade trains with the defaults: the report says what became of adaptation.
    assert!(trained.report.adaptation.is_some(), "{:?}", trained.report);
    let (states, _) = p.store().trunk_state_size().unwrap();
    let adapted = trained.report.adaptation.as_ref().is_some_and(|a| a.adapted);
    assert_eq!(states, if adapted { 18 } else { 0 }, "only the new model's states are left");
    assert_eq!(p.predict("inbox", &QUERIES, 1).unwrap().0.len(), 3);
}

fn decode_version(p: &support::Opened, version: u32) -> Head {
    let id = p.store().task_id("inbox").unwrap();
    let stored = p.store().head(id, version).unwrap().unwrap();
    Head::from_bytes(&stored.weights, &stored.info.fingerprint).unwrap()
}

/// Bytes of the top section after its flag: layers, tensor count, and
/// each tensor's length and f16 values.
fn changes_bytes(weights: &[u8], fingerprint: &str) -> usize {
    let head = Head::from_bytes(weights, fingerprint).unwrap();
    let changes = head.top_changes().unwrap();
    8 + changes.tensor_lengths().iter().map(|n| 4 + 2 * n).sum::<usize>()
}

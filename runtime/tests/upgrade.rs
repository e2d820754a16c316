//! Model upgrades: from the tiny model to a second tiny model (every run)
//! and to the default one (when fetched), with predictions running all the
//! while, an interrupted first attempt that the second one resumes, and the
//! old model's vectors gone at the end.

mod support;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use attune::{
    EncodeListener, EncoderOptions, Error, NewDocument, NewExample, NewFeedback, Personalizer, PersonalizerConfig,
    PredictionSource, PrivacyOptions, QuietTraining, Signal, TrainOptions,
};

const LABELS: [(&str, &str); 3] =
    [("weather", "will it rain on day"), ("music", "play the song number"), ("alarm", "set an alarm for hour")];

/// Cancels after the first step of embedding.
struct CancelAfterFirstStep(AtomicUsize);

impl EncodeListener for CancelAfterFirstStep {
    fn on_progress(&self, _done: usize, _total: usize) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

#[derive(Default)]
struct Progress(Mutex<Vec<(usize, usize)>>);

impl EncodeListener for Progress {
    fn on_progress(&self, done: usize, total: usize) {
        self.0.lock().unwrap().push((done, total));
    }
}

#[test]
fn upgrade_to_another_tiny_model_while_predictions_keep_running() {
    upgrade_while_predicting(&support::tiny_next_dir(), "upgrade-tiny");
}

/// Int8 vectors have a fingerprint of their own: a store moves to an int8
/// graph of its own model as to a new model, never mixing the two.
#[cfg(feature = "onnx")]
#[test]
fn upgrade_to_the_same_model_compiled_to_int8() {
    let int8 = support::scratch_dir("upgrade-int8-model").join("model");
    attune::compile_model(&support::tiny_dir(), &int8, attune::Precision::Int8).unwrap();
    upgrade_while_predicting(&int8, "upgrade-int8");
}

#[test]
fn upgrade_to_the_default_model_while_predictions_keep_running() {
    let Some(new_model) = support::default_model_dir() else { return };
    upgrade_while_predicting(&new_model, "upgrade-default");
}

fn upgrade_while_predicting(new_model: &std::path::Path, tag: &str) {
    let dir = support::scratch_dir(tag);
    let options = EncoderOptions { threads: 1, ..EncoderOptions::default() };
    let config = PersonalizerConfig {
        database: dir.join("user.db"),
        model_dir: support::tiny_dir(),
        encoder: options.clone(),
        encryption_key: None,
    };
    let p = Arc::new(Personalizer::open(&config).unwrap());
    let old = p.encoder().fingerprint().to_string();
    let examples: Vec<NewExample> =
        (0..600).map(|i| NewExample::new(format!("{} {i}", LABELS[i % 3].1), LABELS[i % 3].0)).collect();
    p.add_examples("intents", &examples).unwrap();
    p.describe_label("intents", "weather", "a question about the weather").unwrap();
    let documents = [NewDocument { key: "d1".into(), text: "the umbrella is in the hall".into(), metadata: None }];
    p.add_documents("docs", &documents).unwrap();
    let feedback = NewFeedback {
        query: Some("where is my umbrella".into()),
        document_key: "d1".into(),
        signal: Signal::Click,
        created_at: None,
    };
    p.record_feedback("docs", &feedback).unwrap();
    let first = p.train("intents", &TrainOptions::default(), &QuietTraining).unwrap();
    assert!(first.promotion.promote);
    p.add_examples("private", &examples[..90]).unwrap();
    let private = TrainOptions { privacy: Some(PrivacyOptions::with_budget(8.0)), ..TrainOptions::default() };
    p.train("private", &private, &QuietTraining).unwrap();

    // Predictions from another thread for as long as the upgrade runs.
    let running = Arc::new(AtomicBool::new(true));
    let answers = Arc::new(AtomicUsize::new(0));
    let errors = Arc::new(Mutex::new(Vec::<String>::new()));
    let predictor = {
        let (p, running, answers, errors) = (p.clone(), running.clone(), answers.clone(), errors.clone());
        std::thread::spawn(move || {
            while running.load(Ordering::SeqCst) {
                match p.predict("intents", &["play the song number 7"], 1) {
                    Ok((_, PredictionSource::TrainedHead)) => answers.fetch_add(1, Ordering::SeqCst),
                    Ok((_, other)) => {
                        errors.lock().unwrap().push(format!("served by {other:?}"));
                        0
                    }
                    Err(e) => {
                        errors.lock().unwrap().push(e.to_string());
                        0
                    }
                };
            }
        })
    };

    let interrupted = p.upgrade_model(new_model, &options, &CancelAfterFirstStep(AtomicUsize::new(0)));
    assert!(matches!(interrupted, Err(Error::Cancelled)), "{interrupted:?}");
    assert_eq!(p.encoder().fingerprint(), old, "a cancelled upgrade keeps the old model");

    let progress = Progress::default();
    let outcome = p.upgrade_model(new_model, &options, &progress).unwrap();
    running.store(false, Ordering::SeqCst);
    predictor.join().unwrap();
    assert_eq!(*errors.lock().unwrap(), Vec::<String>::new(), "predictions failed or fell back during the upgrade");
    assert!(answers.load(Ordering::SeqCst) > 0);

    // 600 examples (the private task's are among them) + 1 description + 1 document + 1 query.
    assert_eq!(outcome.texts, 603);
    assert_eq!(outcome.embedded_now, 603 - 256, "the second call resumed after the first step");
    assert_eq!(progress.0.lock().unwrap().last(), Some(&(603, 603)));
    assert_eq!(
        (outcome.from_fingerprint.as_str(), outcome.to_fingerprint.as_str()),
        (old.as_str(), p.encoder().fingerprint())
    );
    assert_ne!(outcome.from_fingerprint, outcome.to_fingerprint);
    // Examples, description and document; the query had not been embedded yet.
    assert_eq!(outcome.old_vectors_dropped, 602);

    let intents = outcome.tasks.iter().find(|t| t.task == "intents").unwrap();
    let trained = intents.trained.as_ref().unwrap();
    let heads = p.heads("intents").unwrap();
    let active = heads.iter().find(|h| h.active).unwrap();
    assert_eq!(active.version, trained.version);
    assert_eq!(active.fingerprint, p.encoder().fingerprint());
    assert!(heads.iter().any(|h| h.fingerprint == old && !h.active), "the old head is kept, inactive");
    assert!(outcome.tasks.iter().find(|t| t.task == "docs").unwrap().trained.is_none());
    // The private task is retrained privately, charged to its ledger.
    let private = outcome.tasks.iter().find(|t| t.task == "private").unwrap();
    let retrained = private.trained.as_ref().expect("its budget affords a second run");
    assert!(retrained.report.private_run.is_some());
    let private_heads = p.heads("private").unwrap();
    assert!(private_heads.iter().all(|h| h.privacy.is_some()));
    assert!(private_heads.iter().any(|h| h.active && h.fingerprint == p.encoder().fingerprint()));

    let (predictions, source) =
        p.predict("intents", &["play the song number 1234", "set an alarm for hour 9"], 1).unwrap();
    assert_eq!(source, PredictionSource::TrainedHead);
    let top: Vec<&str> = predictions.iter().map(|p| p.top[0].label.as_str()).collect();
    assert_eq!(top, ["music", "alarm"]);
    assert_eq!(p.search("docs", "umbrella", 1).unwrap()[0].key, "d1");
    let texts: Vec<&str> = examples.iter().map(|e| e.text.as_str()).collect();
    let store = attune::Store::open(&config.database, &attune::StoreOptions::default()).unwrap();
    assert!(store.cached_features(&old, &texts).unwrap().iter().all(Option::is_none), "old vectors remain");
    let _ = std::fs::remove_dir_all(&dir);
}

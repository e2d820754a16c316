//! The `Personalizer` end to end on the committed tiny model: open, describe,
//! add, train, predict, search, feedback, forget, reopen.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use attune::{
    EncoderOptions, EpochProgress, Error, Forget, HeadChoice, HeadKind, NewDocument, NewExample, NewFeedback,
    Personalizer, PersonalizerConfig, PredictionSource, QuietTraining, Retrain, Signal, TrainListener, TrainOptions,
};
use support::tiny_dir;

fn config(tag: &str) -> PersonalizerConfig {
    let dir = std::env::temp_dir().join(format!("attune-personalizer-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    PersonalizerConfig {
        database: dir.join("user.db"),
        model_dir: tiny_dir(),
        encoder: EncoderOptions::default(),
        encryption_key: None,
    }
}

const MESSAGES: [(&str, &str); 12] = [
    ("pay the water bill", "bills"),
    ("bank card charged twice", "bills"),
    ("transfer money to the bank account", "bills"),
    ("book a flight ticket", "travel"),
    ("hotel room for the weekend", "travel"),
    ("train ticket to the city", "travel"),
    ("call my mother tonight", "family"),
    ("dinner with my father", "family"),
    ("my mother and father are coming", "family"),
    ("the bill for the flight", "bills"),
    ("a ticket for the train", "travel"),
    ("call my father", "family"),
];

#[test]
fn the_whole_lifecycle_persists_across_reopen() {
    let config = config("lifecycle");
    {
        let p = Personalizer::open(&config).unwrap();
        assert!(matches!(p.predict("inbox", &["hello"], 1), Err(Error::UnknownTask(_))));
        p.describe_label("inbox", "bills", "bank bill money pay").unwrap();
        p.describe_label("inbox", "travel", "flight train hotel ticket").unwrap();
        let (_, source) = p.predict("inbox", &["pay the bill"], 2).unwrap();
        assert_eq!(source, PredictionSource::ZeroShot);

        let examples: Vec<NewExample> = MESSAGES.iter().map(|(t, l)| NewExample::new(*t, *l)).collect();
        p.add_examples("inbox", &examples[..3]).unwrap();
        let (_, source) = p.predict("inbox", &["pay the bill"], 2).unwrap();
        assert_eq!(source, PredictionSource::Prototypes);

        p.add_examples("inbox", &examples).unwrap();
        let outcome = p.train("inbox", &TrainOptions::default(), &QuietTraining).unwrap();
        assert!(outcome.promotion.promote, "{:?}", outcome.promotion);
        let (predictions, source) = p.predict("inbox", &["pay the bill", "call my mother"], 3).unwrap();
        assert_eq!(source, PredictionSource::TrainedHead);
        assert_eq!(predictions.len(), 2);
        assert_eq!(predictions[0].top.len(), 3);
        let total: f32 = predictions[0].top.iter().map(|s| s.probability).sum();
        assert!((total - 1.0).abs() < 1e-4, "three labels' probabilities sum to one");

        p.add_documents(
            "notes",
            &[
                NewDocument { key: "a".into(), text: "the flight ticket and the hotel".into(), metadata: None },
                NewDocument { key: "b".into(), text: "dinner with my mother".into(), metadata: None },
            ],
        )
        .unwrap();
        let hits = p.search("notes", "the flight ticket and the hotel", 2).unwrap();
        assert_eq!(hits[0].key, "a");
        assert!(hits[0].score > hits[1].score && (hits[0].score - 1.0).abs() < 1e-4);
        p.record_feedback(
            "notes",
            &NewFeedback {
                query: Some("flight".into()),
                document_key: "a".into(),
                signal: Signal::Click,
                created_at: None,
            },
        )
        .unwrap();
    }
    // Everything is still there after reopening.
    let p = Personalizer::open(&config).unwrap();
    assert_eq!(p.stats("inbox").unwrap().examples, 12);
    assert_eq!(p.stats("notes").unwrap().feedback, 1);
    let (_, source) = p.predict("inbox", &["pay the bill"], 1).unwrap();
    assert_eq!(source, PredictionSource::TrainedHead);

    // Forgetting a label retrains from what remains: it is never predicted again.
    let outcome = p.forget(Some("inbox"), &Forget::Label("family".into())).unwrap();
    assert_eq!(outcome.forgotten.examples, 4);
    assert!(matches!(outcome.retrain, Retrain::Retrained { private: false, .. }), "{:?}", outcome.retrain);
    let (predictions, source) = p.predict("inbox", &["call my mother", "dinner with my father"], 5).unwrap();
    assert_eq!(source, PredictionSource::TrainedHead, "retrained at once");
    assert!(predictions.iter().all(|p| p.top.iter().all(|s| s.label != "family")));
    let versions = p.heads("inbox").unwrap();
    assert!(versions.iter().any(|h| h.stale) && versions.iter().any(|h| h.active && !h.stale));
}

#[test]
fn a_task_with_nothing_cannot_predict_and_evaluation_counts_unknown_labels() {
    let p = Personalizer::open(&config("untrained")).unwrap();
    p.add_documents("empty", &[NewDocument { key: "d".into(), text: "a document".into(), metadata: None }]).unwrap();
    assert!(matches!(p.predict("empty", &["x"], 1), Err(Error::NotTrained(_))));
    p.add_examples("t", &MESSAGES.iter().map(|(t, l)| NewExample::new(*t, *l)).collect::<Vec<_>>()).unwrap();
    let metrics =
        p.evaluate("t", &[("pay the bill".into(), "bills".into()), ("x".into(), "never-seen".into())]).unwrap();
    assert_eq!(metrics.n, 2);
    assert!(metrics.accuracy <= 0.5, "the unknown label is an error");
}

/// Holds training at its first epoch until the readers have predicted
/// while it runs, so the two really overlap.
struct HoldTraining<'a> {
    started: &'a Barrier,
    predicted: &'a AtomicUsize,
    needed: usize,
}

impl TrainListener for HoldTraining<'_> {
    fn on_epoch(&self, progress: &EpochProgress) {
        if progress.epoch != 1 || self.predicted.load(Ordering::SeqCst) >= self.needed {
            return;
        }
        self.started.wait();
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.predicted.load(Ordering::SeqCst) < self.needed && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

#[test]
fn concurrent_predictions_while_training() {
    const READERS: usize = 3;
    let p = Arc::new(Personalizer::open(&config("threads")).unwrap());
    p.add_examples("t", &MESSAGES.iter().map(|(t, l)| NewExample::new(*t, *l)).collect::<Vec<_>>()).unwrap();
    let started = Barrier::new(READERS + 1);
    let predicted = AtomicUsize::new(0);
    let hold = HoldTraining { started: &started, predicted: &predicted, needed: READERS * 20 };
    let during_training = AtomicUsize::new(0);
    let training = std::sync::atomic::AtomicBool::new(true);
    std::thread::scope(|scope| {
        let trainer = Arc::clone(&p);
        let (hold, training) = (&hold, &training);
        scope.spawn(move || {
            let linear = TrainOptions { head: HeadChoice::Only(HeadKind::Linear), ..TrainOptions::default() };
            trainer.train("t", &linear, hold).unwrap();
            training.store(false, Ordering::SeqCst);
        });
        for _ in 0..READERS {
            let reader = Arc::clone(&p);
            let (started, predicted, during_training) = (&started, &predicted, &during_training);
            scope.spawn(move || {
                started.wait();
                for _ in 0..20 {
                    let (predictions, _) = reader.predict("t", &["pay the bill"], 1).unwrap();
                    assert_eq!(predictions.len(), 1);
                    if training.load(Ordering::SeqCst) {
                        during_training.fetch_add(1, Ordering::SeqCst);
                    }
                    predicted.fetch_add(1, Ordering::SeqCst);
                }
            });
        }
    });
    assert_eq!(during_training.load(Ordering::SeqCst), READERS * 20, "every prediction ran while training ran");
}

#[test]
fn feedback_personalises_search_and_recommendations() {
    let p = Personalizer::open(&config("ranking")).unwrap();
    let documents: Vec<NewDocument> = [
        ("train", "a train ticket to the city"),
        ("flight", "a flight ticket for the weekend"),
        ("hotel", "a hotel room for the weekend"),
        ("dinner", "dinner with my mother"),
    ]
    .iter()
    .map(|(key, text)| NewDocument { key: key.to_string(), text: text.to_string(), metadata: None })
    .collect();
    p.add_documents("docs", &documents).unwrap();
    let query = "a ticket for the weekend";
    let plain = p.search("docs", query, 4).unwrap();
    // Without feedback: exactly the cosine order, scores included.
    let features = p.encoder().embed(&[query]).unwrap();
    let doc_vectors = p.encoder().embed(&documents.iter().map(|d| d.text.as_str()).collect::<Vec<_>>()).unwrap();
    let mut cosine: Vec<(String, f32)> = documents
        .iter()
        .zip(doc_vectors.rows())
        .map(|(d, v)| (d.key.clone(), v.iter().zip(features.row(0)).map(|(a, b)| a * b).sum()))
        .collect();
    cosine.sort_by(|a, b| b.1.total_cmp(&a.1));
    let plain_keys: Vec<&str> = plain.iter().map(|h| h.key.as_str()).collect();
    assert_eq!(plain_keys, cosine.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>());

    // The user keeps skipping the top result and choosing the last one.
    let (top, last) = (plain[0].key.clone(), plain[3].key.clone());
    for _ in 0..5 {
        for (key, signal) in [(&top, Signal::Skip), (&last, Signal::Click)] {
            let event = NewFeedback { query: Some(query.into()), document_key: key.clone(), signal, created_at: None };
            p.record_feedback("docs", &event).unwrap();
        }
    }
    let personal = p.search("docs", query, 4).unwrap();
    let position = |hits: &[attune::SearchHit], key: &str| hits.iter().position(|h| h.key == key).unwrap();
    assert!(position(&personal, &last) < 3, "the chosen document moved up: {personal:?}");
    let score = |hits: &[attune::SearchHit], key: &str| hits.iter().find(|h| h.key == key).unwrap().score;
    let lead_before = score(&plain, &top) - score(&plain, &last);
    let lead_after = score(&personal, &top) - score(&personal, &last);
    assert!(lead_after < lead_before / 2.0, "the skipped one's lead shrank: {lead_before} → {lead_after}");
    let recommended = p.recommend("docs", 1).unwrap();
    assert_eq!(recommended[0].key, last);
}

#[test]
fn a_stored_prototype_head_counts_examples_added_after_it() {
    let p = Personalizer::open(&config("fresh-prototypes")).unwrap();
    let examples: Vec<NewExample> = MESSAGES.iter().map(|(t, l)| NewExample::new(*t, *l)).collect();
    p.add_examples("inbox", &examples).unwrap();
    let prototypes = TrainOptions { head: HeadChoice::Only(HeadKind::Prototype), ..TrainOptions::default() };
    assert!(p.train("inbox", &prototypes, &QuietTraining).unwrap().promotion.promote);
    // A label the stored head has never seen, taught by its examples alone.
    let weather = ["rain and cold weather", "the weather is hot and sun", "cold rain this morning"];
    let added: Vec<NewExample> = weather.iter().map(|t| NewExample::new(*t, "weather")).collect();
    p.add_examples("inbox", &added).unwrap();
    let (predictions, source) = p.predict("inbox", &["rain and cold weather today"], 4).unwrap();
    assert_eq!(source, PredictionSource::TrainedHead);
    assert_eq!(predictions[0].top[0].label, "weather", "{predictions:?}");
    assert_eq!(predictions[0].top.len(), 4, "all four labels, the new one included");
}

/// Stops a call at its first progress report.
struct CancelAtFirstReport(AtomicUsize);

impl attune::EncodeListener for CancelAtFirstReport {
    fn on_progress(&self, _done: usize, _total: usize) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
    fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst) > 0
    }
}

#[test]
fn a_cancelled_import_leaves_the_database_as_before() {
    let config = config("cancelled-import");
    let p = support::Opened::open(&config);
    let examples: Vec<NewExample> = MESSAGES.iter().map(|(t, l)| NewExample::new(*t, *l)).collect();
    p.add_examples("inbox", &examples).unwrap();
    let before = (p.stats("inbox").unwrap(), p.labels("inbox").unwrap(), p.store().feature_fingerprints().unwrap());

    let file = config.database.with_file_name("history.csv");
    let rows: Vec<String> = (0..3_000).map(|i| format!("imported message number {i},bills")).collect();
    std::fs::write(&file, format!("text,label\n{}\n", rows.join("\n"))).unwrap();
    let listener = CancelAtFirstReport(AtomicUsize::new(0));
    let result = p.import_file("inbox", &file, None, &attune::Columns::default(), &listener);
    assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
    assert!(matches!(
        p.import_file("other", &file, None, &attune::Columns::default(), &listener),
        Err(Error::Cancelled)
    ));

    let after = (p.stats("inbox").unwrap(), p.labels("inbox").unwrap(), p.store().feature_fingerprints().unwrap());
    assert_eq!(before, after);
    assert!(matches!(p.stats("other"), Err(Error::UnknownTask(_))), "a cancelled import creates no task");

    let outcome = p.import_file("inbox", &file, None, &attune::Columns::default(), &attune::SILENT).unwrap();
    assert_eq!(outcome.inserted, 3_000);
    assert_eq!(p.stats("inbox").unwrap().examples, 3_000 + MESSAGES.len() as u64);
}

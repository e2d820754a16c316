//! Load: reader threads call `predict` and `search` while one thread trains
//! over and over and another adds examples and records feedback, for a
//! bounded time. Asserts no deadlock (every thread finishes in time), no
//! error and no lost write; prints `predict` throughput and p50/p95/p99
//! latency under that load next to the same readers on an idle runtime.
//! (The numbers are a report, not a pass/fail criterion.)

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use attune::{
    EncoderOptions, NewDocument, NewExample, NewFeedback, Personalizer, PersonalizerConfig, QuietTraining, Signal,
    TrainOptions,
};

const READERS: usize = 2;
const IDLE: Duration = Duration::from_secs(3);
const LOADED: Duration = Duration::from_secs(6);
/// Past this, a thread that has not finished is taken for deadlocked.
const GRACE: Duration = Duration::from_secs(120);
const LABELS: [&str; 5] = ["travel", "money", "family", "work", "health"];

#[derive(Default)]
struct Latencies(Mutex<Vec<Duration>>);

impl Latencies {
    fn summary(&self, seconds: f64) -> String {
        let mut all = self.0.lock().unwrap().clone();
        all.sort();
        let at = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)].as_secs_f64() * 1e3;
        format!(
            "{:>6} calls {:>7.1}/s   p50 {:>6.2} ms   p95 {:>6.2} ms   p99 {:>6.2} ms",
            all.len(),
            all.len() as f64 / seconds,
            at(0.50),
            at(0.95),
            at(0.99)
        )
    }
}

/// Runs `READERS` threads of predict (and search when `search`) for `length`.
fn readers(
    p: &Arc<Personalizer>,
    length: Duration,
    search: bool,
    errors: &Arc<Mutex<Vec<String>>>,
) -> (Arc<Latencies>, Vec<mpsc::Receiver<()>>) {
    let latencies = Arc::new(Latencies::default());
    let sentences = support::sentences();
    let mut done = Vec::new();
    for reader in 0..READERS {
        let (p, latencies, errors) = (Arc::clone(p), Arc::clone(&latencies), Arc::clone(errors));
        let sentences = sentences.clone();
        let (sender, receiver) = mpsc::channel();
        done.push(receiver);
        std::thread::spawn(move || {
            let end = Instant::now() + length;
            let mut i = reader;
            while Instant::now() < end {
                // A new text each call (in each phase): the encoder runs, as
                // for a new message.
                let text = format!("{} ({search} {reader} {i})", sentences[i % sentences.len()]);
                let start = Instant::now();
                match p.predict("intents", &[text.as_str()], 3) {
                    Ok(_) => latencies.0.lock().unwrap().push(start.elapsed()),
                    Err(e) => errors.lock().unwrap().push(format!("predict: {e}")),
                }
                if search && let Err(e) = p.search("docs", &text, 5) {
                    errors.lock().unwrap().push(format!("search: {e}"));
                }
                i += READERS;
            }
            let _ = sender.send(());
        });
    }
    (latencies, done)
}

fn wait_all(done: Vec<mpsc::Receiver<()>>, what: &str) {
    for (i, receiver) in done.into_iter().enumerate() {
        receiver.recv_timeout(GRACE).unwrap_or_else(|_| panic!("{what} thread {i} did not finish: deadlock?"));
    }
}

#[test]
fn predict_and_search_under_training_and_writes() {
    let Some(model) = support::default_model_dir() else { return };
    let dir = std::env::temp_dir().join(format!("attune-load-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = PersonalizerConfig {
        database: dir.join("user.db"),
        model_dir: model,
        encoder: EncoderOptions { threads: 1, ..EncoderOptions::default() },
        encryption_key: None,
    };
    let p = Arc::new(Personalizer::open(&config).unwrap());
    let sentences = support::sentences();
    let seed: Vec<NewExample> =
        sentences.iter().take(150).enumerate().map(|(i, s)| NewExample::new(*s, LABELS[i % LABELS.len()])).collect();
    let initial = p.add_examples("intents", &seed).unwrap().inserted;
    p.train("intents", &TrainOptions::default(), &QuietTraining).unwrap();
    let documents: Vec<NewDocument> = sentences
        .iter()
        .skip(150)
        .enumerate()
        .map(|(i, s)| NewDocument { key: format!("doc{i}"), text: s.to_string(), metadata: None })
        .collect();
    p.add_documents("docs", &documents).unwrap();
    let errors = Arc::new(Mutex::new(Vec::new()));

    let (idle, done) = readers(&p, IDLE, false, &errors);
    wait_all(done, "idle reader");

    let stop = Arc::new(AtomicBool::new(false));
    let trainings = Arc::new(AtomicU64::new(0));
    let (trainer_done, trainer_finished) = mpsc::channel();
    {
        let (p, stop, trainings, errors) =
            (Arc::clone(&p), Arc::clone(&stop), Arc::clone(&trainings), Arc::clone(&errors));
        std::thread::spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                match p.train("intents", &TrainOptions::default(), &QuietTraining) {
                    Ok(_) => trainings.fetch_add(1, Ordering::SeqCst),
                    Err(e) => {
                        errors.lock().unwrap().push(format!("train: {e}"));
                        0
                    }
                };
            }
            let _ = trainer_done.send(());
        });
    }
    let (writer_done, writer_finished) = mpsc::channel();
    {
        let (p, stop, errors) = (Arc::clone(&p), Arc::clone(&stop), Arc::clone(&errors));
        std::thread::spawn(move || {
            let (mut added, mut feedback) = (0u64, 0u64);
            while !stop.load(Ordering::SeqCst) {
                let text = format!("load example number {added}");
                match p.add_examples("intents", &[NewExample::new(text, LABELS[added as usize % LABELS.len()])]) {
                    Ok(outcome) => added += outcome.inserted,
                    Err(e) => errors.lock().unwrap().push(format!("add: {e}")),
                }
                let event = NewFeedback {
                    query: Some(format!("query {feedback}")),
                    document_key: format!("doc{}", feedback % 50),
                    signal: if feedback % 3 == 0 { Signal::Click } else { Signal::Impression },
                    created_at: None,
                };
                match p.record_feedback("docs", &event) {
                    Ok(_) => feedback += 1,
                    Err(e) => errors.lock().unwrap().push(format!("feedback: {e}")),
                }
            }
            let _ = writer_done.send((added, feedback));
        });
    }
    let (loaded, done) = readers(&p, LOADED, true, &errors);
    wait_all(done, "reader under load");
    stop.store(true, Ordering::SeqCst);
    trainer_finished.recv_timeout(GRACE).expect("the trainer did not finish: deadlock?");
    let (added, feedback) = writer_finished.recv_timeout(GRACE).expect("the writer did not finish: deadlock?");

    let errors = errors.lock().unwrap();
    assert!(errors.is_empty(), "{} errors, first: {:?}", errors.len(), errors.first());
    assert_eq!(p.stats("intents").unwrap().examples, initial + added, "lost example writes");
    assert_eq!(p.stats("docs").unwrap().feedback, feedback, "lost feedback writes");
    attune::Store::open(&config.database, &attune::StoreOptions::default()).unwrap().integrity_check().unwrap();
    eprintln!("predict, {READERS} reader threads, 1 encoder thread each, default model:");
    eprintln!("  idle                       {}", idle.summary(IDLE.as_secs_f64()));
    eprintln!("  training + writes + search {}", loaded.summary(LOADED.as_secs_f64()));
    eprintln!(
        "  meanwhile: {} trainings, {added} examples added, {feedback} feedback events, all present",
        trainings.load(Ordering::SeqCst)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

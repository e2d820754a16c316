//! The story of `tests/data/scenario.json`, which every binding's test suite
//! also follows, told through the Rust API: on the tiny model in every run
//! (the flow: sources, counts, forgetting, export, reopening), and on the
//! default model when it is fetched (the predicted labels too).

mod support;

use attune::{
    EncoderOptions, Forget, NewDocument, NewExample, NewFeedback, Personalizer, PersonalizerConfig, PredictionSource,
    QuietTraining, Signal, TrainOptions,
};
use serde::Deserialize;
use support::{default_model_dir, scratch_dir};

#[derive(Deserialize)]
struct Scenario {
    dimension: usize,
    task: String,
    descriptions: Vec<Description>,
    zero_shot: Vec<Labelled>,
    examples: Vec<Labelled>,
    seed: u64,
    trained: Vec<Labelled>,
    replies: Replies,
    forget_label: String,
    after_forget: AfterForget,
    export: Export,
    reopened: Reopened,
}

#[derive(Deserialize)]
struct Description {
    label: String,
    description: String,
}

#[derive(Deserialize)]
struct Labelled {
    text: String,
    label: String,
}

#[derive(Deserialize)]
struct Replies {
    task: String,
    documents: Vec<Reply>,
    query: String,
    chosen: String,
    rounds: usize,
}

#[derive(Deserialize)]
struct Reply {
    key: String,
    text: String,
}

#[derive(Deserialize)]
struct AfterForget {
    text: String,
    examples_forgotten: u64,
}

#[derive(Deserialize)]
struct Export {
    contains: String,
    lacks: String,
}

#[derive(Deserialize)]
struct Reopened {
    examples: u64,
    labels: u64,
    feedback: u64,
    predict: Labelled,
}

fn top_label(p: &Personalizer, task: &str, text: &str) -> (String, PredictionSource) {
    let (predictions, source) = p.predict(task, &[text], 3).unwrap();
    (predictions[0].top[0].label.clone(), source)
}

fn feedback(query: &str, key: &str, signal: Signal) -> NewFeedback {
    NewFeedback { query: Some(query.into()), document_key: key.into(), signal, created_at: None }
}

/// What a run of the scenario checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Checks {
    /// Every step's outcome and the labels a real sentence encoder predicts.
    Labels,
    /// Every step's outcome but the predicted labels, which a tiny random
    /// model cannot be expected to get right.
    Flow,
}

#[test]
fn the_shared_scenario_on_the_default_model() {
    let Some(model_dir) = default_model_dir() else { return };
    run(model_dir, Checks::Labels, "scenario");
}

#[test]
fn the_shared_scenario_flows_on_the_tiny_model() {
    run(support::tiny_dir(), Checks::Flow, "scenario-tiny");
}

fn run(model_dir: std::path::PathBuf, checks: Checks, tag: &str) {
    let s: Scenario = serde_json::from_str(include_str!("../../tests/data/scenario.json")).unwrap();
    let dir = scratch_dir(tag);
    let config = PersonalizerConfig {
        database: dir.join("user.db"),
        model_dir,
        encoder: EncoderOptions::default(),
        encryption_key: None,
    };
    let p = Personalizer::open(&config).unwrap();
    if checks == Checks::Labels {
        assert_eq!(p.encoder().dim(), s.dimension);
    }
    let task = s.task.as_str();
    let expect = |p: &Personalizer, text: &str, label: &str, source: PredictionSource| {
        let (predicted, from) = top_label(p, task, text);
        assert_eq!(from, source, "{text}");
        if checks == Checks::Labels {
            assert_eq!(predicted, label, "{text}");
        }
    };

    for d in &s.descriptions {
        p.describe_label(task, &d.label, &d.description).unwrap();
    }
    for probe in &s.zero_shot {
        expect(&p, &probe.text, &probe.label, PredictionSource::ZeroShot);
    }

    let examples: Vec<NewExample> = s.examples.iter().map(|e| NewExample::new(&e.text, &e.label)).collect();
    assert_eq!(p.add_examples(task, &examples).unwrap().inserted, examples.len() as u64);
    let options = TrainOptions { seed: s.seed, ..TrainOptions::default() };
    let trained = p.train(task, &options, &QuietTraining).unwrap();
    assert!(trained.promotion.promote, "{}", trained.promotion.reason);
    assert_eq!(trained.report.classes, s.descriptions.len() as u64);
    for probe in &s.trained {
        expect(&p, &probe.text, &probe.label, PredictionSource::TrainedHead);
    }

    let replies = &s.replies;
    let documents: Vec<NewDocument> = replies
        .documents
        .iter()
        .map(|d| NewDocument { key: d.key.clone(), text: d.text.clone(), metadata: None })
        .collect();
    p.add_documents(&replies.task, &documents).unwrap();
    let plain = p.search(&replies.task, &replies.query, documents.len()).unwrap();
    assert_ne!(plain[0].key, replies.chosen, "the scenario needs a reply that is not first before feedback");
    for _ in 0..replies.rounds {
        for hit in &plain {
            p.record_feedback(&replies.task, &feedback(&replies.query, &hit.key, Signal::Impression)).unwrap();
        }
        p.record_feedback(&replies.task, &feedback(&replies.query, &replies.chosen, Signal::Click)).unwrap();
    }
    assert_eq!(p.search(&replies.task, &replies.query, documents.len()).unwrap()[0].key, replies.chosen);

    let forgotten = p.forget(Some(task), &Forget::Label(s.forget_label.clone())).unwrap();
    assert_eq!(forgotten.forgotten.examples, s.after_forget.examples_forgotten);
    let (after, _) = p.predict(task, &[s.after_forget.text.as_str()], 3).unwrap();
    assert!(after[0].top.iter().all(|scored| scored.label != s.forget_label));

    let export = dir.join("export.json");
    p.export_json_file(&export).unwrap();
    let exported = std::fs::read_to_string(&export).unwrap();
    assert!(exported.contains(&s.export.contains) && !exported.contains(&s.export.lacks));
    drop(p);

    let reopened = Personalizer::open(&config).unwrap();
    let stats = reopened.stats(task).unwrap();
    assert_eq!((stats.examples, stats.labels), (s.reopened.examples, s.reopened.labels));
    assert!(stats.active_head_version.is_some());
    let probe = &s.reopened.predict;
    expect(&reopened, &probe.text, &probe.label, PredictionSource::TrainedHead);
    assert_eq!(reopened.stats(&replies.task).unwrap().feedback, s.reopened.feedback);
}

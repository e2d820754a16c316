//! The store on real SQLite files: data, rights, bad files, threads, crashes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use attune::{
    Error, Forget, NewDocument, NewExample, NewFeedback, NewHead, Retention, SaveAs, Signal, Store, StoreOptions,
    TaskId, VectorEncoding,
};

fn scratch(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "attune-store-{tag}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn open(path: &Path) -> Store {
    Store::open(path, &StoreOptions::default()).unwrap()
}

fn example(text: &str, label: &str) -> NewExample {
    NewExample::new(text, label)
}

fn head(labels: &[&str], trained_through: i64) -> NewHead {
    NewHead {
        kind: "linear".into(),
        format_version: 1,
        fingerprint: "fp-1".into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        weights: vec![7; 64],
        report: "{}".into(),
        metrics: r#"{"accuracy": 0.9}"#.into(),
        trained_through_example: trained_through,
        privacy: None,
        shared: false,
    }
}

#[test]
fn examples_persist_across_reopen_and_duplicates_are_stored_once() {
    let path = scratch("persist").join("user.db");
    {
        let store = open(&path);
        let task = store.ensure_task("inbox-folders").unwrap();
        let outcome = store
            .add_examples(task, &[example("dinner on friday?", "personal"), example("Q3 budget review", "work")])
            .unwrap();
        assert_eq!((outcome.inserted, outcome.duplicates), (2, 0));
        let again = store.add_examples(task, &[example("dinner on friday?", "personal")]).unwrap();
        assert_eq!((again.inserted, again.duplicates), (0, 1));
        // The same text under another label is a different example.
        assert_eq!(store.add_examples(task, &[example("dinner on friday?", "work")]).unwrap().inserted, 1);
    }
    let store = open(&path);
    let task = store.task_id("inbox-folders").unwrap();
    assert_eq!(store.examples(task).unwrap().len(), 3);
    let counts = store.label_counts(task).unwrap();
    assert_eq!((counts[0].label.as_str(), counts[0].examples), ("work", 2));
    let info = store.task("inbox-folders").unwrap();
    assert_eq!((info.examples, info.labels), (3, 2));
    store.integrity_check().unwrap();
}

#[test]
fn bad_input_is_refused_and_nothing_is_half_written() {
    let store = open(&scratch("bad-input").join("user.db"));
    let task = store.ensure_task("intents").unwrap();
    let mut nan = example("fine text", "a");
    nan.weight = f64::NAN;
    let huge = example(&"x".repeat(2 << 20), "a");
    for bad in [vec![example("ok", "a"), example("   ", "a")], vec![example("ok", "")], vec![nan], vec![huge]] {
        assert!(matches!(store.add_examples(task, &bad), Err(Error::InvalidInput(_))));
    }
    assert!(store.examples(task).unwrap().is_empty(), "a refused batch leaves nothing behind");
    assert!(matches!(store.task_id("nope"), Err(Error::UnknownTask(name)) if name == "nope"));
    assert!(matches!(store.ensure_task(" "), Err(Error::InvalidInput(_))));
}

#[test]
fn files_that_are_not_ours_are_refused_untouched() {
    let dir = scratch("foreign");
    let text = dir.join("notes.txt");
    std::fs::write(&text, "this is not a database, just a text file that is long enough ".repeat(100)).unwrap();
    let before = std::fs::read(&text).unwrap();
    assert!(matches!(Store::open(&text, &StoreOptions::default()), Err(Error::DatabaseUnreadable(_))));
    assert_eq!(std::fs::read(&text).unwrap(), before);

    // A truncated database.
    let db = dir.join("user.db");
    {
        let store = open(&db);
        let task = store.ensure_task("t").unwrap();
        store.add_examples(task, &(0..500).map(|i| example(&format!("text {i}"), "a")).collect::<Vec<_>>()).unwrap();
        store.compact().unwrap();
    }
    let bytes = std::fs::read(&db).unwrap();
    let cut = dir.join("cut.db");
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let outcome = Store::open(&cut, &StoreOptions::default()).and_then(|s| {
        s.integrity_check()?;
        s.examples(s.task_id("t")?)
    });
    assert!(matches!(outcome, Err(Error::DatabaseUnreadable(_))), "{outcome:?}");

    // Not a writable location.
    let error = Store::open(&text.join("user.db"), &StoreOptions::default()).unwrap_err();
    assert!(matches!(error, Error::Storage(_)), "{error}");
}

#[test]
fn a_database_from_a_newer_attune_is_refused_untouched() {
    let path = scratch("newer").join("user.db");
    drop(open(&path));
    {
        let raw = rusqlite::Connection::open(&path).unwrap();
        raw.pragma_update(None, "user_version", 99).unwrap();
        raw.pragma_update(None, "journal_mode", "DELETE").unwrap();
    }
    let before = std::fs::read(&path).unwrap();
    let error = Store::open(&path, &StoreOptions::default()).unwrap_err();
    assert!(matches!(error, Error::DatabaseTooNew { found: 99, .. }), "{error}");
    assert_eq!(std::fs::read(&path).unwrap(), before);
}

#[test]
fn feature_cache_hits_misses_and_model_changes() {
    let store = open(&scratch("features").join("user.db"));
    let (a, b) = ([0.6f32, 0.8, 0.0], [0.0f32, 0.6, 0.8]);
    store.cache_features("fp-1", &[("alpha", &a[..]), ("beta", &b[..])], VectorEncoding::F32).unwrap();
    store.cache_features("fp-2", &[("alpha", &b[..])], VectorEncoding::F16).unwrap();
    let got = store.cached_features("fp-1", &["alpha", "gamma", "beta"]).unwrap();
    assert_eq!(got, vec![Some(a.to_vec()), None, Some(b.to_vec())]);
    let other = store.cached_features("fp-2", &["alpha"]).unwrap();
    assert!(other[0].as_ref().unwrap().iter().zip(b).all(|(x, y)| (x - y).abs() < 1e-3), "f16 within 1e-3");
    assert_eq!(store.drop_features_except("fp-2").unwrap(), 2);
    assert_eq!(store.cached_features("fp-1", &["alpha"]).unwrap(), vec![None]);
    let nan = [f32::NAN, 0.0, 0.0];
    assert!(matches!(
        store.cache_features("fp-2", &[("x", &nan[..])], VectorEncoding::F32),
        Err(Error::InvalidInput(_))
    ));
}

#[test]
fn heads_are_versioned_promoted_and_rolled_back() {
    let store = open(&scratch("heads").join("user.db"));
    let task = store.ensure_task("intents").unwrap();
    assert!(store.active_head(task).unwrap().is_none());
    assert_eq!(store.save_head(task, &head(&["a", "b"], 10), SaveAs::Active).unwrap(), 1);
    assert_eq!(store.save_head(task, &head(&["a", "b", "c"], 20), SaveAs::Inactive).unwrap(), 2);
    assert_eq!(store.active_head(task).unwrap().unwrap().info.version, 1, "a candidate is not promoted");
    store.activate_head(task, 2).unwrap();
    let active = store.active_head(task).unwrap().unwrap();
    assert_eq!((active.info.version, active.labels.len()), (2, 3));
    store.activate_head(task, 1).unwrap();
    assert_eq!(store.task("intents").unwrap().active_head_version, Some(1));
    assert!(matches!(store.activate_head(task, 9), Err(Error::InvalidInput(_))));
    assert_eq!(store.heads(task).unwrap().iter().filter(|h| h.active).count(), 1);
}

#[test]
fn heads_of_several_tasks_are_switched_together_or_not_at_all() {
    let store = open(&scratch("switch").join("user.db"));
    let (first, second) = (store.ensure_task("first").unwrap(), store.ensure_task("second").unwrap());
    for task in [first, second] {
        store.save_head(task, &head(&["a", "b"], 10), SaveAs::Active).unwrap();
        store.save_head(task, &head(&["a", "b"], 20), SaveAs::Inactive).unwrap();
    }
    let active = |task| store.active_head(task).unwrap().unwrap().info.version;
    // The second task has no version 9: neither task switches.
    assert!(matches!(store.activate_heads(&[(first, 2), (second, 9)]), Err(Error::InvalidInput(_))));
    assert_eq!((active(first), active(second)), (1, 1));
    store.activate_heads(&[(first, 2), (second, 2)]).unwrap();
    assert_eq!((active(first), active(second)), (2, 2));
}

#[test]
fn old_head_versions_are_deleted_but_the_active_and_the_shared_one_stay() {
    let store = open(&scratch("head-versions").join("user.db"));
    let task = store.ensure_task("intents").unwrap();
    let shared = NewHead { shared: true, ..head(&["a", "b"], 0) };
    assert_eq!(store.save_head(task, &shared, SaveAs::Inactive).unwrap(), 1);
    assert_eq!(store.save_head(task, &head(&["a", "b"], 1), SaveAs::Active).unwrap(), 2);
    // Eight candidates that are never promoted.
    for n in 0..8 {
        assert_eq!(store.save_head(task, &head(&["a", "b"], 2 + n), SaveAs::Inactive).unwrap(), 3 + n as u32);
    }
    let versions: Vec<(u32, bool, bool)> =
        store.heads(task).unwrap().iter().map(|h| (h.version, h.active, h.shared)).collect();
    let newest: Vec<(u32, bool, bool)> = (6..=10).map(|v| (v, false, false)).collect();
    assert_eq!(versions, [vec![(1, false, true), (2, true, false)], newest].concat());
    assert_eq!(store.latest_shared_head(task).unwrap().unwrap().info.version, 1);
    assert!(store.head(task, 3).unwrap().is_none());
    assert!(matches!(store.activate_head(task, 3), Err(Error::InvalidInput(_))), "a deleted version cannot come back");
    // Promoting the newest releases the old active version once it is out of the window.
    store.activate_head(task, 10).unwrap();
    store.save_head(task, &head(&["a", "b"], 20), SaveAs::Inactive).unwrap();
    let kept: Vec<u32> = store.heads(task).unwrap().iter().map(|h| h.version).collect();
    assert_eq!(kept, [1, 7, 8, 9, 10, 11]);
}

fn seeded(tag: &str) -> (Store, TaskId, PathBuf) {
    let path = scratch(tag).join("user.db");
    let store = open(&path);
    let task = store.ensure_task("inbox").unwrap();
    store
        .add_examples(
            task,
            &[
                example("zebra-pancake appointment with dr quill", "health"),
                example("quarterly numbers for the board", "work"),
                example("flight to lisbon confirmation", "travel"),
                example("pack sunscreen for lisbon", "travel"),
            ],
        )
        .unwrap();
    let vector = [1.0f32, 0.0];
    let texts =
        ["zebra-pancake appointment with dr quill", "quarterly numbers for the board", "pack sunscreen for lisbon"];
    let entries: Vec<(&str, &[f32])> = texts.iter().map(|t| (*t, &vector[..])).collect();
    store.cache_features("fp-1", &entries, VectorEncoding::F32).unwrap();
    (store, task, path)
}

#[test]
fn forgetting_a_label_removes_texts_vectors_and_the_heads_trained_on_them() {
    let (store, task, _) = seeded("forget-label");
    let max_id = store.examples(task).unwrap().iter().map(|e| e.id).max().unwrap();
    store.save_head(task, &head(&["health", "travel", "work"], max_id), SaveAs::Active).unwrap();
    let outcome = store.forget(Some("inbox"), &Forget::Label("travel".into())).unwrap();
    assert_eq!((outcome.examples, outcome.vectors, outcome.heads_invalidated), (2, 1, 1));
    assert!(store.examples(task).unwrap().iter().all(|e| e.label != "travel"));
    assert!(store.active_head(task).unwrap().is_none(), "nothing predicts from forgotten data");
    let stale = store.head(task, 1).unwrap().unwrap();
    assert!(stale.info.stale && stale.weights.is_empty());
    assert!(matches!(store.activate_head(task, 1), Err(Error::InvalidInput(_))));
    let kept = store.cached_features("fp-1", &["quarterly numbers for the board"]).unwrap();
    assert!(kept[0].is_some(), "vectors of remaining texts stay");
}

#[test]
fn a_head_older_than_the_forgotten_example_stays_valid() {
    let (store, task, _) = seeded("forget-newer");
    let first = store.examples(task).unwrap()[0].id;
    store.save_head(task, &head(&["health"], first), SaveAs::Active).unwrap();
    store.add_examples(task, &[example("a brand new note", "health")]).unwrap();
    let newest = store.examples(task).unwrap().last().unwrap().id;
    let outcome = store.forget(Some("inbox"), &Forget::Example(newest)).unwrap();
    assert_eq!((outcome.examples, outcome.heads_invalidated), (1, 0));
    assert!(store.active_head(task).unwrap().is_some());
}

#[test]
fn forgetting_by_text_time_task_and_everything() {
    let (store, task, _) = seeded("forget-kinds");
    store
        .upsert_documents(
            task,
            &[NewDocument { key: "d1".into(), text: "pack sunscreen for lisbon".into(), metadata: None }],
        )
        .unwrap();
    let by_text = store.forget(Some("inbox"), &Forget::Text("pack sunscreen for lisbon".into())).unwrap();
    assert_eq!((by_text.examples, by_text.documents, by_text.vectors), (1, 1, 1));

    let old = example("an old note", "work");
    store.add_examples(task, &[NewExample { created_at: Some(1_000), ..old }]).unwrap();
    let by_time = store.forget(Some("inbox"), &Forget::CreatedBetween { from_ms: 0, to_ms: 2_000 }).unwrap();
    assert_eq!(by_time.examples, 1);

    let other = store.ensure_task("notes").unwrap();
    store.add_examples(other, &[example("keep me", "x")]).unwrap();
    let whole = store.forget(Some("inbox"), &Forget::Task).unwrap();
    assert_eq!(whole.examples, 3);
    assert!(matches!(store.task_id("inbox"), Err(Error::UnknownTask(_))));
    assert_eq!(store.examples(other).unwrap().len(), 1);

    store.forget(None, &Forget::Everything).unwrap();
    assert!(store.tasks().unwrap().is_empty());
    assert!(store.feature_fingerprints().unwrap().is_empty());
}

/// Forgotten text must be gone from every byte of every file the store wrote.
#[test]
fn compaction_leaves_no_forgotten_text_in_the_files() {
    let (store, task, path) = seeded("compact");
    store.add_examples(task, &(0..2_000).map(|i| example(&format!("filler {i}"), "work")).collect::<Vec<_>>()).unwrap();
    let secret = "zebra-pancake appointment with dr quill";
    let files = || std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().path()).collect::<Vec<_>>();
    let contains_secret = || {
        files().iter().any(|f| {
            let bytes = std::fs::read(f).unwrap();
            bytes.windows(secret.len()).any(|w| w == secret.as_bytes())
        })
    };
    assert!(contains_secret(), "the secret is on disk before forgetting");
    store.forget(Some("inbox"), &Forget::Label("health".into())).unwrap();
    store.compact().unwrap();
    assert!(!contains_secret(), "forgotten text remains in {:?}", files());
    assert_eq!(store.examples(task).unwrap().len(), 2_003);
}

#[test]
fn retention_limits_apply_on_write() {
    let store = open(&scratch("retention").join("user.db"));
    let task = store.ensure_task("t").unwrap();
    store.add_examples(task, &(0..10).map(|i| example(&format!("note {i}"), "a")).collect::<Vec<_>>()).unwrap();
    assert_eq!(store.set_retention(task, Retention { max_examples: Some(4), max_age: None }).unwrap(), 6);
    let outcome = store.add_examples(task, &[example("newest", "a")]).unwrap();
    assert_eq!(outcome.evicted, 1);
    let texts: Vec<String> = store.examples(task).unwrap().into_iter().map(|e| e.text).collect();
    assert_eq!(texts, ["note 7", "note 8", "note 9", "newest"]);
    let old = NewExample { created_at: Some(0), ..example("ancient", "a") };
    store.set_retention(task, Retention { max_examples: None, max_age: Some(Duration::from_secs(3600)) }).unwrap();
    store.add_examples(task, &[old]).unwrap();
    assert!(store.examples(task).unwrap().iter().all(|e| e.text != "ancient"));
}

#[test]
fn documents_feedback_and_export() {
    let (store, task, _) = seeded("export");
    store
        .upsert_documents(
            task,
            &[
                NewDocument {
                    key: "r1".into(),
                    text: "See you at eight!".into(),
                    metadata: Some(r#"{"kind":"reply"}"#.into()),
                },
                NewDocument { key: "r2".into(), text: "Running late, sorry".into(), metadata: None },
            ],
        )
        .unwrap();
    let feedback = NewFeedback {
        query: Some("dinner tonight?".into()),
        document_key: "r1".into(),
        signal: Signal::Click,
        created_at: None,
    };
    store.record_feedback(task, &feedback).unwrap();
    let unknown = NewFeedback { document_key: "nope".into(), ..feedback.clone() };
    assert!(matches!(store.record_feedback(task, &unknown), Err(Error::InvalidInput(_))));
    let bad_meta = NewDocument { key: "r3".into(), text: "x".into(), metadata: Some("[1]".into()) };
    assert!(matches!(store.upsert_documents(task, &[bad_meta]), Err(Error::InvalidInput(_))));
    store.set_label_description(task, "travel", "trips, flights and hotels").unwrap();
    store.save_head(task, &head(&["health", "travel", "work"], 1_000), SaveAs::Active).unwrap();

    let mut out = Vec::new();
    store.export_json(&mut out).unwrap();
    let export: serde_json::Value = serde_json::from_slice(&out).unwrap();
    let task_json = &export["tasks"][0];
    assert_eq!(task_json["name"], "inbox");
    assert_eq!(task_json["examples"].as_array().unwrap().len(), 4);
    assert_eq!(task_json["documents"][0]["metadata"]["kind"], "reply");
    assert_eq!(task_json["feedback"][0]["query"], "dinner tonight?");
    assert_eq!(task_json["label_descriptions"]["travel"], "trips, flights and hotels");
    assert_eq!(task_json["heads"][0]["weights_base64"], "BwcH".repeat(21) + "Bw==");
    assert_eq!(export["feature_cache_vectors"]["fp-1"], 3);
}

#[test]
fn readers_never_see_half_a_write() {
    let store = open(&scratch("threads").join("user.db"));
    let task = store.ensure_task("t").unwrap();
    std::thread::scope(|scope| {
        let store = &store;
        scope.spawn(move || {
            for batch in 0..100 {
                let rows: Vec<_> = (0..10).map(|i| example(&format!("b{batch} r{i}"), "a")).collect();
                store.add_examples(task, &rows).unwrap();
            }
        });
        for _ in 0..3 {
            scope.spawn(move || {
                for _ in 0..200 {
                    let seen = store.examples(task).unwrap().len();
                    assert_eq!(seen % 10, 0, "a reader saw {seen} rows: half a batch");
                }
            });
        }
    });
    assert_eq!(store.examples(task).unwrap().len(), 1_000);
}

#[cfg(feature = "encryption")]
mod encryption {
    use super::*;
    use attune::EncryptionKey;

    fn with_key(key: EncryptionKey) -> StoreOptions {
        StoreOptions { encryption_key: Some(key), ..StoreOptions::default() }
    }

    fn contains(path: &Path, needle: &[u8]) -> bool {
        std::fs::read_dir(path.parent().unwrap()).unwrap().any(|entry| {
            let bytes = std::fs::read(entry.unwrap().path()).unwrap();
            bytes.windows(needle.len()).any(|w| w == needle)
        })
    }

    #[test]
    fn an_encrypted_file_holds_no_plaintext_and_needs_its_key() {
        let path = scratch("encrypted").join("user.db");
        let key = EncryptionKey::raw(&[42; 32]);
        let secret = "my bank pin reminder: walrus-umbrella";
        {
            let store = Store::open(&path, &with_key(key.clone())).unwrap();
            let task = store.ensure_task("notes").unwrap();
            store.add_examples(task, &[example(secret, "private")]).unwrap();
            store.compact().unwrap();
        }
        assert!(!contains(&path, secret.as_bytes()), "plaintext on disk");
        assert!(!contains(&path, b"SQLite format 3"), "even the header is encrypted");

        let store = Store::open(&path, &with_key(key)).unwrap();
        assert_eq!(store.examples(store.task_id("notes").unwrap()).unwrap()[0].text, secret);
        drop(store);

        let wrong = Store::open(&path, &with_key(EncryptionKey::raw(&[7; 32]))).unwrap_err();
        assert!(matches!(wrong, Error::EncryptionKey(_)), "{wrong}");
        let missing = Store::open(&path, &StoreOptions::default()).unwrap_err();
        assert!(matches!(missing, Error::EncryptionKey(_)), "{missing}");
        let passphrase = Store::open(&path, &with_key(EncryptionKey::passphrase("guess").unwrap())).unwrap_err();
        assert!(matches!(passphrase, Error::EncryptionKey(_)), "{passphrase}");
    }

    #[test]
    fn a_key_for_an_unencrypted_file_is_refused_untouched() {
        let path = scratch("plain").join("user.db");
        drop(open(&path));
        let error = Store::open(&path, &with_key(EncryptionKey::passphrase("it's a 'key'").unwrap())).unwrap_err();
        assert!(matches!(error, Error::EncryptionKey(_)), "{error}");
        open(&path).integrity_check().unwrap();
    }

    #[test]
    fn forgetting_is_real_with_encryption_too() {
        let path = scratch("encrypted-forget").join("user.db");
        let options = with_key(EncryptionKey::passphrase("correct horse").unwrap());
        let store = Store::open(&path, &options).unwrap();
        let task = store.ensure_task("t").unwrap();
        store.add_examples(task, &[example("forget this one", "gone"), example("keep this one", "kept")]).unwrap();
        store.forget(Some("t"), &Forget::Label("gone".into())).unwrap();
        store.compact().unwrap();
        drop(store);
        let store = Store::open(&path, &options).unwrap();
        let texts: Vec<String> =
            store.examples(store.task_id("t").unwrap()).unwrap().into_iter().map(|e| e.text).collect();
        assert_eq!(texts, ["keep this one"]);
    }
}

#[cfg(not(feature = "encryption"))]
#[test]
fn a_key_without_encryption_support_is_a_typed_error() {
    let options =
        StoreOptions { encryption_key: Some(attune::EncryptionKey::raw(&[1; 32])), ..StoreOptions::default() };
    let error = Store::open(&scratch("no-crypto").join("user.db"), &options).unwrap_err();
    assert!(matches!(error, Error::EncryptionKey(_)), "{error}");
}

#[test]
fn an_import_that_stops_midway_says_what_it_committed_and_resumes() {
    let dir = scratch("import-midway");
    let store = open(&dir.join("user.db"));
    let task = store.ensure_task("bulk").unwrap();
    let row = |i: usize| NewExample::new(format!("imported message number {i}"), format!("l{}", i % 3));
    // Row 250 is empty: the import stops there, after two committed batches of 100.
    let rows = (0..400).map(|i| if i == 250 { Ok(NewExample::new("  ", "l0")) } else { Ok(row(i)) });
    let error = store.import_examples(task, rows, 100, &mut |_| {}).unwrap_err();
    let Error::ImportInterrupted { committed, cause } = &error else { panic!("{error}") };
    assert_eq!(*committed, 200);
    assert!(matches!(**cause, Error::InvalidInput(_)), "{cause}");
    assert!(error.to_string().contains("200 rows") && error.to_string().contains("again"), "{error}");
    assert_eq!(store.examples(task).unwrap().len(), 200);
    // Fixed and run again: what was stored is skipped, the rest is added.
    let outcome = store.import_examples(task, (0..400).map(|i| Ok(row(i))), 100, &mut |_| {}).unwrap();
    assert_eq!((outcome.inserted, outcome.duplicates), (200, 200));
    // A failure before any batch committed is the failure itself.
    let first_bad = std::iter::once(Ok(NewExample::new("", "l0")));
    assert!(matches!(store.import_examples(task, first_bad, 100, &mut |_| {}), Err(Error::InvalidInput(_))));
}

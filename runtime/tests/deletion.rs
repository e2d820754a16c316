//! Deletion that is real, through the `Personalizer`: after `forget` (which
//! compacts), no forgotten text is left in any byte of any file Attune wrote,
//! their cached vectors are gone, and the head that was trained on them is
//! retrained and can no longer predict the forgotten label; the trunk states
//! cached for adapting the backbone go with their examples. With encryption
//! on, the same holds for everything the key can decrypt.

mod support;

use std::path::{Path, PathBuf};

use attune::{
    EncoderOptions, EncryptionKey, Forget, NewDocument, NewExample, NewFeedback, PersonalizerConfig, PredictionSource,
    QuietTraining, SILENT, Signal, TrainOptions, TrunkKey, TrunkStateRows,
};

/// Distinctive strings that appear nowhere else: an example of the label to
/// forget, a document and a search query.
const SECRET_EXAMPLE: &str = "appointment with dr quillfeather about the zebra rash";
const SECRET_DOCUMENT: &str = "pancake-walrus password reminder for the safe";
const SECRET_QUERY: &str = "where is the pancake-walrus note";

fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attune-deletion-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn open(dir: &Path, key: Option<EncryptionKey>) -> support::Opened {
    let config = PersonalizerConfig {
        database: dir.join("user.db"),
        model_dir: support::tiny_dir(),
        encoder: EncoderOptions::default(),
        encryption_key: key,
    };
    support::Opened::open(&config)
}

/// Which of `needles` occur in the raw bytes of any file in `dir`.
fn found_in_files<'a>(dir: &Path, needles: &[&'a str]) -> Vec<&'a str> {
    let files: Vec<Vec<u8>> =
        std::fs::read_dir(dir).unwrap().map(|entry| std::fs::read(entry.unwrap().path()).unwrap()).collect();
    needles
        .iter()
        .copied()
        .filter(|needle| files.iter().any(|bytes| bytes.windows(needle.len()).any(|w| w == needle.as_bytes())))
        .collect()
}

fn bytes_in_files(dir: &Path, needle: &[u8]) -> bool {
    std::fs::read_dir(dir)
        .unwrap()
        .any(|entry| std::fs::read(entry.unwrap().path()).unwrap().windows(needle.len()).any(|window| window == needle))
}

/// Fills the task with the secrets among many ordinary rows, trains, and
/// returns the version of the head trained on the secret label.
fn fill(p: &support::Opened) -> u32 {
    let mut examples: Vec<NewExample> = (0..600)
        .map(|i| {
            NewExample::new(
                format!("ordinary note number {i} about {}", ["work", "home"][i % 2]),
                ["work", "home"][i % 2],
            )
        })
        .collect();
    examples.push(NewExample::new(SECRET_EXAMPLE, "health"));
    examples.extend((0..5).map(|i| NewExample::new(format!("doctor visit {i} next week"), "health")));
    p.add_examples("notes", &examples).unwrap();
    let documents = [
        NewDocument { key: "secret".into(), text: SECRET_DOCUMENT.into(), metadata: None },
        NewDocument { key: "plain".into(), text: "the shopping list for saturday".into(), metadata: None },
    ];
    p.add_documents("notes", &documents).unwrap();
    let feedback = NewFeedback {
        query: Some(SECRET_QUERY.into()),
        document_key: "secret".into(),
        signal: Signal::Click,
        created_at: None,
    };
    p.record_feedback("notes", &feedback).unwrap();
    p.search("notes", SECRET_QUERY, 2).unwrap();
    cache_trunk_states(p);
    let trained = p.train("notes", &TrainOptions::default(), &QuietTraining).unwrap();
    assert!(trained.promotion.promote);
    assert!(p.heads("notes").unwrap().iter().any(|h| h.active && h.version == trained.version));
    trained.version
}

/// The health examples' trunk states below the tiny model's one layer, as a
/// task that adapts it caches them; a document's are refused.
const HEALTH_TEXTS: [&str; 2] = [SECRET_EXAMPLE, "doctor visit 0 next week"];

fn trunk_key(fingerprint: &str) -> TrunkKey<'_> {
    TrunkKey { fingerprint, layers: 1 }
}

fn cache_trunk_states(p: &support::Opened) {
    let texts = [HEALTH_TEXTS[0], HEALTH_TEXTS[1], SECRET_DOCUMENT];
    let states = p.encoder().trunk_states(&texts, 1, &SILENT).unwrap();
    let rows: Vec<TrunkStateRows> =
        states.into_iter().map(|s| TrunkStateRows { tokens: s.tokens, width: s.width, values: s.values }).collect();
    let entries: Vec<(&str, &TrunkStateRows)> = texts.iter().copied().zip(&rows).collect();
    let fingerprint = p.encoder().fingerprint().to_string();
    let stored = p.store().cache_trunk_states(trunk_key(&fingerprint), &entries).unwrap();
    assert_eq!(stored, 2, "a document's states are refused");
    let stats = p.stats("notes").unwrap();
    let bytes: usize = rows[..2].iter().map(|r| r.values.len() * 2).sum();
    assert_eq!((stats.trunk_states, stats.trunk_state_bytes), (2, bytes as u64), "stats report the cache");
}

/// The cached trunk states' raw bytes, straight from the database file.
fn trunk_state_blobs(dir: &Path) -> Vec<Vec<u8>> {
    let connection = rusqlite::Connection::open(dir.join("user.db")).unwrap();
    let mut statement = connection.prepare("SELECT states FROM trunk_states").unwrap();
    statement.query_map([], |row| row.get(0)).unwrap().map(Result::unwrap).collect()
}

/// Forgets the secret label, document and query, and checks what the
/// `Personalizer` and the store say afterwards.
fn forget_and_check(p: &support::Opened, secret_head: u32) {
    p.forget(Some("notes"), &Forget::Label("health".into())).unwrap();
    p.forget(Some("notes"), &Forget::Text(SECRET_DOCUMENT.into())).unwrap();
    p.forget(Some("notes"), &Forget::Text(SECRET_QUERY.into())).unwrap();

    let fingerprint = p.encoder().fingerprint().to_string();
    let cached = p.store().cached_features(&fingerprint, &[SECRET_EXAMPLE, SECRET_DOCUMENT, SECRET_QUERY]).unwrap();
    let left: Vec<bool> = cached.iter().map(Option::is_some).collect();
    assert_eq!(left, [false; 3], "cached vectors left of the example, document, query");
    let states = p.store().cached_trunk_states(trunk_key(&fingerprint), &HEALTH_TEXTS).unwrap();
    assert_eq!(
        states.iter().map(Option::is_some).collect::<Vec<_>>(),
        [false; 2],
        "trunk states of forgotten examples"
    );
    assert_eq!(p.store().trunk_state_size().unwrap(), (0, 0));
    assert_eq!(p.stats("notes").unwrap().trunk_state_bytes, 0);

    let heads = p.heads("notes").unwrap();
    let old = heads.iter().find(|h| h.version == secret_head).unwrap();
    assert!(old.stale && !old.active, "the head trained on forgotten data is erased and inactive");
    let active = heads.iter().find(|h| h.active).expect("retrained from what remains");
    assert!(active.version > secret_head);
    let (predictions, source) = p.predict("notes", &[SECRET_EXAMPLE, "doctor visit 1 next week"], 3).unwrap();
    assert_eq!(source, PredictionSource::TrainedHead);
    for prediction in predictions {
        assert!(prediction.top.iter().all(|s| s.label != "health"), "{prediction:?}");
    }
    let stats = p.stats("notes").unwrap();
    assert_eq!((stats.examples, stats.documents, stats.feedback), (600, 1, 0));

    // Texts the app only asks about are never stored, not even as vectors.
    let asked = "an incoming message that is only predicted and searched";
    p.predict("notes", &[asked], 1).unwrap();
    p.search("notes", asked, 1).unwrap();
    assert_eq!(p.store().cached_features(&fingerprint, &[asked]).unwrap(), [None]);
}

#[test]
fn forgotten_texts_leave_no_byte_in_any_file() {
    let dir = scratch("plain");
    let p = open(&dir, None);
    let head = fill(&p);
    let secrets = [SECRET_EXAMPLE, SECRET_DOCUMENT, SECRET_QUERY];
    assert_eq!(found_in_files(&dir, &secrets), secrets, "the secrets are on disk before forgetting");
    let blobs = trunk_state_blobs(&dir);
    assert_eq!(blobs.len(), 2);
    // 64 bytes of each: 32 f16 values of the first tokens' states.
    let state_bytes: Vec<&[u8]> = blobs.iter().map(|b| &b[..64]).collect();
    assert!(state_bytes.iter().all(|b| bytes_in_files(&dir, b)), "the states are on disk before forgetting");
    forget_and_check(&p, head);
    assert_eq!(found_in_files(&dir, &secrets), Vec::<&str>::new(), "with the Personalizer open");
    assert!(!state_bytes.iter().any(|b| bytes_in_files(&dir, b)), "trunk states with the Personalizer open");
    drop(p);
    assert_eq!(found_in_files(&dir, &secrets), Vec::<&str>::new(), "after closing");
    assert!(!state_bytes.iter().any(|b| bytes_in_files(&dir, b)), "trunk states after closing");
    let _ = std::fs::remove_dir_all(&dir);
}

#[cfg(feature = "encryption")]
#[test]
fn forgotten_texts_leave_nothing_decryptable_either() {
    const PASSPHRASE: &str = "correct horse battery staple";
    let dir = scratch("encrypted");
    let key = || Some(EncryptionKey::passphrase(PASSPHRASE).unwrap());
    let p = open(&dir, key());
    let head = fill(&p);
    let secrets = [SECRET_EXAMPLE, SECRET_DOCUMENT, SECRET_QUERY];
    assert_eq!(found_in_files(&dir, &secrets), Vec::<&str>::new(), "encrypted: no plaintext on disk at all");
    assert_eq!(decrypted_copy_contains(&dir, PASSPHRASE, &secrets), secrets, "the key decrypts the secrets");
    forget_and_check(&p, head);
    drop(p);
    assert_eq!(decrypted_copy_contains(&dir, PASSPHRASE, &secrets), Vec::<&str>::new());
    let _ = std::fs::remove_dir_all(&dir);
}

/// Decrypts the whole database with its key into a plaintext copy (SQLCipher's
/// `sqlcipher_export`) and searches the copy's bytes; also requires that
/// compaction left no free page, whose old content the copy would not show.
#[cfg(feature = "encryption")]
fn decrypted_copy_contains<'a>(dir: &Path, passphrase: &str, needles: &[&'a str]) -> Vec<&'a str> {
    let copy_dir = dir.join("decrypted");
    let _ = std::fs::remove_dir_all(&copy_dir);
    std::fs::create_dir_all(&copy_dir).unwrap();
    let connection = rusqlite::Connection::open(dir.join("user.db")).unwrap();
    connection.execute_batch(&format!("PRAGMA key = '{passphrase}';")).unwrap();
    let free_pages: i64 = connection.query_row("PRAGMA freelist_count", [], |row| row.get(0)).unwrap();
    let copy = copy_dir.join("plain.db");
    connection
        .execute_batch(&format!(
            "ATTACH DATABASE '{}' AS plaintext KEY ''; SELECT sqlcipher_export('plaintext'); DETACH DATABASE plaintext;",
            copy.display()
        ))
        .unwrap();
    drop(connection);
    let found = found_in_files(&copy_dir, needles);
    std::fs::remove_dir_all(&copy_dir).unwrap();
    if found.is_empty() {
        assert_eq!(free_pages, 0, "free pages may hold old content");
    }
    found
}

//! Shared helpers for the runtime's integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

pub fn tiny_dir() -> PathBuf {
    repo().join("models/tiny")
}

/// A second tiny model (another width and other weights): the backbone an
/// upgrade moves to in tests that must not depend on the default model.
pub fn tiny_next_dir() -> PathBuf {
    repo().join("models/tiny-next")
}

/// The fetched default model, or `None` when it is not in the cache. The test
/// runner sets `ATTUNE_REQUIRE_DEFAULT_MODEL=1` so a missing model fails there
/// instead of silently skipping.
pub fn default_model_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("ATTUNE_DEFAULT_MODEL")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo().join("models/cache/all-minilm-l6-v2"));
    if dir.join("manifest.json").is_file() {
        return Some(dir);
    }
    if std::env::var("ATTUNE_REQUIRE_DEFAULT_MODEL").as_deref() == Ok("1") {
        panic!("the default model is required but {} is missing: run models/fetch", dir.display());
    }
    eprintln!("skipping: default model not fetched (run models/fetch)");
    None
}

pub fn sentences() -> Vec<&'static str> {
    include_str!("../../../tests/data/sentences.txt").lines().collect()
}

pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b)).max(1e-12)
}

#[derive(Deserialize)]
pub struct Golden {
    pub fingerprint: String,
    pub texts: Vec<GoldenText>,
}

#[derive(Deserialize)]
pub struct GoldenText {
    pub text: String,
    pub embedding: Vec<f32>,
}

impl Golden {
    pub fn read(path: &Path) -> Self {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }
}

/// A fresh copy of the tiny model directory that a test may damage.
pub fn tracked_copy(tag: &str) -> PathBuf {
    use std::sync::atomic::{AtomicUsize, Ordering};
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, Ordering::SeqCst);
    let dir = std::env::temp_dir().join(format!("attune-test-{tag}-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for file in ["manifest.json", "model.onnx", "tokenizer.json"] {
        std::fs::copy(tiny_dir().join(file), dir.join(file)).unwrap();
    }
    dir
}

/// `tests/data/intents.json`: intents with a description, three training
/// messages and held-out messages, written for the project.
#[derive(Deserialize)]
pub struct Intents {
    pub intents: Vec<Intent>,
}

#[derive(Deserialize)]
pub struct Intent {
    pub label: String,
    pub description: String,
    pub train: Vec<String>,
    pub held_out: Vec<String>,
}

impl Intents {
    pub fn read() -> Self {
        serde_json::from_str(include_str!("../../../tests/data/intents.json")).unwrap()
    }

    /// Every held-out message with its label.
    pub fn held_out(&self) -> Vec<(String, String)> {
        self.intents.iter().flat_map(|i| i.held_out.iter().map(|t| (t.clone(), i.label.clone()))).collect()
    }

    /// The training messages `range` of every intent.
    pub fn examples(&self, range: std::ops::Range<usize>) -> Vec<attune::NewExample> {
        self.intents
            .iter()
            .flat_map(|i| i.train[range.clone()].iter().map(|t| attune::NewExample::new(t.as_str(), i.label.as_str())))
            .collect()
    }
}

/// A fresh, empty directory for one test's database.
pub fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attune-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A `Personalizer` whose file the test also reads through a second
/// connection of its own, as an app would not need to: what forgetting,
/// caching and crashes leave in the store is checked there.
pub struct Opened {
    personalizer: attune::Personalizer,
    database: PathBuf,
    key: Option<attune::EncryptionKey>,
}

impl Opened {
    pub fn open(config: &attune::PersonalizerConfig) -> Self {
        Self {
            personalizer: attune::Personalizer::open(config).unwrap(),
            database: config.database.clone(),
            key: config.encryption_key.clone(),
        }
    }

    /// A new connection to the same file (closed when dropped).
    pub fn store(&self) -> attune::Store {
        let options = attune::StoreOptions { encryption_key: self.key.clone(), ..attune::StoreOptions::default() };
        attune::Store::open(&self.database, &options).unwrap()
    }

    pub fn into_inner(self) -> attune::Personalizer {
        self.personalizer
    }
}

impl std::ops::Deref for Opened {
    type Target = attune::Personalizer;

    fn deref(&self) -> &attune::Personalizer {
        &self.personalizer
    }
}

/// The crate's test generator, shared as a file so that every test and
/// benchmark draws from the same one.
#[path = "../../src/test_rng.rs"]
mod test_rng;
#[allow(unused_imports)]
pub use test_rng::XorShift;

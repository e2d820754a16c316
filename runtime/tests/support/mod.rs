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

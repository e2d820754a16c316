//! `compile_model`: an ONNX model directory becomes a directory that tract
//! runs without the ONNX parser — what a small mobile build ships. The
//! graph passes it applies: exact GELU fused into one operator
//! (`gelu_fusion`) and, for `Precision::Int8`, weight products quantised
//! (`int8`).

pub(in crate::encoder) mod gelu_fusion;
pub(in crate::encoder) mod int8;

use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use super::batching::TokenBatch;
use super::tokenize::TextTokenizer;
use super::{Backend, Encoder, EncoderOptions, OnnxEncoder};
use crate::error::{Error, Result};
use crate::model::{MANIFEST_FILE, ModelManifest, Precision, expected_fingerprint, hex};

/// File name of the compiled graph inside a compiled model directory.
pub const COMPILED_FILE: &str = "model.attune-graph";

/// Both paths must embed these alike before a compiled directory is kept.
const CHECK_SENTENCES: [&str; 8] = [
    "",
    "hi",
    "Can you move my dentist appointment to Thursday afternoon?",
    "what's the weather like in Zürich tomorrow",
    "Transfer $250 from checking to savings, please.",
    "これは日本語の文です",
    "the the the the the the the the the the the the the the the the",
    "A much longer message about a delayed parcel that was supposed to arrive last week, \
     with a tracking number that does not work and a support line that never answers.",
];
/// Texts written for this project whose activations set an int8 graph's
/// smoothing factors (not the sentences its accuracy is measured on).
const CALIBRATION_TEXTS: &str = include_str!("calibration.txt");

/// Lowest cosine between the two paths that counts as the same model.
const MIN_AGREEMENT: f32 = 0.9999;
/// The same for an int8 graph, whose activations are rounded to 8 bits.
const MIN_AGREEMENT_INT8: f32 = 0.995;

/// What `compile_model` wrote and how closely it agrees with the ONNX path.
#[derive(Debug, Clone, Serialize)]
pub struct CompileReport {
    pub precision: Precision,
    /// Weight products computed in int8 (none at f32 precision).
    pub int8_products: usize,
    pub onnx_bytes: u64,
    pub compiled_bytes: u64,
    /// Lowest cosine, over a fixed set of sentences, between the compiled
    /// graph and the ONNX file, both run by tract.
    pub lowest_cosine: f32,
}

/// Compiles the model in `source` into the new directory `out`: the graph,
/// the tokenizer and a manifest naming both. At f32 precision the fingerprint
/// stays (heads and cached features carry over); an int8 graph's features
/// differ slightly, so it gets its own and a store moves to it as to a new
/// model (`upgrade_model`). The ONNX file is not copied. `out` is kept only
/// when both paths embed a fixed set of sentences alike.
pub fn compile_model(source: &Path, out: &Path, precision: Precision) -> Result<CompileReport> {
    let manifest = ModelManifest::load(source)?;
    manifest.verify_files()?;
    if out.exists() && std::fs::read_dir(out).map_err(|e| Error::io(out, e))?.next().is_some() {
        return Err(Error::InvalidInput(format!("{} is not empty: compile into a new directory", out.display())));
    }
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let outcome = write_compiled(source, &manifest, out, precision);
    if outcome.is_err() {
        let _ = std::fs::remove_dir_all(out);
    }
    outcome
}

fn write_compiled(source: &Path, manifest: &ModelManifest, out: &Path, precision: Precision) -> Result<CompileReport> {
    if manifest.precision() != Precision::F32 {
        return Err(Error::InvalidInput(format!("{} is compiled already: compile the ONNX model", source.display())));
    }
    let graph = out.join(COMPILED_FILE);
    let calibration = match precision {
        Precision::F32 => Vec::new(),
        Precision::Int8 => calibration_batches(manifest)?,
    };
    let int8_products = super::engine::tract::compile(manifest, &graph, precision, &calibration)?;
    let bytes = std::fs::read(&graph).map_err(|e| Error::io(&graph, e))?;
    let tokenizer = out.join(&manifest.tokenizer_file);
    std::fs::copy(manifest.tokenizer_path(), &tokenizer).map_err(|e| Error::io(&tokenizer, e))?;

    // The source manifest as written (fields this runtime ignores included),
    // plus the compiled graph.
    let manifest_path = source.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&manifest_path).map_err(|e| Error::io(&manifest_path, e))?;
    let mut json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::manifest(&manifest_path, e.to_string()))?;
    json["compiled"] = serde_json::json!({
        "file": COMPILED_FILE,
        "sha256": hex(&Sha256::digest(&bytes)),
        "bytes": bytes.len(),
        "precision": precision,
    });
    json["fingerprint"] = expected_fingerprint(&manifest.model_sha256, &manifest.tokenizer_sha256, precision).into();
    let written = out.join(MANIFEST_FILE);
    let pretty = serde_json::to_string_pretty(&json).map_err(|e| Error::manifest(&written, e.to_string()))?;
    std::fs::write(&written, pretty + "\n").map_err(|e| Error::io(&written, e))?;

    let options = EncoderOptions { backend: Backend::Native, ..EncoderOptions::default() };
    let from_onnx = OnnxEncoder::load(source, &options)?.embed(&CHECK_SENTENCES)?;
    let from_graph = OnnxEncoder::load(out, &options)?.embed(&CHECK_SENTENCES)?;
    let lowest_cosine = from_onnx
        .rows()
        .zip(from_graph.rows())
        .map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>())
        .fold(f32::INFINITY, f32::min);
    let required = if precision == Precision::Int8 { MIN_AGREEMENT_INT8 } else { MIN_AGREEMENT };
    if lowest_cosine < required {
        return Err(Error::ModelMismatch(format!(
            "the compiled graph disagrees with the ONNX file (cosine {lowest_cosine:.6} < {required})"
        )));
    }
    Ok(CompileReport {
        precision,
        int8_products,
        onnx_bytes: manifest.model_bytes,
        compiled_bytes: bytes.len() as u64,
        lowest_cosine,
    })
}

/// The calibration texts, one batch each (no padding to skew the ranges).
fn calibration_batches(manifest: &ModelManifest) -> Result<Vec<TokenBatch>> {
    let tokenizer = TextTokenizer::load(&manifest.tokenizer_path(), manifest.max_tokens)?;
    CALIBRATION_TEXTS.lines().map(|text| Ok(TokenBatch::pad(&[&tokenizer.encode(text)?]))).collect()
}

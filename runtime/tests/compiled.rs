//! Compiled models (`attune compile-model`): the graph small builds run
//! without the ONNX parser must embed as the ONNX file does.

mod support;

use std::path::{Path, PathBuf};

use attune::{Backend, Encoder, EncoderOptions, Error, OnnxEncoder, Precision};
use support::{Golden, cosine, repo};

fn tract() -> EncoderOptions {
    EncoderOptions { backend: Backend::Native, ..EncoderOptions::default() }
}

/// tract on `dir` against Python onnxruntime on the ONNX file, text by text:
/// every cosine at least `lowest`. An f32 graph keeps the golden's
/// fingerprint, an int8 graph has its own.
fn check_against_golden(dir: &Path, golden_file: &Path, lowest: f32) {
    let golden = Golden::read(golden_file);
    let texts: Vec<&str> = golden.texts.iter().map(|t| t.text.as_str()).collect();
    let encoder = OnnxEncoder::load(dir, &tract()).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let f32_graph = encoder.manifest().precision() == Precision::F32;
    assert_eq!(encoder.fingerprint() == golden.fingerprint, f32_graph, "fingerprint of a {dir:?} graph");
    let embeddings = encoder.embed(&texts).unwrap();
    for (row, expected) in embeddings.rows().zip(&golden.texts) {
        let similarity = cosine(row, &expected.embedding);
        assert!(similarity >= lowest, "cosine {similarity} for {:?}", expected.text);
    }
}

/// The default model compiled at `precision`: by this build when it can
/// (feature `onnx`), else the directory `tests/run` compiled for the small
/// build (`ATTUNE_COMPILED_MODEL_DIR`, `ATTUNE_COMPILED_INT8_MODEL_DIR`).
fn compiled_default_model(precision: Precision) -> Option<PathBuf> {
    let variable = match precision {
        Precision::F32 => "ATTUNE_COMPILED_MODEL_DIR",
        Precision::Int8 => "ATTUNE_COMPILED_INT8_MODEL_DIR",
    };
    if let Some(dir) = std::env::var_os(variable) {
        return Some(PathBuf::from(dir));
    }
    #[cfg(feature = "onnx")]
    if let Some(source) = support::default_model_dir() {
        let out = scratch(&format!("compiled-default-{}", precision.name()));
        attune::compile_model(&source, &out, precision).unwrap();
        return Some(out);
    }
    assert!(std::env::var_os("ATTUNE_REQUIRE_DEFAULT_MODEL").is_none(), "set {variable}");
    None
}

#[cfg(feature = "onnx")]
fn scratch(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("attune-test-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[test]
fn compiled_default_model_matches_python_onnxruntime() {
    let Some(dir) = compiled_default_model(Precision::F32) else { return };
    assert!(!dir.join("model.onnx").exists(), "runs without the ONNX file");
    let manifest = attune::ModelManifest::load(&dir).unwrap();
    let compiled = manifest.compiled.as_ref().unwrap().bytes;
    assert!(compiled <= manifest.model_bytes * 101 / 100, "int8 weights stay int8: {compiled} bytes");
    check_against_golden(&dir, &repo().join("models/golden-all-minilm-l6-v2.json"), 0.9999);
}

/// The int8 graph read by this build (the small one reads it without the
/// ONNX parser), against Python onnxruntime's f32 vectors.
#[test]
fn compiled_int8_default_model_is_close_to_python_onnxruntime() {
    let Some(dir) = compiled_default_model(Precision::Int8) else { return };
    let manifest = attune::ModelManifest::load(&dir).unwrap();
    assert_eq!(manifest.precision(), Precision::Int8);
    let encoder = OnnxEncoder::load(&dir, &tract()).unwrap();
    assert!(
        encoder.matrix_kernels().iter().any(|(name, _)| name.contains("i32")),
        "int8 products run on integer kernels: {:?}",
        encoder.matrix_kernels()
    );
    check_against_golden(&dir, &repo().join("models/golden-all-minilm-l6-v2.json"), 0.995);
}

#[cfg(feature = "onnx")]
mod with_onnx {
    use super::*;
    use support::{sentences, tiny_dir};

    #[test]
    fn compiled_tiny_model_embeds_as_its_onnx_file() {
        let out = scratch("compiled-tiny");
        let report = attune::compile_model(&tiny_dir(), &out, Precision::F32).unwrap();
        assert!(report.lowest_cosine >= 0.9999, "{report:?}");
        check_against_golden(&out, &tiny_dir().join("golden.json"), 0.9999);

        let texts = sentences();
        let compiled = OnnxEncoder::load(&out, &tract()).unwrap().embed(&texts).unwrap();
        let onnx = OnnxEncoder::load(&tiny_dir(), &tract()).unwrap().embed(&texts).unwrap();
        for (a, b) in compiled.rows().zip(onnx.rows()) {
            assert!(cosine(a, b) >= 0.99999, "{}", cosine(a, b));
        }
        if cfg!(feature = "ort") {
            let options = EncoderOptions { backend: Backend::Ort, ..EncoderOptions::default() };
            let error = OnnxEncoder::load(&out, &options).unwrap_err();
            assert!(matches!(error, Error::BackendUnavailable { .. }), "{error}");
        }
        std::fs::remove_dir_all(&out).unwrap();
    }

    /// Lowest and mean cosine between the rows of two embeddings of `texts`.
    fn agreement(a: &OnnxEncoder, b: &OnnxEncoder, texts: &[&str]) -> (f32, f32) {
        let (a, b) = (a.embed(texts).unwrap(), b.embed(texts).unwrap());
        let cosines: Vec<f32> = a.rows().zip(b.rows()).map(|(x, y)| cosine(x, y)).collect();
        let lowest = cosines.iter().copied().fold(f32::INFINITY, f32::min);
        (lowest, cosines.iter().sum::<f32>() / cosines.len() as f32)
    }

    #[test]
    fn int8_tiny_model_is_close_to_f32_and_fingerprinted_apart() {
        let out = scratch("compiled-tiny-int8");
        let report = attune::compile_model(&tiny_dir(), &out, Precision::Int8).unwrap();
        assert_eq!(report.precision, Precision::Int8);
        // The six weight products the rewrite takes but the narrowing feed-forward one.
        assert_eq!(report.int8_products, 5, "the layer's weight products: {report:?}");
        let manifest = attune::ModelManifest::load(&out).unwrap();
        assert_eq!(manifest.precision(), Precision::Int8);
        let int8 = OnnxEncoder::load(&out, &tract()).unwrap();
        let f32_path = OnnxEncoder::load(&tiny_dir(), &tract()).unwrap();
        assert_ne!(int8.fingerprint(), f32_path.fingerprint(), "int8 features never pass for f32 ones");
        let (lowest, mean) = agreement(&int8, &f32_path, &sentences());
        assert!(lowest >= 0.99 && mean >= 0.995, "lowest {lowest}, mean {mean}");
        assert!(lowest < 0.999_999, "the products really run in int8 (lowest {lowest})");
        if cfg!(feature = "ort") {
            let options = EncoderOptions { backend: Backend::Ort, ..EncoderOptions::default() };
            std::fs::copy(tiny_dir().join("model.onnx"), out.join("model.onnx")).unwrap();
            let error = OnnxEncoder::load(&out, &options).unwrap_err();
            assert!(matches!(error, Error::BackendUnavailable { .. }), "{error}");
        }
        let again = scratch("compiled-tiny-int8-again");
        let error = attune::compile_model(&out, &again, Precision::Int8).unwrap_err();
        assert!(matches!(error, Error::InvalidInput(_)), "{error}");
        std::fs::remove_dir_all(&out).unwrap();
    }

    /// The bar int8 must meet on the default model: cosine to the f32 path
    /// at least 0.995 for every sentence, 0.999 on average.
    #[test]
    fn int8_default_model_keeps_its_features() {
        let Some(source) = support::default_model_dir() else { return };
        // Not compiled_default_model's directory: that test runs beside this one.
        let out = scratch("int8-against-f32");
        attune::compile_model(&source, &out, Precision::Int8).unwrap();
        let int8 = OnnxEncoder::load(&out, &tract()).unwrap();
        let f32_path = OnnxEncoder::load(&source, &tract()).unwrap();
        let golden = Golden::read(&repo().join("models/golden-all-minilm-l6-v2.json"));
        let mut texts: Vec<&str> = golden.texts.iter().map(|t| t.text.as_str()).collect();
        texts.extend(sentences());
        let (lowest, mean) = agreement(&int8, &f32_path, &texts);
        eprintln!("int8 against f32 over {} texts: lowest cosine {lowest:.5}, mean {mean:.6}", texts.len());
        assert!(lowest >= 0.995 && mean >= 0.999, "lowest {lowest}, mean {mean}");
        std::fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn compiling_into_a_non_empty_directory_is_refused() {
        let error = attune::compile_model(&tiny_dir(), &repo().join("models"), Precision::F32).unwrap_err();
        assert!(matches!(error, Error::InvalidInput(_)), "{error}");
    }

    #[test]
    fn a_graph_from_another_model_or_damaged_is_a_load_error() {
        damaged_graphs_are_load_errors(Precision::F32);
    }

    #[test]
    fn an_int8_graph_damaged_is_a_load_error() {
        damaged_graphs_are_load_errors(Precision::Int8);
    }

    fn damaged_graphs_are_load_errors(precision: Precision) {
        let out = scratch(&format!("compiled-damaged-{}", precision.name()));
        attune::compile_model(&tiny_dir(), &out, precision).unwrap();
        let path = out.join(attune::COMPILED_FILE);
        let good = std::fs::read(&path).unwrap();
        let manifest: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
        let sha = manifest["model_sha256"].as_str().unwrap();

        // Same length, another source model.
        let at = good.windows(sha.len()).position(|w| w == sha.as_bytes()).expect("the header names its model");
        let mut other = good.clone();
        other[at] = if other[at] == b'0' { b'1' } else { b'0' };
        std::fs::write(&path, &other).unwrap();
        let error = OnnxEncoder::load(&out, &tract()).unwrap_err();
        assert!(matches!(error, Error::ModelLoad { .. }), "{error}");
        assert!(error.to_string().contains("another model"), "{error}");

        // Same length, weights past the header zeroed: loads, but no longer
        // the model the manifest's hash names.
        let mut zeroed = good.clone();
        let tail = zeroed.len() - 64;
        zeroed[tail..].fill(0);
        std::fs::write(&path, &zeroed).unwrap();
        let manifest = attune::ModelManifest::load(&out).unwrap();
        assert!(matches!(manifest.verify_files(), Err(Error::ModelMismatch(_))));

        // Random damage to the header (a seeded xorshift, 300 files): every
        // load ends in a model or a typed error, never a panic.
        let header_end = 24 + u64::from_le_bytes(good[16..24].try_into().unwrap()) as usize;
        let mut rng = support::XorShift::from_state(0x9E37_79B9_7F4A_7C15);
        let mut next = move || rng.next_u64();
        for _ in 0..300 {
            let mut bytes = good.clone();
            for _ in 0..1 + next() % 4 {
                let at = 16 + (next() as usize) % (header_end - 16);
                bytes[at] = next() as u8;
            }
            std::fs::write(&path, &bytes).unwrap();
            let outcome = std::panic::catch_unwind(|| OnnxEncoder::load(&out, &tract()).map(|_| ()));
            match outcome.expect("loading a damaged graph panicked") {
                Ok(()) | Err(Error::ModelLoad { .. } | Error::ModelMismatch(_)) => {}
                Err(other) => panic!("unexpected {other}"),
            }
        }

        // Cut short: the manifest's size check refuses it before tract reads it.
        std::fs::write(&path, &good[..good.len() / 2]).unwrap();
        let error = OnnxEncoder::load(&out, &tract()).unwrap_err();
        assert!(matches!(error, Error::Manifest { .. }), "{error}");
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[cfg(not(feature = "onnx"))]
#[test]
fn onnx_directories_need_the_onnx_feature() {
    let error = OnnxEncoder::load(&support::tiny_dir(), &tract()).unwrap_err();
    assert!(matches!(error, Error::BackendUnavailable { .. }), "{error}");
    assert!(error.to_string().contains("compile-model"), "{error}");
}

//! Hostile input, replayed: every input the fuzzers keep (runtime/fuzz/corpus)
//! and every crash they found (runtime/fuzz/regressions) goes through the same
//! checks as the fuzz targets, on stable Rust and in every test run.

mod support;

use std::path::{Path, PathBuf};

use attune::{Columns, Encoder, EncoderOptions, Error, Head, ImportFormat, ModelCatalog, ModelManifest, OnnxEncoder};

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut all = Vec::new();
    for kind in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(fuzz.join(kind).join(target)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            all.push((path.clone(), std::fs::read(&path).unwrap()));
        }
    }
    assert!(!all.is_empty(), "no inputs kept for {target}");
    all
}

#[test]
fn head_checkpoints() {
    let fingerprint = ModelManifest::load(&support::tiny_dir()).unwrap().fingerprint;
    for (path, bytes) in inputs("head_decoder") {
        match Head::from_bytes(&bytes, &fingerprint) {
            Ok(head) => {
                let prediction = head.predict(&vec![0.5; head.dim()], 3).unwrap();
                assert!(prediction.top.iter().all(|s| s.probability.is_finite()), "{}", path.display());
                assert_eq!(Head::from_bytes(&head.to_bytes(), &fingerprint).unwrap(), head, "{}", path.display());
            }
            Err(Error::InvalidHead(_) | Error::HeadModelMismatch { .. }) => {}
            Err(other) => panic!("{}: unexpected {other}", path.display()),
        }
    }
}

#[test]
fn the_nan_prototype_scale_the_fuzzer_found_is_refused() {
    let fingerprint = ModelManifest::load(&support::tiny_dir()).unwrap().fingerprint;
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/regressions/head_decoder/nan-prototype-scale");
    let error = Head::from_bytes(&std::fs::read(path).unwrap(), &fingerprint).unwrap_err();
    assert!(matches!(&error, Error::InvalidHead(reason) if reason.contains("scale")), "{error}");
}

#[test]
fn manifests_and_catalogs() {
    // Anything parses or is refused with a reason: never a panic, never a silent refusal.
    for (path, bytes) in inputs("model_manifest") {
        let text = String::from_utf8_lossy(&bytes);
        let manifest = ModelManifest::parse(&text).map(|_| ());
        let catalog = ModelCatalog::parse(&text).map(|_| ());
        for result in [manifest, catalog] {
            assert!(result.as_ref().err().is_none_or(|reason| !reason.trim().is_empty()), "{}", path.display());
        }
    }
}

#[test]
fn import_files() {
    for (path, bytes) in inputs("import_files") {
        for format in [ImportFormat::Csv, ImportFormat::JsonLines] {
            match attune::read_labelled(bytes.as_slice(), format, &Columns::default()) {
                Ok(rows) => {
                    let empty = rows.iter().any(|(text, label)| text.trim().is_empty() || label.trim().is_empty());
                    assert!(!empty, "{}: an empty field was accepted", path.display());
                }
                Err(Error::InvalidInput(_)) => {}
                Err(other) => panic!("{}: unexpected {other}", path.display()),
            }
        }
    }
}

#[test]
fn encoder_texts() {
    let encoder =
        OnnxEncoder::load(&support::tiny_dir(), &EncoderOptions { threads: 1, ..EncoderOptions::default() }).unwrap();
    for (path, bytes) in inputs("encoder_text") {
        let text = String::from_utf8_lossy(&bytes);
        let embeddings = encoder.embed(&[text.as_ref(), "a short neighbour"]).unwrap();
        assert!(embeddings.as_slice().iter().all(|x| x.is_finite()), "{}", path.display());
    }
}

#[test]
fn features_that_overflow_a_heads_scores_are_refused_not_nan() {
    let head = attune::zero_shot_head("fp", vec!["a".into(), "b".into()], &[1.0, 0.0, 0.0, 1.0], 2).unwrap();
    assert!(head.probabilities(&[0.6, 0.8]).unwrap().iter().all(|p| p.is_finite()));
    let error = head.probabilities(&[3e38, -3e38]).unwrap_err();
    assert!(matches!(error, Error::InvalidInput(_)), "{error}");
}

//! The `attune` binary as a user runs it, on the committed tiny model.

use std::path::PathBuf;
use std::process::{Command, Output};

fn tiny_model() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/tiny")
}

fn attune(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_attune"))
        .args(args)
        .env_remove("ATTUNE_MODEL")
        .output()
        .expect("the attune binary runs")
}

#[test]
fn embed_prints_one_normalised_vector_per_text_as_json() {
    let model = tiny_model();
    let output = attune(&["--model", model.to_str().unwrap(), "--json", "embed", "hello", "cancel my flight"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let document: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(document["dim"], 32);
    let rows = document["embeddings"].as_array().unwrap();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[1]["text"], "cancel my flight");
    let vector: Vec<f64> = rows[0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(vector.len(), 32);
    let norm = vector.iter().map(|x| x * x).sum::<f64>().sqrt();
    assert!((norm - 1.0).abs() < 1e-4, "norm {norm}");
}

#[test]
fn embed_in_text_form_prints_a_line_per_text() {
    let model = tiny_model();
    let output = attune(&["--model", model.to_str().unwrap(), "embed", "one", "two", "three"]);
    assert!(output.status.success());
    let stdout = String::from_utf8(output.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 3);
    assert!(stdout.starts_with("one\t["));
}

#[test]
fn missing_model_is_a_clear_error_without_a_backtrace() {
    let output = attune(&["--model", "/nonexistent/model", "embed", "hello"]);
    assert!(!output.status.success());
    let stderr = String::from_utf8(output.stderr).unwrap();
    assert!(stderr.starts_with("attune: "), "{stderr}");
    assert!(stderr.contains("models/fetch"), "{stderr}");
    assert!(!stderr.contains("panicked") && !stderr.contains("backtrace"), "{stderr}");
}

#[test]
fn unknown_backend_is_rejected() {
    let model = tiny_model();
    let output = attune(&["--model", model.to_str().unwrap(), "--backend", "gpu", "embed", "x"]);
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("unknown backend"));
}

#[test]
fn bench_embed_reports_every_mode() {
    let model = tiny_model();
    let output = attune(&["--model", model.to_str().unwrap(), "--json", "bench", "embed", "--rounds", "1"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(report["sentences"].as_u64().unwrap() >= 256);
    let modes = report["modes"].as_array().unwrap();
    assert_eq!(modes.len(), 3);
    for mode in modes {
        assert!(mode["sentences_per_second"].as_f64().unwrap() > 0.0);
        assert!(mode["p95_ms"].as_f64().unwrap() >= mode["p50_ms"].as_f64().unwrap());
    }
}

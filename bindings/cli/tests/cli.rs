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

/// A scratch directory and the arguments that point the CLI at it.
fn session(tag: &str) -> (PathBuf, Vec<String>) {
    let dir = std::env::temp_dir().join(format!("attune-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let args = vec![
        "--db".to_string(),
        dir.join("user.db").to_string_lossy().into_owned(),
        "--model".to_string(),
        tiny_model().to_string_lossy().into_owned(),
        "--task".to_string(),
        "inbox".to_string(),
    ];
    (dir, args)
}

fn run(base: &[String], args: &[&str]) -> Output {
    let mut all: Vec<&str> = base.iter().map(String::as_str).collect();
    all.extend_from_slice(args);
    attune(&all)
}

fn ok(output: Output) -> String {
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap()
}

#[test]
fn the_data_commands_end_to_end() {
    let (dir, base) = session("e2e");
    let csv = dir.join("examples.csv");
    std::fs::write(
        &csv,
        "text,label\npay the water bill,bills\n\"bank card, charged twice\",bills\nbook a flight ticket,travel\n\
         hotel room for the weekend,travel\ncall my mother,family\ndinner with my father,family\n",
    )
    .unwrap();
    ok(run(&base, &["describe", "bills", "money to pay"]));
    ok(run(&base, &["add", "--label", "bills", "the electricity bill"]));
    let imported: serde_json::Value =
        serde_json::from_str(&ok(run(&base, &["--json", "import", csv.to_str().unwrap()]))).unwrap();
    assert_eq!(imported["inserted"], 6);
    let labels: serde_json::Value = serde_json::from_str(&ok(run(&base, &["--json", "labels"]))).unwrap();
    assert_eq!(labels[0]["label"], "bills");
    assert_eq!(labels[0]["examples"], 3);

    let report: serde_json::Value = serde_json::from_str(&ok(run(&base, &["--json", "train", "--seed", "3"]))).unwrap();
    for key in ["examples", "classes", "head", "train_ms", "validation", "promoted"] {
        assert!(report.get(key).is_some(), "train --json lacks {key}: {report}");
    }
    assert_eq!(report["examples"], 7);
    assert_eq!(report["promoted"], true);

    let predicted = ok(run(&base, &["--json", "predict", "--top-k", "2", "pay the bill"]));
    let prediction: serde_json::Value = serde_json::from_str(predicted.lines().next().unwrap()).unwrap();
    assert_eq!(prediction["top"].as_array().unwrap().len(), 2);
    assert_eq!(prediction["source"], "TrainedHead");

    let metrics: serde_json::Value =
        serde_json::from_str(&ok(run(&base, &["--json", "eval", csv.to_str().unwrap()]))).unwrap();
    for key in ["n", "accuracy", "macro_f1", "log_loss", "ece", "per_class"] {
        assert!(metrics.get(key).is_some(), "eval --json lacks {key}");
    }

    ok(run(&base, &["docs", "add", "--key", "d1", "the flight ticket"]));
    ok(run(&base, &["docs", "add", "--key", "d2", "dinner at home"]));
    let hits = ok(run(&base, &["--json", "search", "--k", "1", "the flight ticket"]));
    assert!(hits.contains("\"key\":\"d1\""), "{hits}");
    ok(run(&base, &["feedback", "the flight ticket", "d1", "click"]));
    assert!(!run(&base, &["feedback", "q", "nope", "click"]).status.success());

    let forgotten: serde_json::Value =
        serde_json::from_str(&ok(run(&base, &["--json", "forget", "--label", "family"]))).unwrap();
    assert_eq!(forgotten["examples"], 2);
    let after = ok(run(&base, &["--json", "predict", "--top-k", "5", "call my mother"]));
    assert!(!after.contains("\"family\""), "{after}");
    let export = dir.join("export.json");
    ok(run(&base, &["export", export.to_str().unwrap()]));
    let exported: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&export).unwrap()).unwrap();
    assert_eq!(exported["tasks"].as_array().unwrap().len(), 1);
    assert!(ok(run(&base, &["stats"])).contains("5 examples"));
    assert!(ok(run(&base, &["heads"])).contains("active"));
}

#[test]
fn bad_files_and_unknown_tasks_are_clear_errors() {
    let (dir, base) = session("bad");
    let broken = dir.join("broken.jsonl");
    std::fs::write(&broken, "{\"text\": \"fine\", \"label\": \"a\"}\n{not json\n{\"text\": \"no label\"}\n").unwrap();
    let output = run(&base, &["import", broken.to_str().unwrap()]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("line 2") && stderr.contains("line 3") && stderr.contains("not imported"), "{stderr}");
    assert!(!run(&base, &["labels"]).status.success(), "nothing was imported, so the task does not exist");

    let empty = dir.join("empty.csv");
    std::fs::write(&empty, "text,label\n").unwrap();
    assert!(String::from_utf8_lossy(&run(&base, &["import", empty.to_str().unwrap()]).stderr).contains("no examples"));
    let other_task: Vec<String> =
        base.iter().map(|a| if a == "inbox" { "nope".to_string() } else { a.clone() }).collect();
    let unknown = run(&other_task, &["predict", "hello"]);
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("unknown task"));
}

#[test]
fn the_demo_runs_on_the_default_model() {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/cache/all-minilm-l6-v2");
    if !model.join("manifest.json").is_file() {
        assert_ne!(std::env::var("ATTUNE_REQUIRE_DEFAULT_MODEL").as_deref(), Ok("1"), "run models/fetch");
        eprintln!("skipping: default model not fetched");
        return;
    }
    let stdout = ok(attune(&["--model", model.to_str().unwrap(), "demo"]));
    for step in
        ["ZeroShot: accuracy", "Prototypes: accuracy", "TrainedHead: accuracy", "health is gone", "demo finished"]
    {
        assert!(stdout.contains(step), "missing {step:?} in:\n{stdout}");
    }
}

#[test]
fn upgrade_moves_a_database_to_the_default_model() {
    let model = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../models/cache/all-minilm-l6-v2");
    if !model.join("manifest.json").is_file() {
        assert_ne!(std::env::var("ATTUNE_REQUIRE_DEFAULT_MODEL").as_deref(), Ok("1"), "run models/fetch");
        eprintln!("skipping: default model not fetched");
        return;
    }
    let (_dir, base) = session("upgrade");
    for (label, text) in [("bills", "pay the water bill"), ("bills", "the card bill"), ("travel", "book a flight")] {
        ok(run(&base, &["add", "--label", label, text]));
    }
    ok(run(&base, &["train"]));
    let report: serde_json::Value =
        serde_json::from_str(&ok(run(&base, &["--json", "upgrade", "--to", model.to_str().unwrap()]))).unwrap();
    assert_eq!(report["texts"], 3);
    assert_eq!(report["embedded_now"], 3);
    assert_ne!(report["from"], report["to"]);
    assert_eq!(report["tasks"][0]["task"], "inbox");
    // The database now answers with the new model and its trained head.
    let mut upgraded: Vec<String> = base.clone();
    upgraded[3] = model.to_string_lossy().into_owned();
    let predicted: serde_json::Value =
        serde_json::from_str(&ok(run(&upgraded, &["--json", "predict", "an airline ticket"]))).unwrap();
    assert_eq!(predicted["source"], "TrainedHead", "{predicted}");
    // The old model no longer fits the database's active head.
    let old: serde_json::Value = serde_json::from_str(&ok(run(&base, &["--json", "predict", "x"]))).unwrap();
    assert_ne!(old["source"], "TrainedHead", "{old}");
}

#[test]
fn report_writes_an_html_page_per_task_with_charts() {
    let (dir, base) = session("report");
    let rows: String = (0..24)
        .map(|i| {
            format!(
                "message {i} about {} things,{}\n",
                ["bills", "travel", "family"][i % 3],
                ["bills", "travel", "family"][i % 3]
            )
        })
        .collect();
    let csv = dir.join("examples.csv");
    std::fs::write(&csv, format!("text,label\n{rows}")).unwrap();
    ok(run(&base, &["import", csv.to_str().unwrap()]));
    ok(run(&base, &["describe", "bills", "paying bills and money"]));
    ok(run(&base, &["train"]));
    let out = dir.join("report");
    ok(run(&base, &["report", "--out", out.to_str().unwrap()]));
    let index = std::fs::read_to_string(out.join("index.html")).unwrap();
    assert!(index.contains("task-inbox.html"), "{index}");
    let page = std::fs::read_to_string(out.join("task-inbox.html")).unwrap();
    for part in ["Learning curve", "0 (descriptions)", "Confusion matrix", "Reliability diagram", "Per label", "Heads"]
    {
        assert!(page.contains(part), "missing {part:?}");
    }
    // 8 examples per label, every fourth held out: 2 per label, 6 in all.
    assert!(page.contains("(6 examples)"), "{page}");
    assert_eq!(page.matches("<svg").count(), 4);
    assert_eq!(page.matches("<svg").count(), page.matches("</svg>").count());
}

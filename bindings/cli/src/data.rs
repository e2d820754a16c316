//! The commands over the user's data: examples, training, prediction,
//! search, feedback, forgetting, export.

use std::io::BufRead;
use std::path::{Path, PathBuf};

use attune::{
    AdaptChoice, AdaptationReport, Columns, EncryptionKey, EpochProgress, Error, Forget, HeadChoice, HeadKind,
    ImportFormat, NewDocument, NewExample, NewFeedback, Personalizer, PersonalizerConfig, PrivacyOptions, Retrain,
    Signal, TrainListener, TrainOptions, read_labelled_file,
};
use clap::{Args, Subcommand};

use crate::Cli;

#[derive(Debug, Args)]
pub struct FileColumns {
    /// CSV column or JSON field with the text.
    #[arg(long, default_value = "text")]
    text_col: String,
    /// CSV column or JSON field with the label.
    #[arg(long, default_value = "label")]
    label_col: String,
    /// File format (default: from the extension: .csv, .jsonl).
    #[arg(long, value_parser = parse_format)]
    format: Option<ImportFormat>,
}

fn parse_format(text: &str) -> Result<ImportFormat, String> {
    match text {
        "csv" => Ok(ImportFormat::Csv),
        "jsonl" | "ndjson" => Ok(ImportFormat::JsonLines),
        other => Err(format!("unknown format {other:?} (csv or jsonl)")),
    }
}

impl FileColumns {
    fn read(&self, path: &Path) -> Result<Vec<(String, String)>, Error> {
        read_labelled_file(path, self.format, &Columns { text: self.text_col.clone(), label: self.label_col.clone() })
    }
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    #[arg(long, default_value = "auto")]
    head: String,
    #[arg(long)]
    epochs: Option<usize>,
    #[arg(long)]
    time_budget_ms: Option<u64>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Train a differentially private linear head within this total ε.
    #[arg(long)]
    dp_epsilon: Option<f64>,
    /// Adapt the backbone's top layers to the task first, even when the
    /// automatic choice would not.
    #[arg(long, conflicts_with = "no_adapt")]
    adapt: bool,
    /// Never adapt the backbone's top layers: a head on the frozen features.
    #[arg(long)]
    no_adapt: bool,
}

#[derive(Debug, Subcommand)]
pub enum DocsCommand {
    /// Add or replace one document.
    Add {
        #[arg(long)]
        key: String,
        text: String,
    },
    /// Add documents from a CSV or JSON Lines file with `id` and `text`.
    Import {
        file: PathBuf,
        #[arg(long, default_value = "id")]
        id_col: String,
        #[arg(long, default_value = "text")]
        text_col: String,
    },
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct ForgetWhat {
    #[arg(long)]
    label: Option<String>,
    #[arg(long)]
    example: Option<i64>,
    #[arg(long)]
    text: Option<String>,
    /// Everything created before this time (milliseconds since the epoch).
    #[arg(long)]
    before: Option<i64>,
    /// The whole task.
    #[arg(long)]
    task_data: bool,
    /// Every task and the feature cache.
    #[arg(long)]
    all: bool,
}

/// The default database: `$XDG_DATA_HOME/attune/attune.db`, else under `~/.local/share`.
pub fn default_database() -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME").map(PathBuf::from).unwrap_or_else(|| {
        std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir).join(".local/share")
    });
    base.join("attune").join("attune.db")
}

pub fn open(cli: &Cli) -> Result<Personalizer, Error> {
    let database = cli.db.clone().unwrap_or_else(default_database);
    if let Some(parent) = database.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::Storage(format!("{}: {e}", parent.display())))?;
    }
    let encryption_key = match std::env::var("ATTUNE_KEY") {
        Ok(key) => Some(EncryptionKey::passphrase(key)?),
        Err(_) => None,
    };
    Personalizer::open(&PersonalizerConfig {
        database,
        model_dir: crate::model_dir::resolve(cli.model.as_deref())?,
        encoder: cli.encoder_options(),
        encryption_key,
    })
}

fn print_json(value: &serde_json::Value) {
    println!("{value}");
}

pub fn add(cli: &Cli, label: &str, texts: &[String]) -> Result<(), Error> {
    let p = open(cli)?;
    let examples: Vec<NewExample> = texts.iter().map(|t| NewExample::new(t.clone(), label)).collect();
    let outcome = p.add_examples(&cli.task, &examples)?;
    report_added(cli, outcome.inserted, outcome.duplicates, outcome.evicted);
    Ok(())
}

fn report_added(cli: &Cli, inserted: u64, duplicates: u64, evicted: u64) {
    if cli.json {
        print_json(&serde_json::json!({"inserted": inserted, "duplicates": duplicates, "evicted": evicted}));
    } else {
        println!(
            "added {inserted} example(s) to {:?} ({duplicates} already there, {evicted} removed by retention)",
            cli.task
        );
    }
}

pub fn import(cli: &Cli, file: &Path, columns: &FileColumns) -> Result<(), Error> {
    let rows = columns.read(file)?;
    let p = open(cli)?;
    let total = rows.len();
    let examples = rows.into_iter().map(|(text, label)| Ok(NewExample::new(text, label)));
    // On a terminal progress redraws one line; in a pipe or log each report is a line.
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let outcome = p.import_examples(&cli.task, examples, &mut |so_far| {
        let done = so_far.inserted + so_far.duplicates;
        match (cli.json, terminal) {
            (true, _) => {}
            (false, true) => eprint!("\rimported {done} of {total}"),
            (false, false) => eprintln!("imported {done} of {total}"),
        }
    })?;
    if !cli.json && terminal {
        eprintln!();
    }
    // Embed now, in one place, so training and prediction find the cache warm.
    let texts: Vec<attune::Example> = p.examples(&cli.task)?;
    let refs: Vec<&str> = texts.iter().map(|e| e.text.as_str()).collect();
    p.prepare_features(&refs)?;
    report_added(cli, outcome.inserted, outcome.duplicates, outcome.evicted);
    Ok(())
}

pub fn labels(cli: &Cli) -> Result<(), Error> {
    let p = open(cli)?;
    let labels = p.labels(&cli.task)?;
    if cli.json {
        let rows: Vec<_> =
            labels.iter().map(|l| serde_json::json!({"label": l.label, "examples": l.examples})).collect();
        print_json(&serde_json::json!(rows));
    } else {
        labels.iter().for_each(|l| println!("{:>6}  {}", l.examples, l.label));
    }
    Ok(())
}

pub fn describe(cli: &Cli, label: &str, description: &str) -> Result<(), Error> {
    open(cli)?.describe_label(&cli.task, label, description)?;
    if !cli.json {
        println!("described {label:?}");
    }
    Ok(())
}

struct ProgressLine {
    quiet: bool,
}

impl TrainListener for ProgressLine {
    fn on_epoch(&self, progress: &EpochProgress) {
        if !self.quiet {
            let accuracy =
                progress.validation_accuracy.map(|a| format!(", validation accuracy {a:.3}")).unwrap_or_default();
            eprint!("\r{:<28} epoch {:>3}, loss {:.4}{accuracy}   ", progress.candidate, progress.epoch, progress.loss);
        }
    }
}

pub fn train(cli: &Cli, args: &TrainArgs) -> Result<(), Error> {
    let p = open(cli)?;
    let head = match args.head.as_str() {
        "auto" => HeadChoice::Auto,
        other => HeadChoice::Only(HeadKind::from_name(other)?),
    };
    let options = TrainOptions {
        head,
        epochs: args.epochs,
        seed: args.seed,
        time_budget: args.time_budget_ms.map(std::time::Duration::from_millis),
        privacy: args.dp_epsilon.map(PrivacyOptions::with_budget),
        adapt: match (args.adapt, args.no_adapt) {
            (true, _) => AdaptChoice::Always,
            (_, true) => AdaptChoice::Never,
            _ => AdaptChoice::Auto,
        },
        ..TrainOptions::default()
    };
    // Progress redraws one line: only worth it on a terminal.
    let quiet = cli.json || !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let outcome = p.train(&cli.task, &options, &ProgressLine { quiet })?;
    let report = &outcome.report;
    if cli.json {
        let mut value = serde_json::to_value(report).map_err(|e| Error::Storage(e.to_string()))?;
        value["promoted"] = serde_json::json!(outcome.promotion.promote);
        value["promotion"] = serde_json::to_value(&outcome.promotion).map_err(|e| Error::Storage(e.to_string()))?;
        value["version"] = serde_json::json!(outcome.version);
        print_json(&value);
        return Ok(());
    }
    if !quiet {
        eprintln!();
    }
    println!("{} examples, {} labels; validation: {}", report.examples, report.classes, report.validation_method);
    for candidate in &report.candidates {
        println!(
            "  {:<24} accuracy {:.3}, log loss {:.3}",
            candidate.candidate.to_string(),
            candidate.validation_accuracy,
            candidate.validation_log_loss
        );
    }
    println!("chose {} ({} epochs) in {} ms", report.chosen, report.epochs, report.train_ms);
    if let Some(m) = &report.validation {
        println!(
            "validation: accuracy {:.3}, macro-F1 {:.3}, log loss {:.3}, ECE {:.3}",
            m.accuracy, m.macro_f1, m.log_loss, m.ece
        );
    }
    if let Some(adaptation) = &report.adaptation {
        print_adaptation(adaptation);
    }
    if let Some(privacy) = &report.privacy {
        println!("privacy: ε = {:.2} at δ = {:.0e} for this task so far", privacy.epsilon, privacy.delta);
    }
    let verdict = if outcome.promotion.promote { "promoted" } else { "kept as a candidate" };
    println!("head version {}: {verdict} ({})", outcome.version, outcome.promotion.reason);
    Ok(())
}

fn print_adaptation(adaptation: &AdaptationReport) {
    let percent = |a: Option<f64>| a.map_or("-".to_string(), |a| format!("{:.1}%", 100.0 * a));
    let loss = |l: Option<f64>| l.map_or("-".to_string(), |l| format!("log loss {l:.4}"));
    let judged = format!(
        "held out {}: frozen {} {}, adapted {} {}",
        adaptation.holdout_rows,
        percent(adaptation.frozen_accuracy),
        loss(adaptation.frozen_log_loss),
        percent(adaptation.adapted_accuracy),
        loss(adaptation.adapted_log_loss)
    );
    match (&adaptation.skipped, adaptation.adapted) {
        (_, true) => println!(
            "adapted the top {} layers: {} steps in {} ms, {} values ({judged})",
            adaptation.layers, adaptation.steps, adaptation.adapt_ms, adaptation.trained_values
        ),
        (Some(reason), false) => println!("not adapted: {reason}"),
        (None, false) => {}
    }
}

pub fn predict(cli: &Cli, top_k: usize, texts: &[String]) -> Result<(), Error> {
    let mut texts = texts.to_vec();
    if texts.is_empty() {
        texts = std::io::stdin().lock().lines().map_while(Result::ok).filter(|l| !l.trim().is_empty()).collect();
    }
    let p = open(cli)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let (predictions, source) = p.predict(&cli.task, &refs, top_k)?;
    for (text, prediction) in texts.iter().zip(&predictions) {
        if cli.json {
            let top: Vec<_> = prediction
                .top
                .iter()
                .map(|s| serde_json::json!({"label": s.label, "probability": s.probability}))
                .collect();
            print_json(
                &serde_json::json!({"text": text, "top": top, "abstain": prediction.abstain, "source": format!("{source:?}")}),
            );
        } else {
            let shown: Vec<String> =
                prediction.top.iter().map(|s| format!("{} {:.2}", s.label, s.probability)).collect();
            let abstain = if prediction.abstain { "  (none of these?)" } else { "" };
            println!("{text}\t{}{abstain}", shown.join(", "));
        }
    }
    Ok(())
}

pub fn eval(cli: &Cli, file: &Path, columns: &FileColumns) -> Result<(), Error> {
    let rows = columns.read(file)?;
    let metrics = open(cli)?.evaluate(&cli.task, &rows)?;
    if cli.json {
        print_json(&serde_json::to_value(&metrics).map_err(|e| Error::Storage(e.to_string()))?);
    } else {
        println!(
            "{} examples: accuracy {:.3}, macro-F1 {:.3}, log loss {:.3}, ECE {:.3}",
            metrics.n, metrics.accuracy, metrics.macro_f1, metrics.log_loss, metrics.ece
        );
        for c in &metrics.per_class {
            println!("  {:<24} precision {:.3} recall {:.3} ({} examples)", c.label, c.precision, c.recall, c.support);
        }
    }
    Ok(())
}

pub fn docs(cli: &Cli, command: &DocsCommand) -> Result<(), Error> {
    let documents = match command {
        DocsCommand::Add { key, text } => vec![NewDocument { key: key.clone(), text: text.clone(), metadata: None }],
        DocsCommand::Import { file, id_col, text_col } => {
            let columns = Columns { text: text_col.clone(), label: id_col.clone() };
            read_labelled_file(file, None, &columns)?
                .into_iter()
                .map(|(text, key)| NewDocument { key, text, metadata: None })
                .collect()
        }
    };
    let changed = open(cli)?.add_documents(&cli.task, &documents)?;
    if !cli.json {
        println!("{changed} document(s) added or replaced");
    }
    Ok(())
}

pub fn search(cli: &Cli, query: &str, k: usize) -> Result<(), Error> {
    print_hits(cli, open(cli)?.search(&cli.task, query, k)?);
    Ok(())
}

pub fn recommend(cli: &Cli, k: usize) -> Result<(), Error> {
    print_hits(cli, open(cli)?.recommend(&cli.task, k)?);
    Ok(())
}

fn print_hits(cli: &Cli, hits: Vec<attune::SearchHit>) {
    for hit in hits {
        if cli.json {
            print_json(&serde_json::json!({"key": hit.key, "text": hit.text, "score": hit.score}));
        } else {
            println!("{:.3}  {:<12} {}", hit.score, hit.key, hit.text);
        }
    }
}

pub fn feedback(cli: &Cli, query: &str, document: &str, signal: &str) -> Result<(), Error> {
    let signal = match signal {
        "impression" => Signal::Impression,
        "click" => Signal::Click,
        "skip" => Signal::Skip,
        other => match other.split_once(':') {
            Some(("dwell", s)) => Signal::Dwell(s.parse().map_err(|_| Error::InvalidInput("dwell:SECONDS".into()))?),
            Some(("rating", s)) => Signal::Rating(s.parse().map_err(|_| Error::InvalidInput("rating:STARS".into()))?),
            _ => {
                return Err(Error::InvalidInput(format!(
                    "unknown signal {other:?} (impression, click, skip, dwell:S, rating:R)"
                )));
            }
        },
    };
    let query = (!query.is_empty()).then(|| query.to_string());
    open(cli)?
        .record_feedback(&cli.task, &NewFeedback { query, document_key: document.into(), signal, created_at: None })?;
    Ok(())
}

pub fn forget(cli: &Cli, what: &ForgetWhat) -> Result<(), Error> {
    let target = if let Some(label) = &what.label {
        Forget::Label(label.clone())
    } else if let Some(id) = what.example {
        Forget::Example(id)
    } else if let Some(text) = &what.text {
        Forget::Text(text.clone())
    } else if let Some(before) = what.before {
        Forget::CreatedBetween { from_ms: i64::MIN, to_ms: before }
    } else if what.task_data {
        Forget::Task
    } else {
        Forget::Everything
    };
    let task = (target != Forget::Everything).then_some(cli.task.as_str());
    let report = open(cli)?.forget(task, &target)?;
    let outcome = &report.forgotten;
    let (retrain, retrained_version, private, reason) = match &report.retrain {
        Retrain::NotNeeded => ("not_needed", None, None, None),
        Retrain::Retrained { version, private } => ("retrained", Some(*version), Some(*private), None),
        Retrain::NoExamples => ("no_examples", None, None, None),
        Retrain::PublicStart { reason } => ("public_start", None, None, Some(reason.as_str())),
    };
    if cli.json {
        print_json(&serde_json::json!({"examples": outcome.examples, "documents": outcome.documents,
            "feedback": outcome.feedback, "vectors": outcome.vectors, "heads_invalidated": outcome.heads_invalidated,
            "retrain": retrain, "retrained_version": retrained_version, "retrained_private": private,
            "reason": reason}));
    } else {
        println!(
            "forgot {} example(s), {} document(s), {} feedback event(s), {} cached vector(s); {} head(s) erased; file compacted",
            outcome.examples, outcome.documents, outcome.feedback, outcome.vectors, outcome.heads_invalidated
        );
        match &report.retrain {
            Retrain::Retrained { version, private } => {
                let how =
                    if *private { "privately, charged to the task's privacy budget" } else { "from what remains" };
                println!("retrained {how}: head version {version}");
            }
            Retrain::PublicStart { reason } => {
                println!("no head now ({reason}): predictions come from label descriptions")
            }
            Retrain::NoExamples => println!("no examples left: no head"),
            Retrain::NotNeeded => {}
        }
    }
    Ok(())
}

pub fn export(cli: &Cli, file: &Path) -> Result<(), Error> {
    open(cli)?.export_json_file(file)?;
    if !cli.json {
        println!("exported everything stored to {}", file.display());
    }
    Ok(())
}

pub fn stats(cli: &Cli) -> Result<(), Error> {
    let info = open(cli)?.stats(&cli.task)?;
    if cli.json {
        print_json(&serde_json::json!({"task": info.name, "examples": info.examples, "labels": info.labels,
            "documents": info.documents, "feedback": info.feedback, "active_head": info.active_head_version,
            "trunk_states": info.trunk_states, "trunk_state_bytes": info.trunk_state_bytes}));
    } else {
        println!(
            "{}: {} examples in {} labels, {} documents, {} feedback events, active head {}, \
             trunk states of {} examples ({:.1} MB)",
            info.name,
            info.examples,
            info.labels,
            info.documents,
            info.feedback,
            info.active_head_version.map_or("none".to_string(), |v| format!("v{v}")),
            info.trunk_states,
            info.trunk_state_bytes as f64 / 1e6
        );
    }
    Ok(())
}

pub fn heads(cli: &Cli, rollback: Option<u32>) -> Result<(), Error> {
    let p = open(cli)?;
    if let Some(version) = rollback {
        p.rollback(&cli.task, version)?;
    }
    for head in p.heads(&cli.task)? {
        if cli.json {
            print_json(&serde_json::json!({"version": head.version, "kind": head.kind.name(), "active": head.active,
                "stale": head.stale, "created_at_ms": head.created_at_ms, "private": head.privacy.is_some(),
                "epsilon": head.privacy.map(|p| p.epsilon), "delta": head.privacy.map(|p| p.delta)}));
        } else {
            let state = if head.active {
                "active"
            } else if head.stale {
                "erased (forgotten data)"
            } else {
                "candidate"
            };
            let privacy = head
                .privacy
                .map(|p| format!(", private (ε = {:.2}, δ = {:.0e})", p.epsilon, p.delta))
                .unwrap_or_default();
            println!("v{:<3} {:<10} {state}{privacy}", head.version, head.kind.name());
        }
    }
    Ok(())
}

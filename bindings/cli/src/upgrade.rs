//! `attune upgrade --to DIR`: moves the database to a new model.

use std::path::Path;

use attune::{EncodeListener, Error};

use crate::Cli;

struct EmbeddingLine {
    quiet: bool,
}

impl EncodeListener for EmbeddingLine {
    fn on_progress(&self, done: usize, total: usize) {
        if !self.quiet {
            eprint!("\rembedded {done} of {total} stored texts with the new model");
        }
    }
}

pub fn run(cli: &Cli, to: &Path) -> Result<(), Error> {
    let p = crate::data::open(cli)?;
    let quiet = cli.json || !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let outcome = p.upgrade_model(to, &cli.encoder_options(), &EmbeddingLine { quiet })?;
    if !quiet {
        eprintln!();
    }
    let tasks: Vec<serde_json::Value> = outcome
        .tasks
        .iter()
        .map(|t| {
            let trained = t.trained.as_ref();
            serde_json::json!({
                "task": t.task,
                "head": trained.map(|o| o.report.head.name()),
                "version": trained.map(|o| o.version),
                "validation_accuracy": trained.and_then(|o| o.report.validation.as_ref().map(|v| v.accuracy)),
                "skipped": t.skipped,
            })
        })
        .collect();
    if cli.json {
        println!(
            "{}",
            serde_json::json!({
                "from": outcome.from_fingerprint, "to": outcome.to_fingerprint, "texts": outcome.texts,
                "embedded_now": outcome.embedded_now, "old_vectors_dropped": outcome.old_vectors_dropped, "tasks": tasks,
            })
        );
        return Ok(());
    }
    println!("model {} -> {}", &outcome.from_fingerprint[..12], &outcome.to_fingerprint[..12]);
    println!(
        "{} stored texts, {} embedded now, {} old vectors dropped",
        outcome.texts, outcome.embedded_now, outcome.old_vectors_dropped
    );
    for task in &outcome.tasks {
        match &task.trained {
            Some(o) => println!(
                "  {}: new {} head v{}{}",
                task.task,
                o.report.head.name(),
                o.version,
                o.report
                    .validation
                    .as_ref()
                    .map(|v| format!(", validation accuracy {:.3}", v.accuracy))
                    .unwrap_or_default()
            ),
            None => println!("  {}: not retrained: {}", task.task, task.skipped.as_deref().unwrap_or_default()),
        }
    }
    println!("now use --model {} for this database", to.display());
    Ok(())
}

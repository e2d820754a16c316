//! `attune`: the command line over the Attune runtime.

mod bench;
mod data;
mod demo;
mod embed;
mod model_dir;
mod report;
mod svg;
mod upgrade;

use std::path::PathBuf;
use std::process::ExitCode;

use attune::{Backend, EncoderOptions, OnnxEncoder};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "attune", version, about = "On-device personalization: embed, train and predict on your own data")]
struct Cli {
    /// Database file (default: $ATTUNE_DB, else ~/.local/share/attune/attune.db).
    /// Set ATTUNE_KEY to encrypt it (builds with the `encryption` feature).
    #[arg(long, global = true, env = "ATTUNE_DB")]
    db: Option<PathBuf>,
    /// Model directory (default: $ATTUNE_MODEL, else the fetched catalog default).
    #[arg(long, global = true, env = "ATTUNE_MODEL")]
    model: Option<PathBuf>,
    /// Inference engine.
    #[arg(long, global = true, default_value = "native")]
    backend: Backend,
    /// Threads one inference may use (default: up to 4 cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// The task (a label set and its heads) to work on.
    #[arg(long, global = true, default_value = "default")]
    task: String,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the sentence vectors of TEXTs.
    Embed {
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Add examples with one label.
    Add {
        #[arg(long)]
        label: String,
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Import labelled examples from CSV (header row) or JSON Lines; a file
    /// with any bad line is refused whole, with the line numbers.
    Import {
        file: PathBuf,
        #[command(flatten)]
        columns: data::FileColumns,
    },
    /// Labels with their example counts.
    Labels,
    /// Describe a label in words (zero-shot before examples exist).
    Describe { label: String, description: String },
    /// Train a head; it is promoted only if not worse than the active one.
    Train(data::TrainArgs),
    /// Predict labels of TEXTs (or of each line on stdin).
    Predict {
        #[arg(long, default_value_t = 3)]
        top_k: usize,
        texts: Vec<String>,
    },
    /// Score the task's head on a labelled file; unknown labels count as errors.
    Eval {
        file: PathBuf,
        #[command(flatten)]
        columns: data::FileColumns,
    },
    /// Documents for search.
    Docs {
        #[command(subcommand)]
        command: data::DocsCommand,
    },
    /// Search the task's documents.
    Search {
        query: String,
        #[arg(long, default_value_t = 5)]
        k: usize,
    },
    /// Documents the user likely wants, learned from feedback.
    Recommend {
        #[arg(long, default_value_t = 5)]
        k: usize,
    },
    /// Record feedback: QUERY DOC_ID SIGNAL (impression, click, skip, dwell:S, rating:R).
    Feedback { query: String, document: String, signal: String },
    /// Forget data, its vectors and the heads trained on it; compacts the file.
    Forget(data::ForgetWhat),
    /// Export everything stored about the user as one JSON document.
    Export { file: PathBuf },
    /// Counts for the task.
    Stats,
    /// An HTML page per task with charts: learning curve, confusion matrix,
    /// reliability diagram, per-label metrics, data volume, head history.
    Report {
        /// Directory for the pages (default: ./attune-report).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Move the database to a new model: re-embed every stored text with it
    /// and retrain every task's head (resumable; the old model serves until done).
    Upgrade {
        /// The new model's directory.
        #[arg(long)]
        to: PathBuf,
    },
    /// Compile the model (--model, or the default) for tract into a new
    /// directory OUT: the graph with only the operators it uses, run without
    /// the ONNX parser by small builds (attune-ffi's default). The ONNX file
    /// is not copied; the fingerprint stays, so stores and heads carry over.
    CompileModel {
        /// The new directory.
        out: PathBuf,
        /// Weight products in int8 × int8 (activations quantised per row at
        /// run time): faster, features within cosine 0.995 of the ONNX
        /// path's, and a fingerprint of their own (stores move to it with
        /// `upgrade`).
        #[arg(long)]
        int8: bool,
    },
    /// The task's head versions; --rollback makes an earlier one active.
    Heads {
        #[arg(long)]
        rollback: Option<u32>,
    },
    /// Walk through zero-shot, few-shot, training, search, replies and forgetting.
    Demo,
    /// Measure this machine's speed (the project's benchmarks are `attune-bench`).
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Encoder throughput, latency, load time and peak memory.
    Embed(bench::EmbedBenchArgs),
}

impl Cli {
    fn encoder_options(&self) -> EncoderOptions {
        EncoderOptions::on(self.backend, self.threads)
    }

    fn load_encoder(&self) -> Result<OnnxEncoder, attune::Error> {
        let dir = model_dir::resolve(self.model.as_deref())?;
        OnnxEncoder::load(&dir, &self.encoder_options())
    }
}

fn compile_model(cli: &Cli, out: &std::path::Path, int8: bool) -> Result<(), attune::Error> {
    let source = model_dir::resolve(cli.model.as_deref())?;
    let precision = if int8 { attune::Precision::Int8 } else { attune::Precision::F32 };
    let report = attune::compile_model(&source, out, precision)?;
    if cli.json {
        println!("{}", serde_json::to_string(&report).expect("a report serialises"));
    } else {
        println!(
            "compiled {} into {} ({}, {} weight products in int8): graph {:.1} MB (ONNX {:.1} MB), \
             lowest cosine to the ONNX path {:.6}",
            source.display(),
            out.display(),
            report.precision.name(),
            report.int8_products,
            report.compiled_bytes as f64 / 1e6,
            report.onnx_bytes as f64 / 1e6,
            report.lowest_cosine
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Embed { texts } => embed::run(&cli, texts),
        Command::Add { label, texts } => data::add(&cli, label, texts),
        Command::Import { file, columns } => data::import(&cli, file, columns),
        Command::Labels => data::labels(&cli),
        Command::Describe { label, description } => data::describe(&cli, label, description),
        Command::Train(args) => data::train(&cli, args),
        Command::Predict { top_k, texts } => data::predict(&cli, *top_k, texts),
        Command::Eval { file, columns } => data::eval(&cli, file, columns),
        Command::Docs { command } => data::docs(&cli, command),
        Command::Search { query, k } => data::search(&cli, query, *k),
        Command::Recommend { k } => data::recommend(&cli, *k),
        Command::Feedback { query, document, signal } => data::feedback(&cli, query, document, signal),
        Command::Forget(what) => data::forget(&cli, what),
        Command::Export { file } => data::export(&cli, file),
        Command::Stats => data::stats(&cli),
        Command::Upgrade { to } => upgrade::run(&cli, to),
        Command::Report { out } => report::run(&cli, out.as_deref()),
        Command::CompileModel { out, int8 } => compile_model(&cli, out, *int8),
        Command::Heads { rollback } => data::heads(&cli, *rollback),
        Command::Demo => demo::run(&cli),
        Command::Bench { what: BenchCommand::Embed(args) } => bench::run_embed(&cli, args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("attune: {error}");
            ExitCode::FAILURE
        }
    }
}

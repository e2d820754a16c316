//! `attune`: the command line over the Attune runtime.

mod bench;
mod bench_heads;
mod bench_store;
mod embed;
mod model_dir;

use std::path::PathBuf;
use std::process::ExitCode;

use attune::{Backend, EncoderOptions, OnnxEncoder};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "attune", version, about = "On-device personalization: embed, train and predict on your own data")]
struct Cli {
    /// Model directory (default: $ATTUNE_MODEL, else the fetched catalog default).
    #[arg(long, global = true, env = "ATTUNE_MODEL")]
    model: Option<PathBuf>,
    /// Inference engine.
    #[arg(long, global = true, default_value = "tract", value_parser = parse_backend)]
    backend: Backend,
    /// Threads one inference may use (default: up to 4 cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
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
    /// Measure speed.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Encoder throughput, latency, load time and peak memory.
    Embed(bench::EmbedBenchArgs),
    /// Store import speed, feature-cache lookups and size on disk.
    Store(bench_store::StoreBenchArgs),
    /// Head training on CLINC150 (from ../shared/datasets when present).
    Heads(bench_heads::HeadsBenchArgs),
}

fn parse_backend(text: &str) -> Result<Backend, String> {
    text.parse().map_err(|e: attune::Error| e.to_string())
}

impl Cli {
    fn encoder_options(&self) -> EncoderOptions {
        let mut options = EncoderOptions { backend: self.backend, ..EncoderOptions::default() };
        if let Some(threads) = self.threads {
            options.threads = threads;
        }
        options
    }

    fn load_encoder(&self) -> Result<OnnxEncoder, attune::Error> {
        let dir = model_dir::resolve(self.model.as_deref())?;
        OnnxEncoder::load(&dir, &self.encoder_options())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Embed { texts } => embed::run(&cli, texts),
        Command::Bench { what: BenchCommand::Embed(args) } => bench::run_embed(&cli, args),
        Command::Bench { what: BenchCommand::Store(args) } => bench_store::run(cli.json, args),
        Command::Bench { what: BenchCommand::Heads(args) } => bench_heads::run(&cli, args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("attune: {error}");
            ExitCode::FAILURE
        }
    }
}

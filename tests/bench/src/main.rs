//! `attune-bench`: Attune's benchmarks on public data sets, through the
//! public API. Data sets are arguments (`tests/bench/*.py` pass
//! `../shared/datasets/…` by default); results are JSON on stdout, with
//! progress on stderr. `attune bench embed` stays in the CLI, as a user's
//! speed check.

mod adapt;
mod heads;
mod ranking;
mod search;
mod store;
#[path = "../../../runtime/src/test_rng.rs"]
mod test_rng;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use attune::{Backend, EncoderOptions, OnnxEncoder};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "attune-bench", about = "Attune's benchmarks on public data sets")]
struct Cli {
    /// Model directory (default: the catalog's default model in models/cache).
    #[arg(long, global = true)]
    model: Option<PathBuf>,
    /// Inference engine.
    #[arg(long, global = true, default_value = "native")]
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
    /// Store import speed, feature-cache lookups and size on disk.
    Store(store::StoreBenchArgs),
    /// Head training on CLINC150.
    Heads(heads::HeadsBenchArgs),
    /// Adapting the backbone's top layers through `train`, on CLINC150.
    Adapt(adapt::AdaptBenchArgs),
    /// Exact top-k search latency over many documents.
    Search(search::SearchBenchArgs),
    /// NDCG@10 of personalised search for simulated users on CLINC150.
    Ranking(ranking::RankingBenchArgs),
}

impl Cli {
    fn encoder_options(&self) -> EncoderOptions {
        EncoderOptions::on(self.backend, self.threads)
    }

    fn model_dir(&self) -> Result<PathBuf, attune::Error> {
        if let Some(dir) = &self.model {
            return Ok(dir.clone());
        }
        let models = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models");
        let catalog = attune::ModelCatalog::load(&models.join("catalog.json"))?;
        Ok(models.join("cache").join(&catalog.default))
    }

    fn load_encoder(&self) -> Result<OnnxEncoder, attune::Error> {
        OnnxEncoder::load(&self.model_dir()?, &self.encoder_options())
    }
}

/// Peak resident memory of this process so far (Linux), in bytes.
fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match &cli.command {
        Command::Store(args) => store::run(cli.json, args),
        Command::Heads(args) => heads::run(&cli, args),
        Command::Adapt(args) => adapt::run(&cli, args),
        Command::Search(args) => search::run(cli.json, args),
        Command::Ranking(args) => ranking::run(&cli, args),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("attune-bench: {error}");
            ExitCode::FAILURE
        }
    }
}

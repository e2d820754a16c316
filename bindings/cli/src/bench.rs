//! `attune bench embed`: encoder speed on a fixed set of sentences.

use std::time::{Duration, Instant};

use attune::{Encoder, Error, OnnxEncoder};

use crate::Cli;

/// Sentences written for this project: messages, notes, requests; 2 to 40 words.
const SENTENCES: &str = include_str!("../../../tests/data/sentences.txt");

#[derive(Debug, clap::Args)]
pub struct EmbedBenchArgs {
    /// Timed passes over the sentences per mode; the median pass is reported.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Texts per call in the batched modes.
    #[arg(long, default_value_t = 32)]
    batch: usize,
}

/// One way of calling the encoder over all sentences.
struct Mode {
    name: &'static str,
    /// Texts handed to one `embed` call.
    call_size: usize,
}

struct ModeResult {
    name: &'static str,
    sentences_per_second: f64,
    p50_ms: f64,
    p95_ms: f64,
}

pub fn run_embed(cli: &Cli, args: &EmbedBenchArgs) -> Result<(), Error> {
    if args.rounds == 0 || args.batch == 0 {
        return Err(Error::InvalidInput("--rounds and --batch must be at least 1".into()));
    }
    let sentences: Vec<&str> = SENTENCES.lines().collect();
    let started = Instant::now();
    let encoder = cli.load_encoder()?;
    let load = started.elapsed();
    encoder.embed(&["The first call after loading."])?;
    let load_and_first = started.elapsed();

    let modes = [
        Mode { name: "batch 1", call_size: 1 },
        Mode { name: "batch 32, caller order", call_size: args.batch },
        Mode { name: "all at once, length-bucketed", call_size: sentences.len() },
    ];
    let results =
        modes.iter().map(|mode| measure(&encoder, &sentences, mode, args.rounds)).collect::<Result<Vec<_>, Error>>()?;
    let peak_rss_mb = peak_rss_bytes().map(|b| b as f64 / 1e6);

    if cli.json {
        let modes: Vec<_> = results
            .iter()
            .map(|r| {
                serde_json::json!({
                    "mode": r.name, "sentences_per_second": r.sentences_per_second,
                    "p50_ms": r.p50_ms, "p95_ms": r.p95_ms,
                })
            })
            .collect();
        let document = serde_json::json!({
            "backend": encoder.backend().to_string(),
            "model": encoder.manifest().id,
            "threads": cli.encoder_options().threads,
            "sentences": sentences.len(),
            "rounds": args.rounds,
            "load_ms": load.as_secs_f64() * 1e3,
            "load_and_first_embedding_ms": load_and_first.as_secs_f64() * 1e3,
            "peak_rss_mb": peak_rss_mb,
            "precision": encoder.manifest().precision().name(),
            "matrix_kernels": encoder.matrix_kernels(),
            "modes": modes,
        });
        println!("{document}");
        return Ok(());
    }
    println!(
        "model {} on {} with {} thread(s); {} sentences, median of {} rounds",
        encoder.manifest().id,
        encoder.backend(),
        cli.encoder_options().threads,
        sentences.len(),
        args.rounds
    );
    println!("load {:.0} ms; load + first embedding {:.0} ms", ms(load), ms(load_and_first));
    let kernels: Vec<String> = encoder.matrix_kernels().iter().map(|(name, n)| format!("{name} ×{n}")).collect();
    if !kernels.is_empty() {
        println!("{} weights; matrix kernels: {}", encoder.manifest().precision().name(), kernels.join(", "));
    }
    println!("{:<30} {:>12} {:>14} {:>14}", "mode", "sentences/s", "p50 ms/call", "p95 ms/call");
    for r in &results {
        println!("{:<30} {:>12.1} {:>14.2} {:>14.2}", r.name, r.sentences_per_second, r.p50_ms, r.p95_ms);
    }
    match peak_rss_mb {
        Some(mb) => println!("peak RSS {mb:.0} MB"),
        None => println!("peak RSS: not available on this platform"),
    }
    Ok(())
}

fn measure(encoder: &OnnxEncoder, sentences: &[&str], mode: &Mode, rounds: usize) -> Result<ModeResult, Error> {
    let mut pass_times = Vec::with_capacity(rounds);
    let mut call_times = Vec::new();
    for _ in 0..rounds {
        let pass = Instant::now();
        for chunk in sentences.chunks(mode.call_size) {
            let call = Instant::now();
            encoder.embed(chunk)?;
            call_times.push(call.elapsed());
        }
        pass_times.push(pass.elapsed());
    }
    pass_times.sort_unstable();
    call_times.sort_unstable();
    let median_pass = pass_times[pass_times.len() / 2];
    Ok(ModeResult {
        name: mode.name,
        sentences_per_second: sentences.len() as f64 / median_pass.as_secs_f64(),
        p50_ms: ms(percentile(&call_times, 0.50)),
        p95_ms: ms(percentile(&call_times, 0.95)),
    })
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// High-water mark of resident memory (Linux `VmHWM`).
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

//! `attune-bench store`: import speed, feature-cache lookups, size on disk.

use std::path::{Path, PathBuf};
use std::time::Instant;

use attune::{EncryptionKey, Error, NewExample, Store, StoreOptions, VectorEncoding};

#[derive(Debug, clap::Args)]
pub struct StoreBenchArgs {
    /// Examples in the import run.
    #[arg(long, default_value_t = 100_000)]
    rows: usize,
    /// Rows per committed transaction during the import.
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Directory for the scratch databases (default: the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const DIM: usize = 384;
const LABELS: [&str; 8] = ["work", "family", "travel", "bills", "health", "shopping", "friends", "news"];
const WORDS: [&str; 16] = [
    "meeting", "dinner", "flight", "invoice", "doctor", "order", "party", "update", "tomorrow", "tonight", "please",
    "confirm", "reminder", "weekend", "receipt", "photos",
];

/// A varied, reproducible text for row `i`.
fn text(i: usize) -> String {
    let w = |k: usize| WORDS[(i / 16usize.pow(k as u32)) % WORDS.len()];
    format!("{} {} {} note number {i}", w(0), w(1), w(2))
}

fn unit_vector(seed: usize) -> Vec<f32> {
    let mut state = seed as u64 * 2654435761 + 1;
    let mut v: Vec<f32> = (0..DIM)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= norm);
    v
}

fn number(report: &serde_json::Value, key: &str) -> f64 {
    report[key].as_f64().unwrap_or(f64::NAN)
}

/// Encrypted with the passphrase in `ATTUNE_KEY` when it is set, as the CLI's
/// other commands are.
fn options() -> Result<StoreOptions, Error> {
    let encryption_key = std::env::var("ATTUNE_KEY").ok().map(EncryptionKey::passphrase).transpose()?;
    Ok(StoreOptions { encryption_key, ..StoreOptions::default() })
}

pub fn run(json: bool, args: &StoreBenchArgs) -> Result<(), Error> {
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir).join(format!("attune-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::Storage(e.to_string()))?;
    let outcome = measure(&dir, args);
    let _ = std::fs::remove_dir_all(&dir);
    let report = outcome?;
    if json {
        println!("{report}");
    } else {
        println!(
            "import: {} rows in {:.2} s = {:.0} rows/s (batches of {}, {})",
            args.rows,
            number(&report, "import_s"),
            number(&report, "import_rows_per_s"),
            args.batch,
            if std::env::var_os("ATTUNE_KEY").is_some() { "encrypted" } else { "not encrypted" }
        );
        println!(
            "feature cache: {:.0} hits/s, {:.0} misses/s, {:.0} writes/s (384-d f32)",
            number(&report, "cache_hits_per_s"),
            number(&report, "cache_misses_per_s"),
            number(&report, "cache_writes_per_s")
        );
        println!(
            "size per 10,000 examples with vectors: {:.1} MB (f32), {:.1} MB (f16)",
            number(&report, "mb_per_10k_f32"),
            number(&report, "mb_per_10k_f16")
        );
        println!(
            "f16 vectors: worst cosine to f32 {:.6} over 10,000 unit vectors",
            number(&report, "f16_worst_cosine")
        );
        println!("peak RSS {:.0} MB", number(&report, "peak_rss_mb"));
    }
    Ok(())
}

fn measure(dir: &Path, args: &StoreBenchArgs) -> Result<serde_json::Value, Error> {
    let store = Store::open(&dir.join("import.db"), &options()?)?;
    let task = store.ensure_task("bench")?;
    let rows = (0..args.rows).map(|i| Ok(NewExample::new(text(i), LABELS[i % LABELS.len()])));
    let started = Instant::now();
    let imported = store.import_examples(task, rows, args.batch, &mut |_| {})?;
    let import_s = started.elapsed().as_secs_f64();
    if imported.inserted != args.rows as u64 {
        return Err(Error::Storage(format!("imported {} of {} rows", imported.inserted, args.rows)));
    }

    let texts: Vec<String> = (0..10_000).map(text).collect();
    let vectors: Vec<Vec<f32>> = (0..texts.len()).map(unit_vector).collect();
    let entries: Vec<(&str, &[f32])> =
        texts.iter().map(String::as_str).zip(vectors.iter().map(Vec::as_slice)).collect();
    let started = Instant::now();
    for chunk in entries.chunks(1_000) {
        store.cache_features("bench-f32", chunk, VectorEncoding::F32)?;
    }
    let writes_per_s = entries.len() as f64 / started.elapsed().as_secs_f64();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let started = Instant::now();
    let hits = store.cached_features("bench-f32", &refs)?;
    let hits_per_s = refs.len() as f64 / started.elapsed().as_secs_f64();
    let missing: Vec<String> = (0..10_000).map(|i| format!("never cached {i}")).collect();
    let missing: Vec<&str> = missing.iter().map(String::as_str).collect();
    let started = Instant::now();
    let misses = store.cached_features("bench-f32", &missing)?;
    let misses_per_s = missing.len() as f64 / started.elapsed().as_secs_f64();
    if hits.iter().any(Option::is_none) || misses.iter().any(Option::is_some) {
        return Err(Error::Storage("feature cache returned wrong hits".into()));
    }
    drop(store);

    let mb_f32 = size_per_10k(dir, &texts, &entries, VectorEncoding::F32)?;
    let mb_f16 = size_per_10k(dir, &texts, &entries, VectorEncoding::F16)?;
    let f16_worst = f16_worst_cosine(dir, &entries)?;
    Ok(serde_json::json!({
        "rows": args.rows, "import_s": import_s, "import_rows_per_s": args.rows as f64 / import_s,
        "cache_hits_per_s": hits_per_s, "cache_misses_per_s": misses_per_s, "cache_writes_per_s": writes_per_s,
        "mb_per_10k_f32": mb_f32, "mb_per_10k_f16": mb_f16, "f16_worst_cosine": f16_worst,
        "peak_rss_mb": crate::peak_rss_bytes().map(|b| b as f64 / 1e6),
    }))
}

/// Size of a compacted database holding 10,000 examples and their vectors.
fn size_per_10k(
    dir: &Path,
    texts: &[String],
    entries: &[(&str, &[f32])],
    encoding: VectorEncoding,
) -> Result<f64, Error> {
    let path = dir.join(format!("size-{encoding:?}.db"));
    let store = Store::open(&path, &options()?)?;
    let task = store.ensure_task("size")?;
    let examples: Vec<_> =
        texts.iter().enumerate().map(|(i, t)| NewExample::new(t, LABELS[i % LABELS.len()])).collect();
    store.add_examples(task, &examples)?;
    store.cache_features("fp", entries, encoding)?;
    store.compact()?;
    let bytes = std::fs::metadata(&path).map_err(|e| Error::Storage(e.to_string()))?.len();
    Ok(bytes as f64 / 1e6)
}

fn f16_worst_cosine(dir: &Path, entries: &[(&str, &[f32])]) -> Result<f64, Error> {
    let store = Store::open(&dir.join("size-F16.db"), &options()?)?;
    let texts: Vec<&str> = entries.iter().map(|e| e.0).collect();
    let decoded = store.cached_features("fp", &texts)?;
    let mut worst = 1.0f64;
    for ((_, original), back) in entries.iter().zip(decoded) {
        let back = back.ok_or_else(|| Error::Storage("missing f16 vector".into()))?;
        let dot: f64 = original.iter().zip(&back).map(|(a, b)| f64::from(*a) * f64::from(*b)).sum();
        let norm: f64 = back.iter().map(|b| f64::from(*b).powi(2)).sum::<f64>().sqrt();
        worst = worst.min(dot / norm);
    }
    Ok(worst)
}

//! `attune-bench search`: exact top-k latency over many 384-wide documents.

use std::time::Instant;

use attune::Error;

#[derive(Debug, clap::Args)]
pub struct SearchBenchArgs {
    /// Collection sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
    docs: Vec<usize>,
    #[arg(long, default_value_t = 200)]
    queries: usize,
    #[arg(long, default_value_t = 10)]
    k: usize,
    #[arg(long, default_value_t = 384)]
    dim: usize,
}

pub fn run(json: bool, args: &SearchBenchArgs) -> Result<(), Error> {
    let mut rows = Vec::new();
    for &n in &args.docs {
        let index = attune::VectorIndex::new(unit_rows(n, args.dim, 1), args.dim);
        let queries = unit_rows(args.queries, args.dim, 2);
        let mut latencies = Vec::with_capacity(args.queries);
        let mut checksum = 0usize;
        for query in queries.chunks_exact(args.dim) {
            let started = Instant::now();
            checksum += index.top_k(query, args.k).first().map_or(0, |hit| hit.0);
            latencies.push(started.elapsed().as_secs_f64() * 1e3);
        }
        let (p50, p95) = percentiles(&mut latencies);
        rows.push(serde_json::json!({"docs": n, "p50_ms": p50, "p95_ms": p95, "checksum": checksum}));
    }
    if json {
        println!("{}", serde_json::json!({"dim": args.dim, "k": args.k, "queries": args.queries, "results": rows}));
    } else {
        let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        for row in rows {
            println!(
                "{:>7} docs of {}: p50 {:.2} ms, p95 {:.2} ms (exact top-{})",
                row["docs"],
                args.dim,
                f(&row["p50_ms"]),
                f(&row["p95_ms"]),
                args.k
            );
        }
    }
    Ok(())
}

fn percentiles(values: &mut [f64]) -> (f64, f64) {
    values.sort_by(f64::total_cmp);
    let at = |q: f64| values[((values.len() - 1) as f64 * q).round() as usize];
    (at(0.5), at(0.95))
}

/// `n` reproducible random unit vectors, row-major.
pub fn unit_rows(n: usize, dim: usize, seed: u64) -> Vec<f32> {
    let mut rng = crate::test_rng::XorShift::seeded(seed);
    let mut values: Vec<f32> = (0..n * dim).map(|_| rng.centred()).collect();
    for row in values.chunks_exact_mut(dim) {
        let norm = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= norm);
    }
    values
}

//! Exact search over a task's documents: every document vector is scored
//! against the query (unit vectors: the dot product is the cosine), plus the
//! user's learned preference when there is feedback, and the best `k` kept.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use super::coarse::CoarseCopy;
use super::ranker::{Preference, dot};
use super::scan::{best_listed_rows, best_rows};
use super::scan_pool;
use crate::store::Document;

/// A ranked search result.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    pub key: String,
    pub text: String,
    pub metadata: Option<String>,
    /// Cosine similarity to the query plus the learned preference (which is
    /// zero until there is feedback); for recommendations, the preference alone.
    pub score: f32,
}

/// Dense vectors for exact top-k search. Large indexes keep a quarter-size
/// 8-bit copy for a first pass (a quarter of the bytes read per query); the
/// rows it cannot rule out are scored in f32, so results are the f32 scan's.
#[derive(Debug, Clone)]
pub struct VectorIndex {
    /// Shared with the scan threads.
    rows: Arc<Rows>,
}

#[derive(Debug)]
struct Rows {
    vectors: Vec<f32>,
    dim: usize,
    coarse: Option<CoarseCopy>,
    /// The CPU's SIMD, detected once.
    arch: pulp::Arch,
}

/// Below this many rows a scan is faster on one thread than split (handing
/// a slice to a parked thread and waking it costs about as much as
/// scanning a thousand rows).
const PARALLEL_SCAN_ROWS: usize = 2_000;
const MAX_SCAN_THREADS: usize = 4;
/// Rows a thread claims at a time: enough to make a claim cheap, few enough
/// that the threads finish together.
const CLAIM_ROWS: usize = 1_024;
/// From this many rows a first pass over the 8-bit copy pays for itself.
const COARSE_COPY_ROWS: usize = 1_024;
/// Semantic results that remembered choices may lift into the top k.
const RECALL_POOL: usize = 50;

impl VectorIndex {
    /// `vectors` is `n × dim`, row-major.
    pub fn new(vectors: Vec<f32>, dim: usize) -> Self {
        let dim = dim.max(1);
        let coarse = (vectors.len() / dim >= COARSE_COPY_ROWS).then(|| CoarseCopy::new(&vectors, dim));
        Self { rows: Arc::new(Rows { vectors, dim, coarse, arch: pulp::Arch::new() }) }
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.vectors.is_empty()
    }

    pub fn row(&self, i: usize) -> &[f32] {
        self.rows.row(i)
    }

    /// The `k` rows with the highest dot product with `query`, best first,
    /// ties in row order: every row is scored. Large indexes are scanned by
    /// up to 4 threads (parked ones and this one) claiming ranges of rows as
    /// they go, so a thread that wakes late or runs on a slower core scans
    /// less; their own top `k` are merged.
    pub fn top_k(&self, query: &[f32], k: usize) -> Vec<(usize, f32)> {
        let rows = self.len();
        let helpers = if rows < PARALLEL_SCAN_ROWS { 0 } else { scan_pool::helpers(MAX_SCAN_THREADS - 1) };
        if helpers == 0 {
            return self.rows.scan([(0, rows)], query, k);
        }
        let claims = Arc::new(Claims { next: AtomicUsize::new(0), rows });
        let shared_query: Arc<[f32]> = query.into();
        let answers: Vec<_> = (0..helpers)
            .filter_map(|_| {
                let (index, claims, query) = (Arc::clone(&self.rows), Arc::clone(&claims), Arc::clone(&shared_query));
                scan_pool::submit(move || index.scan(claims.iter(), &query, k))
            })
            .collect();
        let mut merged = self.rows.scan(claims.iter(), query, k);
        for answer in answers {
            match answer.recv() {
                Ok(best) => merged.extend(best),
                // Its thread failed mid-scan: which rows it claimed is unknown.
                Err(_) => return self.rows.scan([(0, rows)], query, k),
            }
        }
        rank(&mut merged, k);
        merged
    }
}

/// Ranges of rows handed out in order to whichever thread asks next.
struct Claims {
    next: AtomicUsize,
    rows: usize,
}

impl Claims {
    fn iter(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        std::iter::from_fn(|| {
            let start = self.next.fetch_add(CLAIM_ROWS, Ordering::Relaxed);
            (start < self.rows).then(|| (start, (start + CLAIM_ROWS).min(self.rows)))
        })
    }
}

impl Rows {
    fn len(&self) -> usize {
        self.vectors.len() / self.dim
    }

    fn row(&self, i: usize) -> &[f32] {
        &self.vectors[i * self.dim..(i + 1) * self.dim]
    }

    /// The top `k` of the rows in `ranges` (each `start..end`).
    fn scan(&self, ranges: impl IntoIterator<Item = (usize, usize)>, query: &[f32], k: usize) -> Vec<(usize, f32)> {
        match &self.coarse {
            Some(coarse) => {
                let mut pass = coarse.first_pass(query, k);
                ranges.into_iter().for_each(|(start, end)| pass.scan(self.arch, start, end));
                best_listed_rows(self.arch, &self.vectors, self.dim, &pass.candidates(), query, k)
            }
            None => {
                let mut best = Vec::new();
                for (start, end) in ranges {
                    let slice = &self.vectors[start * self.dim..end * self.dim];
                    best.extend(best_rows(self.arch, slice, self.dim, start, query, k));
                    rank(&mut best, k);
                }
                best
            }
        }
    }
}

/// Keeps the best `k` of `scored`, sorted best first, ties in row order.
fn rank(scored: &mut Vec<(usize, f32)>, k: usize) {
    let k = k.min(scored.len());
    if k == 0 {
        scored.clear();
        return;
    }
    let order = |a: &(usize, f32), b: &(usize, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    scored.select_nth_unstable_by(k - 1, order);
    scored.truncate(k);
    scored.sort_by(order);
}

/// One task's documents and their vectors.
pub(crate) struct Index {
    documents: Vec<Document>,
    vectors: VectorIndex,
    rows: HashMap<String, usize>,
}

impl Index {
    pub fn new(documents: Vec<Document>, vectors: Vec<f32>, dim: usize) -> Self {
        let rows = documents.iter().enumerate().map(|(i, d)| (d.key.clone(), i)).collect();
        Self { documents, vectors: VectorIndex::new(vectors, dim), rows }
    }

    pub fn vector(&self, key: &str) -> Option<Vec<f32>> {
        self.rows.get(key).map(|&i| self.vectors.row(i).to_vec())
    }

    /// With a query: the best `k` of the semantic shortlist by
    /// `cos(query, d) + u · d + recall(query, d)`; without: the best `k` of
    /// all documents by `u · d`.
    pub fn top_k(&self, query: Option<&[f32]>, preference: &Preference, k: usize) -> Vec<SearchHit> {
        let ranked = match query {
            // The preference vector only reorders the plain top k: it was
            // learned among shown results, so it may reorder what is relevant
            // but must not pull in what is not. What the user chose for
            // similar queries may lift a document from the wider shortlist.
            Some(q) => {
                let mut shortlist = self.vectors.top_k(q, k.max(RECALL_POOL));
                for (position, (row, score)) in shortlist.iter_mut().enumerate() {
                    *score += preference.recall(q, &self.documents[*row].key);
                    if position < k {
                        *score += dot(self.vectors.row(*row), &preference.u);
                    }
                }
                rank(&mut shortlist, k);
                shortlist
            }
            None => self.vectors.top_k(&preference.u, k),
        };
        ranked
            .into_iter()
            .map(|(i, score)| {
                let d = &self.documents[i];
                SearchHit { key: d.key.clone(), text: d.text.clone(), metadata: d.metadata.clone(), score }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_scans_agree_with_one_scan() {
        let dim = 8;
        let vectors: Vec<f32> =
            (0..(PARALLEL_SCAN_ROWS + 7) * dim).map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
        let index = VectorIndex::new(vectors, dim);
        let query = [0.3, -0.2, 0.9, 0.1, -0.5, 0.4, 0.0, 0.2];
        assert_eq!(index.top_k(&query, 25), index.rows.scan([(0, index.len())], &query, 25));
    }

    #[test]
    fn the_8_bit_first_pass_returns_the_f32_scan_score_for_score() {
        // Rows repeat with period 97 (exact ties) and neighbours differ by
        // less than 8 bits can tell apart (near ties), in a width with a
        // remainder; one row of huge values has a coarse bound of its own.
        for dim in [384, 37] {
            let rows = COARSE_COPY_ROWS * 3;
            let mut vectors: Vec<f32> = (0..rows * dim)
                .map(|i| (((i / dim % 97) * 31 + i % dim * 7) % 101) as f32 / 101.0 - 0.5 + (i / dim) as f32 * 1e-7)
                .collect();
            vectors[5 * dim..6 * dim].iter_mut().for_each(|v| *v *= 50.0);
            let index = VectorIndex::new(vectors.clone(), dim);
            assert!(index.rows.coarse.is_some());
            let query: Vec<f32> = (0..dim).map(|j| ((j * 13) % 11) as f32 / 11.0 - 0.45).collect();
            for k in [1, 10, 100, rows + 3] {
                let f32_scan = best_rows(pulp::Arch::new(), &vectors, dim, 0, &query, k);
                assert_eq!(index.rows.scan([(0, rows)], &query, k), f32_scan, "dim {dim}, k {k}");
                assert_eq!(index.top_k(&query, k), f32_scan, "dim {dim}, k {k}, in claimed ranges");
            }
        }
    }

    #[test]
    fn concurrent_searches_each_get_their_own_answer() {
        // Callers share the parked threads and interleave their claims.
        let (dim, rows) = (16, PARALLEL_SCAN_ROWS * 3 + 5);
        let vectors: Vec<f32> = (0..rows * dim).map(|i| ((i * 7919) % 1013) as f32 / 1013.0 - 0.5).collect();
        let index = VectorIndex::new(vectors, dim);
        let queries: Vec<Vec<f32>> =
            (0..6).map(|q| (0..dim).map(|j| ((j * 31 + q * 17) % 23) as f32 / 23.0 - 0.5).collect()).collect();
        let expected: Vec<_> = queries.iter().map(|q| index.rows.scan([(0, rows)], q, 10)).collect();
        std::thread::scope(|scope| {
            for (query, expected) in queries.iter().zip(&expected) {
                let index = &index;
                scope.spawn(move || (0..25).for_each(|_| assert_eq!(index.top_k(query, 10), *expected)));
            }
        });
    }

    #[test]
    fn top_k_is_sorted_exact_and_breaks_ties_by_row() {
        let index = VectorIndex::new(vec![0.1, 0.0, 0.9, 0.0, 0.5, 0.0, 0.9, 0.0], 2);
        assert_eq!(index.top_k(&[1.0, 0.0], 3), vec![(1, 0.9), (3, 0.9), (2, 0.5)]);
        assert_eq!(index.top_k(&[1.0, 0.0], 10).len(), 4);
        assert!(index.top_k(&[1.0, 0.0], 0).is_empty());
    }
}

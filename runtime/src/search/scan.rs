//! The exact scan behind search: one query against every row of a block of
//! vectors, keeping the best `k` as it goes. The dot products run on the
//! widest SIMD the CPU has (AVX2 with FMA, AVX-512, NEON), chosen at run
//! time, so one binary is fast on every device; the running top `k` keeps
//! memory flat (no score per row is stored).

use pulp::{Arch, Simd, WithSimd};

/// The best `k` rows of `vectors` (`rows × dim`, rows numbered from
/// `first_row`) by dot product with `query`: best first, ties in row order.
pub(super) fn best_rows(
    arch: Arch,
    vectors: &[f32],
    dim: usize,
    first_row: usize,
    query: &[f32],
    k: usize,
) -> Vec<(usize, f32)> {
    let rows = vectors.chunks_exact(dim).enumerate().map(|(i, row)| (first_row + i, row));
    arch.dispatch(Scan { rows, query, k })
}

/// The best `k` of `rows` (ascending row numbers into `vectors`), scored
/// and ranked exactly as [`best_rows`] does.
pub(super) fn best_listed_rows(
    arch: Arch,
    vectors: &[f32],
    dim: usize,
    rows: &[usize],
    query: &[f32],
    k: usize,
) -> Vec<(usize, f32)> {
    let rows = rows.iter().map(|&row| (row, &vectors[row * dim..(row + 1) * dim]));
    arch.dispatch(Scan { rows, query, k })
}

/// Rows (number, values) in ascending order, scored against `query`.
struct Scan<'a, R> {
    rows: R,
    query: &'a [f32],
    k: usize,
}

impl<'a, R: Iterator<Item = (usize, &'a [f32])>> WithSimd for Scan<'a, R> {
    type Output = Vec<(usize, f32)>;

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) -> Self::Output {
        let mut best = TopK::new(self.k);
        for (row, values) in self.rows {
            best.offer(row, dot(simd, values, self.query));
        }
        best.into_sorted()
    }
}

/// `a · b` with four independent SIMD sums (the FMA latency hides behind them).
#[inline(always)]
fn dot<S: Simd>(simd: S, a: &[f32], b: &[f32]) -> f32 {
    let (a_lanes, a_rest) = S::as_simd_f32s(a);
    let (b_lanes, b_rest) = S::as_simd_f32s(b);
    let (a_quads, a_single) = pulp::as_arrays::<4, _>(a_lanes);
    let (b_quads, b_single) = pulp::as_arrays::<4, _>(b_lanes);
    let mut sums = [simd.splat_f32s(0.0); 4];
    for (x, y) in a_quads.iter().zip(b_quads) {
        for lane in 0..4 {
            sums[lane] = simd.mul_add_f32s(x[lane], y[lane], sums[lane]);
        }
    }
    for (x, y) in a_single.iter().zip(b_single) {
        sums[0] = simd.mul_add_f32s(*x, *y, sums[0]);
    }
    let total = simd.add_f32s(simd.add_f32s(sums[0], sums[1]), simd.add_f32s(sums[2], sums[3]));
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(x, y)| x * y).sum();
    simd.reduce_sum_f32s(total) + tail
}

/// The best `k` (row, score) pairs offered so far, best first; of equal
/// scores the earlier row ranks first. Rows are offered in ascending order.
/// A score rarely beats the k-th, so offering costs one comparison.
pub(super) struct TopK {
    k: usize,
    kept: Vec<(usize, f32)>,
}

impl TopK {
    pub fn new(k: usize) -> Self {
        Self { k, kept: Vec::with_capacity(k + 1) }
    }

    #[inline(always)]
    pub fn offer(&mut self, row: usize, score: f32) {
        let full = self.kept.len() == self.k;
        // NaN never ranks; nor does a score not better than the worst kept
        // (a later row loses a tie).
        if self.k == 0 || score.is_nan() || (full && score <= self.kept[self.k - 1].1) {
            return;
        }
        let at = self.kept.partition_point(|&(_, kept)| kept >= score);
        self.kept.insert(at, (row, score));
        self.kept.truncate(self.k);
    }

    /// The k-th best score, once there are `k`.
    pub fn kth(&self) -> Option<f32> {
        (self.k > 0 && self.kept.len() == self.k).then(|| self.kept[self.k - 1].1)
    }

    fn into_sorted(self) -> Vec<(usize, f32)> {
        self.kept
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain_dot(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| f64::from(*x) * f64::from(*y)).sum::<f64>() as f32
    }

    #[test]
    fn the_scan_equals_sorting_every_score() {
        // Widths with and without a SIMD remainder; repeated rows make ties.
        for dim in [384, 37, 3] {
            let rows = 300;
            let vectors: Vec<f32> =
                (0..rows * dim).map(|i| (((i % (dim * 97)) * 7919) % 1000) as f32 / 1000.0 - 0.5).collect();
            let query: Vec<f32> = (0..dim).map(|j| ((j * 31) % 17) as f32 / 17.0 - 0.4).collect();
            let mut expected: Vec<(usize, f32)> =
                vectors.chunks_exact(dim).enumerate().map(|(i, row)| (i, plain_dot(row, &query))).collect();
            expected.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            for k in [0, 1, 10, 50, rows + 5] {
                let got = best_rows(Arch::new(), &vectors, dim, 0, &query, k);
                assert_eq!(got.len(), k.min(rows));
                for (g, e) in got.iter().zip(&expected) {
                    assert!((g.1 - e.1).abs() <= 1e-5, "dim {dim}, k {k}: {g:?} vs {e:?}");
                }
                assert!(got.windows(2).all(|w| w[0].1 > w[1].1 || (w[0].1 == w[1].1 && w[0].0 < w[1].0)));
            }
        }
    }

    #[test]
    fn ties_go_to_the_earlier_row_and_nan_never_ranks() {
        let vectors = [1.0, 0.0, 0.5, 0.0, 1.0, 0.0, f32::NAN, 0.0];
        assert_eq!(best_rows(Arch::new(), &vectors, 2, 10, &[1.0, 0.0], 3), vec![(10, 1.0), (12, 1.0), (11, 0.5)]);
    }
}

//! The first pass of an exact scan, over a half-size copy of the vectors.
//! An exact scan reads every vector once per query, and memory traffic, not
//! arithmetic, bounds it; this copy holds each value as bfloat16 (the upper
//! half of its f32 bits, rounded to nearest), two to a 32-bit lane, so a
//! pass reads half the bytes. A coarse score differs from the f32 one by at
//! most a bound known before the pass, so the rows it keeps include every
//! row of the exact top `k`; the caller re-scores those in f32, and results
//! stay the f32 scan's, score for score.

use pulp::{Arch, Simd, WithSimd};

/// bfloat16 keeps 8 significant bits: rounding moves a value by at most
/// 2^-8 of itself.
const ROUNDING: f32 = 1.0 / 256.0;

#[derive(Debug, Clone)]
pub(super) struct HalfCopy {
    /// Row-major; value `2j` of a row in the low half of lane `j`, `2j + 1`
    /// in the high half (an odd width ends in a zero).
    packed: Vec<u32>,
    lanes_per_row: usize,
    dim: usize,
    /// The largest row norm, for the error bound.
    max_norm: f32,
}

impl HalfCopy {
    pub fn new(vectors: &[f32], dim: usize) -> Self {
        let lanes_per_row = dim.div_ceil(2);
        let mut packed = Vec::with_capacity(vectors.len() / dim.max(1) * lanes_per_row);
        let mut max_norm = 0.0f32;
        for row in vectors.chunks_exact(dim) {
            max_norm = max_norm.max(row.iter().map(|v| v * v).sum::<f32>().sqrt());
            for pair in row.chunks(2) {
                let high = pair.get(1).map_or(0, |v| bfloat16(*v));
                packed.push((u32::from(high) << 16) | u32::from(bfloat16(pair[0])));
            }
        }
        Self { packed, lanes_per_row, dim, max_norm }
    }

    /// A first pass for `query`, which may scan several ranges of rows and
    /// then names the rows that could be among the best `k` of them all.
    pub fn first_pass(&self, query: &[f32], k: usize) -> FirstPass<'_> {
        let (even, odd) = split_parity(query);
        let slack = 2.0 * self.error_bound(query);
        FirstPass { copy: self, even, odd, slack, best: BestScores::new(k), kept: Vec::new() }
    }

    /// How far a coarse score can be from the exact one: the values' rounding
    /// (at most 2^-8 of each, so of ‖q‖·‖x‖ in all) plus both sums' own f32
    /// rounding (at most dim·2^-24 of Σ|q_i·x_i| each), with room to spare.
    /// Row `r` of the exact top k scores at least the k-th best exact score
    /// s_k, so coarse at least s_k − bound; and s_k is at least the k-th best
    /// coarse score minus the bound: every such row is within twice the bound
    /// of the k-th best coarse score.
    fn error_bound(&self, query: &[f32]) -> f32 {
        let query_norm = query.iter().map(|v| v * v).sum::<f32>().sqrt();
        let summation = 2.0 * self.dim as f32 * f32::EPSILON / 2.0;
        (ROUNDING + summation) * 1.01 * query_norm * self.max_norm + f32::MIN_POSITIVE
    }
}

/// `value` rounded to nearest (ties to even) bfloat16; NaN stays NaN.
fn bfloat16(value: f32) -> u16 {
    let bits = value.to_bits();
    if value.is_nan() {
        return ((bits >> 16) | 0x0040) as u16;
    }
    let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1));
    (rounded >> 16) as u16
}

/// A first pass in progress: the best `k` coarse scores seen so far and the
/// rows within `slack` of the k-th of them when they were scanned.
pub(super) struct FirstPass<'a> {
    copy: &'a HalfCopy,
    even: Vec<f32>,
    odd: Vec<f32>,
    slack: f32,
    best: BestScores,
    kept: Vec<(usize, f32)>,
}

impl FirstPass<'_> {
    /// Scores rows `start..end`.
    pub fn scan(&mut self, arch: Arch, start: usize, end: usize) {
        let lanes = self.copy.lanes_per_row;
        arch.dispatch(CoarseScan {
            packed: &self.copy.packed[start * lanes..end * lanes],
            first_row: start,
            lanes_per_row: lanes,
            even: &self.even,
            odd: &self.odd,
            slack: self.slack,
            best: &mut self.best,
            kept: &mut self.kept,
        });
    }

    /// The rows scanned whose coarse score could place them among the best
    /// `k` of those rows by exact score, ascending (every row scanned when
    /// there were fewer than `k` or the bound is not finite).
    pub fn candidates(self) -> Vec<usize> {
        let threshold = self.threshold();
        let mut rows: Vec<usize> =
            self.kept.into_iter().filter(|&(_, s)| s >= threshold || s.is_nan()).map(|(row, _)| row).collect();
        rows.sort_unstable();
        rows
    }

    fn threshold(&self) -> f32 {
        threshold(&self.best, self.slack)
    }
}

/// Rows scoring below this cannot be among the best (−∞, keeping every row,
/// until there are `k` scores or when the bound is not finite).
fn threshold(best: &BestScores, slack: f32) -> f32 {
    let threshold = best.kth().map_or(f32::NEG_INFINITY, |kth| kth - slack);
    if threshold.is_finite() { threshold } else { f32::NEG_INFINITY }
}

/// The query's even-indexed and odd-indexed values (an odd width pads a zero).
fn split_parity(query: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let even = query.iter().step_by(2).copied().collect();
    let mut odd: Vec<f32> = query.iter().skip(1).step_by(2).copied().collect();
    odd.resize(query.len().div_ceil(2), 0.0);
    (even, odd)
}

/// The `k` largest scores offered so far (NaN ignored), best first: a score
/// rarely beats the k-th, so offering costs one comparison.
struct BestScores {
    k: usize,
    best: Vec<f32>,
}

impl BestScores {
    fn new(k: usize) -> Self {
        Self { k, best: Vec::with_capacity(k + 1) }
    }

    #[inline(always)]
    fn offer(&mut self, score: f32) {
        if self.k == 0 || score.is_nan() || (self.best.len() == self.k && score <= self.best[self.k - 1]) {
            return;
        }
        let at = self.best.partition_point(|&kept| kept >= score);
        self.best.insert(at, score);
        self.best.truncate(self.k);
    }

    /// The k-th largest score, once there are `k`.
    fn kth(&self) -> Option<f32> {
        (self.k > 0 && self.best.len() == self.k).then(|| self.best[self.k - 1])
    }
}

/// Scores every packed row and keeps those within `slack` of the k-th best
/// coarse score seen so far (or NaN). That threshold only rises, so the rows
/// kept include every row within `slack` of the final k-th best: one pass,
/// and no score per row is stored.
struct CoarseScan<'a> {
    packed: &'a [u32],
    first_row: usize,
    lanes_per_row: usize,
    even: &'a [f32],
    odd: &'a [f32],
    slack: f32,
    best: &'a mut BestScores,
    kept: &'a mut Vec<(usize, f32)>,
}

impl WithSimd for CoarseScan<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        // Loops, not closures: a closure's body would lose the SIMD target features.
        let mut threshold = self::threshold(self.best, self.slack);
        for (i, row) in self.packed.chunks_exact(self.lanes_per_row).enumerate() {
            let score = coarse_dot(simd, row, self.even, self.odd);
            if score >= threshold || score.is_nan() {
                self.kept.push((self.first_row + i, score));
                self.best.offer(score);
                threshold = self::threshold(self.best, self.slack);
            }
        }
    }
}

/// The dot product of a packed row with the query's two halves: a lane's
/// high half is already an f32's top bits; its low half moves up by 16.
#[inline(always)]
fn coarse_dot<S: Simd>(simd: S, row: &[u32], even: &[f32], odd: &[f32]) -> f32 {
    let (lanes, lanes_rest) = S::as_simd_u32s(row);
    let (even_lanes, even_rest) = S::as_simd_f32s(even);
    let (odd_lanes, odd_rest) = S::as_simd_f32s(odd);
    let high_half = simd.splat_u32s(0xffff_0000);
    let sixteen = simd.splat_u32s(16);
    let mut sums = [simd.splat_f32s(0.0); 4];
    // Two lanes a step into four sums: independent chains hide the FMA latency.
    let (pairs, single) = pulp::as_arrays::<2, _>(lanes);
    let (even_pairs, even_single) = pulp::as_arrays::<2, _>(even_lanes);
    let (odd_pairs, odd_single) = pulp::as_arrays::<2, _>(odd_lanes);
    for ((lane, even), odd) in pairs.iter().zip(even_pairs).zip(odd_pairs) {
        for half in 0..2 {
            let high = simd.transmute_f32s_u32s(simd.and_u32s(lane[half], high_half));
            let low = simd.transmute_f32s_u32s(simd.wrapping_dyn_shl_u32s(lane[half], sixteen));
            sums[2 * half] = simd.mul_add_f32s(low, even[half], sums[2 * half]);
            sums[2 * half + 1] = simd.mul_add_f32s(high, odd[half], sums[2 * half + 1]);
        }
    }
    for ((lane, even), odd) in single.iter().zip(even_single).zip(odd_single) {
        let high = simd.transmute_f32s_u32s(simd.and_u32s(*lane, high_half));
        let low = simd.transmute_f32s_u32s(simd.wrapping_dyn_shl_u32s(*lane, sixteen));
        sums[0] = simd.mul_add_f32s(low, *even, sums[0]);
        sums[1] = simd.mul_add_f32s(high, *odd, sums[1]);
    }
    let total = simd.add_f32s(simd.add_f32s(sums[0], sums[1]), simd.add_f32s(sums[2], sums[3]));
    let tail: f32 = lanes_rest
        .iter()
        .zip(even_rest.iter().zip(odd_rest))
        .map(|(lane, (e, o))| f32::from_bits(lane << 16) * e + f32::from_bits(lane & 0xffff_0000) * o)
        .sum();
    simd.reduce_sum_f32s(total) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bfloat16_rounds_to_nearest_within_its_bound() {
        for value in [1.0f32, -0.3, 1.0e-3, 0.123_456_7, 65_504.0, -7.77e-20] {
            let back = f32::from_bits(u32::from(bfloat16(value)) << 16);
            assert!((back - value).abs() <= ROUNDING * value.abs(), "{value} became {back}");
        }
        assert!(f32::from_bits(u32::from(bfloat16(f32::NAN)) << 16).is_nan());
        assert_eq!(f32::from_bits(u32::from(bfloat16(1.0 + 1.0 / 512.0)) << 16), 1.0, "a tie goes to even");
    }

    #[test]
    fn coarse_scores_stay_within_the_bound_and_keep_every_exact_winner() {
        for dim in [384, 37, 2] {
            let rows = 500;
            let vectors: Vec<f32> = (0..rows * dim).map(|i| (((i * 7919) % 1009) as f32 / 1009.0) - 0.5).collect();
            let query: Vec<f32> = (0..dim).map(|j| ((j * 31) % 17) as f32 / 17.0 - 0.4).collect();
            let copy = HalfCopy::new(&vectors, dim);
            let exact: Vec<f32> =
                vectors.chunks_exact(dim).map(|r| r.iter().zip(&query).map(|(a, b)| a * b).sum()).collect();
            // With k beyond the rows the threshold stays at −∞: every score is kept.
            let mut every_row = copy.first_pass(&query, rows + 1);
            every_row.scan(Arch::new(), 0, rows);
            let coarse: Vec<f32> = every_row.kept.iter().map(|&(_, s)| s).collect();
            assert_eq!(coarse.len(), rows);
            let bound = copy.error_bound(&query);
            assert!(exact.iter().zip(&coarse).all(|(e, c)| (e - c).abs() <= bound), "dim {dim}");
            for k in [1, 10, 100] {
                // In uneven ranges, as the parallel scan's threads claim them.
                let mut pass = copy.first_pass(&query, k);
                for (start, end) in [(0, 7), (7, 300), (300, rows)] {
                    pass.scan(Arch::new(), start, end);
                }
                let kept = pass.candidates();
                let mut sorted = exact.clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let kth = sorted[k - 1];
                let winners = (0..rows).filter(|&r| exact[r] >= kth);
                assert!(winners.into_iter().all(|r| kept.contains(&r)), "dim {dim}, k {k}");
                assert!(kept.len() < rows, "the first pass keeps a shortlist (dim {dim}, k {k}: {})", kept.len());
            }
        }
    }
}

//! The first pass of an exact scan, over a quarter-size copy of the vectors.
//! An exact scan reads every vector once per query, and memory traffic, not
//! arithmetic, bounds it (two cores scanning 10,000 rows from the shared
//! cache took as long as one); this copy holds each row as 8-bit integers
//! with one scale per row, so a pass reads a quarter of the bytes. Each
//! coarse score comes with an error bound for that row, so the rows the
//! pass keeps include every row of the exact top `k`; the caller re-scores
//! those in f32, and results stay the f32 scan's, score for score.

use pulp::{Arch, Simd, WithSimd};

use super::scan::TopK;

/// Codes run from −127 to 127 and are stored offset by 128 (1 to 255).
const LEVELS: f32 = 127.0;
const OFFSET: u32 = 128;
/// f32 rounding: half a unit in the last place.
const UNIT_ROUNDOFF: f32 = f32::EPSILON / 2.0;

#[derive(Debug, Clone)]
pub(super) struct CoarseCopy {
    /// Row-major; value `4j + m` of a row in byte `m` (from the low end) of
    /// lane `j`; a width not a multiple of 4 ends in zero codes.
    packed: Vec<u32>,
    /// Per row: value ≈ scale × code; NaN for a row with a value that is not
    /// finite (its coarse score is NaN and it is always kept).
    scales: Vec<f32>,
    lanes_per_row: usize,
    dim: usize,
}

impl CoarseCopy {
    pub fn new(vectors: &[f32], dim: usize) -> Self {
        let lanes_per_row = dim.div_ceil(4);
        let rows = vectors.len() / dim.max(1);
        let mut packed = Vec::with_capacity(rows * lanes_per_row);
        let mut scales = Vec::with_capacity(rows);
        for row in vectors.chunks_exact(dim) {
            let scale = row_scale(row);
            scales.push(scale);
            for four in row.chunks(4) {
                let byte = |m: usize| four.get(m).map_or(OFFSET, |&v| code(v, scale)) << (8 * m);
                packed.push(byte(0) | byte(1) | byte(2) | byte(3));
            }
        }
        Self { packed, scales, lanes_per_row, dim }
    }

    /// A first pass for `query`, which may scan several ranges of rows and
    /// then names the rows that could be among the best `k` of them all.
    pub fn first_pass(&self, query: &[f32], k: usize) -> FirstPass<'_> {
        let mut parts = vec![0.0f32; 4 * self.lanes_per_row];
        for (i, &q) in query.iter().enumerate() {
            parts[(i % 4) * self.lanes_per_row + i / 4] = q;
        }
        let sum: f64 = query.iter().map(|&q| f64::from(q)).sum();
        FirstPass {
            copy: self,
            parts,
            offset_sum: (f64::from(256 + OFFSET) * sum) as f32,
            bound_per_scale: self.bound_per_scale(query),
            best: TopK::new(k),
            kept: Vec::new(),
        }
    }

    /// A row's coarse score is within `scale ×` this of its f32 score. Each
    /// code is within half a step (0.5 × scale) of its value (plus the
    /// division's rounding), so the codes' sum is within 0.501 × scale × ‖q‖₁.
    /// The sums are f32: the coarse one accumulates Σ q·(1 + byte/256) < 2‖q‖₁
    /// over `dim` terms and is multiplied by 256 (512 γ_dim ‖q‖₁), the offset,
    /// subtraction and scaling round once each (under 1,410 u ‖q‖₁ together),
    /// and the exact f32 scan's own sum is within γ_dim × 127 × scale × ‖q‖₁.
    /// One per cent on top covers the rounding of this bound itself.
    fn bound_per_scale(&self, query: &[f32]) -> f32 {
        let terms = self.dim as f32;
        let gamma = terms * UNIT_ROUNDOFF / (1.0 - terms * UNIT_ROUNDOFF);
        let l1: f32 = query.iter().map(|q| q.abs()).sum();
        l1 * (0.501 + 639.0 * gamma + 1_410.0 * UNIT_ROUNDOFF) * 1.01
    }
}

/// The largest magnitude over 127; NaN when a value is not finite.
fn row_scale(row: &[f32]) -> f32 {
    if row.iter().any(|v| !v.is_finite()) {
        return f32::NAN;
    }
    row.iter().fold(0.0f32, |m, v| m.max(v.abs())) / LEVELS
}

/// `value / scale` rounded to the nearest code, offset (a zero or NaN scale
/// gives code 0).
fn code(value: f32, scale: f32) -> u32 {
    let steps = if scale > 0.0 { (value / scale).round().clamp(-LEVELS, LEVELS) } else { 0.0 };
    (steps as i32 + OFFSET as i32) as u32
}

/// A first pass in progress: the best `k` lower bounds seen so far and the
/// rows whose upper bound reached the k-th of them when they were scanned.
pub(super) struct FirstPass<'a> {
    copy: &'a CoarseCopy,
    /// The query split by position modulo 4, each part `lanes_per_row` long.
    parts: Vec<f32>,
    /// (256 + 128) × Σq: a code is 256 × (1 + byte/256) − 256 − 128, so this
    /// is what the decoding and the offset add to a row's sum.
    offset_sum: f32,
    bound_per_scale: f32,
    /// The best `k` lower bounds.
    best: TopK,
    /// (row, upper bound of its score)
    kept: Vec<(usize, f32)>,
}

impl FirstPass<'_> {
    /// Scores rows `start..end`.
    pub fn scan(&mut self, arch: Arch, start: usize, end: usize) {
        let lanes = self.copy.lanes_per_row;
        let part = |m: usize| &self.parts[m * lanes..(m + 1) * lanes];
        arch.dispatch(CoarseScan {
            packed: &self.copy.packed[start * lanes..end * lanes],
            scales: &self.copy.scales[start..end],
            first_row: start,
            lanes_per_row: lanes,
            parts: [part(0), part(1), part(2), part(3)],
            offset_sum: self.offset_sum,
            bound_per_scale: self.bound_per_scale,
            best: &mut self.best,
            kept: &mut self.kept,
        });
    }

    /// The rows scanned that could be among the best `k` of them by exact
    /// score, ascending (every row scanned when there were fewer than `k` or
    /// a bound is not finite).
    pub fn candidates(self) -> Vec<usize> {
        let threshold = threshold(&self.best);
        let mut rows: Vec<usize> =
            self.kept.into_iter().filter(|&(_, upper)| upper >= threshold || upper.is_nan()).map(|(r, _)| r).collect();
        rows.sort_unstable();
        rows
    }
}

/// Rows whose upper bound is below this cannot be among the best: k rows
/// score at least their lower bounds, so at least the k-th best of them
/// (−∞, keeping every row, until there are `k` or when it is not finite).
fn threshold(best: &TopK) -> f32 {
    best.kth().filter(|kth| kth.is_finite()).unwrap_or(f32::NEG_INFINITY)
}

/// Scores every packed row and keeps those whose upper bound reaches the
/// k-th best lower bound so far (or is NaN). That threshold only rises, so
/// the rows kept include every row that reaches the final one: one pass,
/// and no score per row is stored.
struct CoarseScan<'a> {
    packed: &'a [u32],
    scales: &'a [f32],
    first_row: usize,
    lanes_per_row: usize,
    parts: [&'a [f32]; 4],
    offset_sum: f32,
    bound_per_scale: f32,
    best: &'a mut TopK,
    kept: &'a mut Vec<(usize, f32)>,
}

impl WithSimd for CoarseScan<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        // Loops, not closures: a closure's body would lose the SIMD target features.
        let mut threshold = threshold(self.best);
        let rows = self.packed.chunks_exact(self.lanes_per_row).zip(self.scales);
        for (i, (row, &scale)) in rows.enumerate() {
            let score = scale * (256.0 * decoded_dot(simd, row, self.parts) - self.offset_sum);
            let slack = slack(scale, self.bound_per_scale);
            let upper = score + slack;
            let row = self.first_row + i;
            if upper >= threshold || upper.is_nan() {
                self.kept.push((row, upper));
                self.best.offer(row, score - slack);
                threshold = self::threshold(self.best);
            }
        }
    }
}

/// How far a row of `scale` may score from its f32 score (the smallest
/// normal float on top covers an underflowing product).
fn slack(scale: f32, bound_per_scale: f32) -> f32 {
    scale * bound_per_scale + f32::MIN_POSITIVE
}

/// Σ q_i · (1 + byte_i / 256) over a packed row. A byte moved to bits 15–22
/// under the exponent of 1.0 is that float exactly, so decoding is a shift,
/// a mask and an or per value, with no conversion instruction.
#[inline(always)]
fn decoded_dot<S: Simd>(simd: S, row: &[u32], parts: [&[f32]; 4]) -> f32 {
    let (lanes, lanes_rest) = S::as_simd_u32s(row);
    let part = |m: usize| S::as_simd_f32s(parts[m]);
    let ((p0, r0), (p1, r1), (p2, r2), (p3, r3)) = (part(0), part(1), part(2), part(3));
    let mantissa = simd.splat_u32s(0x007f_8000);
    let one = simd.splat_u32s(0x3f80_0000);
    let (left_15, left_7, right_1, right_9) =
        (simd.splat_u32s(15), simd.splat_u32s(7), simd.splat_u32s(1), simd.splat_u32s(9));
    // One sum per byte position: four independent chains hide the FMA latency.
    let mut sums = [simd.splat_f32s(0.0); 4];
    let n = lanes.len();
    let (p0, p1, p2, p3) = (&p0[..n], &p1[..n], &p2[..n], &p3[..n]);
    for i in 0..n {
        let lane = lanes[i];
        let bytes = [
            simd.wrapping_dyn_shl_u32s(lane, left_15),
            simd.wrapping_dyn_shl_u32s(lane, left_7),
            simd.wrapping_dyn_shr_u32s(lane, right_1),
            simd.wrapping_dyn_shr_u32s(lane, right_9),
        ];
        let queries = [p0[i], p1[i], p2[i], p3[i]];
        for m in 0..4 {
            let value = simd.transmute_f32s_u32s(simd.or_u32s(simd.and_u32s(bytes[m], mantissa), one));
            sums[m] = simd.mul_add_f32s(value, queries[m], sums[m]);
        }
    }
    let total = simd.add_f32s(simd.add_f32s(sums[0], sums[1]), simd.add_f32s(sums[2], sums[3]));
    let mut tail = 0.0;
    for (j, &lane) in lanes_rest.iter().enumerate() {
        for (m, rest) in [r0, r1, r2, r3].iter().enumerate() {
            tail += (1.0 + ((lane >> (8 * m)) & 0xff) as f32 / 256.0) * rest[j];
        }
    }
    simd.reduce_sum_f32s(total) + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every row's coarse score, lower and upper bound (k beyond the rows
    /// keeps them all).
    fn coarse_scores(copy: &CoarseCopy, query: &[f32]) -> Vec<f32> {
        let rows = copy.scales.len();
        let mut pass = copy.first_pass(query, rows + 1);
        pass.scan(Arch::new(), 0, rows);
        pass.kept.iter().map(|&(r, upper)| upper - slack(copy.scales[r], pass.bound_per_scale)).collect()
    }

    #[test]
    fn codes_round_to_the_nearest_step() {
        let row = [0.5f32, -1.27, 0.0, 0.0049, 0.0051, 1.27];
        let scale = row_scale(&row);
        assert!((scale - 0.01).abs() < 1e-7);
        let codes: Vec<i32> = row.iter().map(|&v| code(v, scale) as i32 - 128).collect();
        assert_eq!(codes, [50, -127, 0, 0, 1, 127]);
        assert!(row_scale(&[1.0, f32::NAN]).is_nan() && row_scale(&[f32::INFINITY]).is_nan());
        assert_eq!(code(3.0, 0.0), 128, "an all-zero row has scale 0");
    }

    #[test]
    fn coarse_scores_stay_within_their_bound_and_keep_every_exact_winner() {
        for dim in [384, 37, 2] {
            let rows = 500;
            let mut vectors: Vec<f32> = (0..rows * dim).map(|i| (((i * 7919) % 1009) as f32 / 1009.0) - 0.5).collect();
            // Rows of very different sizes: each has its own scale and bound.
            vectors[3 * dim..4 * dim].iter_mut().for_each(|v| *v *= 40.0);
            vectors[8 * dim..9 * dim].iter_mut().for_each(|v| *v *= 1e-30);
            let query: Vec<f32> = (0..dim).map(|j| ((j * 31) % 17) as f32 / 17.0 - 0.4).collect();
            let copy = CoarseCopy::new(&vectors, dim);
            let exact: Vec<f32> =
                vectors.chunks_exact(dim).map(|r| r.iter().zip(&query).map(|(a, b)| a * b).sum()).collect();
            let coarse = coarse_scores(&copy, &query);
            assert_eq!(coarse.len(), rows);
            for (r, (e, c)) in exact.iter().zip(&coarse).enumerate() {
                let bound = slack(copy.scales[r], copy.bound_per_scale(&query));
                assert!((e - c).abs() <= bound, "dim {dim}, row {r}: exact {e}, coarse {c}, bound {bound}");
            }
            let mut sorted = exact.clone();
            sorted.sort_by(|a, b| b.total_cmp(a));
            for k in [1, 10, 100] {
                // In uneven ranges, as the parallel scan's threads claim them.
                let mut pass = copy.first_pass(&query, k);
                for (start, end) in [(0, 7), (7, 300), (300, rows)] {
                    pass.scan(Arch::new(), start, end);
                }
                let kept = pass.candidates();
                let winners = (0..rows).filter(|&r| exact[r] >= sorted[k - 1]);
                assert!(winners.into_iter().all(|r| kept.contains(&r)), "dim {dim}, k {k}");
                assert!(kept.len() < rows, "the first pass keeps a shortlist (dim {dim}, k {k}: {})", kept.len());
            }
        }
    }

    #[test]
    fn rows_or_queries_that_are_not_finite_are_always_kept() {
        let dim = 8;
        let mut vectors: Vec<f32> = (0..40 * dim).map(|i| (i % 13) as f32 / 13.0 - 0.5).collect();
        vectors[5 * dim + 2] = f32::NAN;
        vectors[9 * dim] = f32::INFINITY;
        let copy = CoarseCopy::new(&vectors, dim);
        let query = [0.3, -0.1, 0.2, 0.0, 0.5, 0.1, -0.2, 0.4];
        let mut pass = copy.first_pass(&query, 3);
        pass.scan(Arch::new(), 0, 40);
        let kept = pass.candidates();
        assert!(kept.contains(&5) && kept.contains(&9) && kept.len() < 40, "{kept:?}");
        let mut pass = copy.first_pass(&[f32::NAN; 8], 3);
        pass.scan(Arch::new(), 0, 40);
        assert_eq!(pass.candidates(), (0..40).collect::<Vec<_>>());
    }
}

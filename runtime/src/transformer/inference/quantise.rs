//! Symmetric int8 quantisation of activation rows and the scaling of int8
//! products' sums back to f32, shared by the int8 compiled graph's
//! `QuantizeRows` and `ScaleProduct` operators and the int8 products of our
//! own layers, so both compute the same values.

use pulp::{Arch, Simd, WithSimd};

/// A row whose largest magnitude is below this is quantised as if it were
/// this large (all zeros stay zeros; no division by zero).
const MIN_RANGE: f32 = 1e-20;
/// Adding 1.5 × 2^23 to an f32 of magnitude below 2^22 rounds it to the
/// nearest integer (ties to even), which then sits in the low mantissa bits:
/// vector instructions throughout, where `f32::round` and a saturating
/// cast are a library call and branches per value on baseline x86_64.
const ROUNDING: f32 = 12_582_912.0;

/// Quantises each row of `values` (rows of `unsmooth.len()` values, each
/// first multiplied by `unsmooth` per channel) into `levels`, and writes its
/// step to `steps`: `values × unsmooth ≈ levels × step`, on the widest SIMD
/// the CPU has.
pub(crate) fn quantise_rows(values: &[f32], unsmooth: &[f32], levels: &mut [i8], steps: &mut [f32]) {
    assert_eq!(values.len(), levels.len(), "a level per value");
    assert_eq!(values.len(), steps.len() * unsmooth.len(), "a step per row");
    Arch::new().dispatch(Quantise { values, unsmooth, levels, steps });
}

/// Int8 products' sums (`[rows, columns]`, row after row) back to f32:
/// `sums[r][c] × steps[r] × column_scales[c]`, plus `bias[c]` when given.
pub(crate) fn scale_sums(sums: &[i32], steps: &[f32], column_scales: &[f32], bias: Option<&[f32]>) -> Vec<f32> {
    let columns = column_scales.len();
    assert_eq!(steps.len() * columns, sums.len(), "a sum per row and column");
    let mut values = vec![0f32; sums.len()];
    for ((out, row), &step) in values.chunks_exact_mut(columns).zip(sums.chunks_exact(columns)).zip(steps) {
        for ((o, &sum), &scale) in out.iter_mut().zip(row).zip(column_scales) {
            *o = sum as f32 * step * scale;
        }
        if let Some(bias) = bias {
            out.iter_mut().zip(bias).for_each(|(o, b)| *o += b);
        }
    }
    values
}

/// Rows of `values` (each `unsmooth.len()` long) into `levels` and `steps`,
/// on the widest SIMD the CPU has.
struct Quantise<'a> {
    values: &'a [f32],
    unsmooth: &'a [f32],
    levels: &'a mut [i8],
    steps: &'a mut [f32],
}

impl WithSimd for Quantise<'_> {
    type Output = ();

    #[inline(always)]
    fn with_simd<S: Simd>(self, simd: S) {
        let channels = self.unsmooth.len();
        let mut rounded = vec![0f32; channels];
        let rows = self.values.chunks_exact(channels).zip(self.levels.chunks_exact_mut(channels));
        for ((row, levels), step) in rows.zip(self.steps.iter_mut()) {
            *step = quantise_row(simd, row, self.unsmooth, &mut rounded, levels);
        }
    }
}

/// Quantises one row into `levels`, returning its step. `rounded` is scratch
/// of the row's length.
#[inline(always)]
fn quantise_row<S: Simd>(simd: S, row: &[f32], unsmooth: &[f32], rounded: &mut [f32], levels: &mut [i8]) -> f32 {
    let largest = {
        let (row_lanes, row_rest) = S::as_simd_f32s(row);
        let (unsmooth_lanes, unsmooth_rest) = S::as_simd_f32s(unsmooth);
        let (out_lanes, out_rest) = S::as_mut_simd_f32s(rounded);
        let mut largest = simd.splat_f32s(0.0);
        for ((out, &x), &u) in out_lanes.iter_mut().zip(row_lanes).zip(unsmooth_lanes) {
            *out = simd.mul_f32s(x, u);
            largest = simd.max_f32s(largest, simd.abs_f32s(*out));
        }
        let mut largest = simd.reduce_max_f32s(largest);
        for ((out, &x), &u) in out_rest.iter_mut().zip(row_rest).zip(unsmooth_rest) {
            *out = x * u;
            largest = largest.max(out.abs());
        }
        largest
    };
    let step = largest.max(MIN_RANGE) / 127.0;
    let inverse = 1.0 / step;
    let (lanes, rest) = S::as_mut_simd_f32s(rounded);
    let (scale, shift) = (simd.splat_f32s(inverse), simd.splat_f32s(ROUNDING));
    for value in lanes.iter_mut() {
        *value = simd.add_f32s(simd.mul_f32s(*value, scale), shift);
    }
    for value in rest.iter_mut() {
        *value = *value * inverse + ROUNDING;
    }
    // After adding ROUNDING the integer sits in the low mantissa bits.
    for (level, value) in levels.iter_mut().zip(rounded.iter()) {
        *level = (value.to_bits() as i32 - ROUNDING.to_bits() as i32) as i8;
    }
    step
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_within_half_a_step() {
        let row = [0.5f32, -2.0, 1.25, 0.0, 3.0, -0.01];
        let unsmooth = [1.0f32, 0.5, 2.0, 1.0, 1.0, 1.0];
        let (mut scratch, mut levels) = ([0f32; 6], [0i8; 6]);
        let simd = pulp::Scalar::new();
        let step = quantise_row(simd, &row, &unsmooth, &mut scratch, &mut levels);
        assert_eq!(step, 3.0 / 127.0);
        for ((x, u), level) in row.iter().zip(unsmooth).zip(levels) {
            assert!((x * u - f32::from(level) * step).abs() <= step / 2.0 + 1e-7, "{x} × {u} → {level}");
        }
        assert_eq!(levels[4], 127);
        let zeros = [0f32; 6];
        assert_eq!(quantise_row(simd, &zeros, &unsmooth, &mut scratch, &mut levels), MIN_RANGE / 127.0);
        assert_eq!(levels, [0; 6]);
        // Wide rows take the vector lanes; every level within half a step.
        let wide: Vec<f32> = (0..389).map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0).collect();
        let ones = vec![1.0f32; wide.len()];
        let (mut scratch, mut levels) = (vec![0f32; wide.len()], vec![0i8; wide.len()]);
        let mut steps = [0f32; 1];
        Arch::new().dispatch(Quantise { values: &wide, unsmooth: &ones, levels: &mut levels, steps: &mut steps });
        let step = steps[0];
        assert_eq!(step, 50.0 / 7.0 / 127.0);
        for (x, level) in wide.iter().zip(&levels) {
            assert!((x - f32::from(*level) * step).abs() <= step / 2.0 * 1.0001, "{x} → {level}");
        }
        let _ = quantise_row(simd, &wide, &ones, &mut scratch, &mut levels);
    }
}

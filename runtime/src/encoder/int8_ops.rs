//! The two operators of an int8 compiled graph around each int8 product
//! (see `int8.rs` for the arithmetic), each one pass over its tensor where
//! a chain of tract's element-wise operators would take six.
//!
//! Both work on the last axis, rows being everything before it.

use pulp::{Arch, Simd, WithSimd};
use tract_core::internal::*;
use tract_core::ndarray::ArrayD;

/// A row whose largest magnitude is below this is quantised as if it were
/// this large (all zeros stay zeros; no division by zero).
const MIN_RANGE: f32 = 1e-20;
/// Adding 1.5 × 2^23 to an f32 of magnitude below 2^22 rounds it to the
/// nearest integer (ties to even), which then sits in the low mantissa bits:
/// vector instructions throughout, where `f32::round` and a saturating
/// cast are a library call and branches per value on baseline x86_64.
const ROUNDING: f32 = 12_582_912.0;

/// `x` (f32, `[.., k]`) times `unsmooth` per channel, quantised per row:
/// outputs the levels (i8, `[.., k]`) and each row's step (f32, `[.., 1]`),
/// `x × unsmooth ≈ levels × step`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct QuantizeRows {
    /// One factor per channel, f32, rank 1.
    pub unsmooth: Arc<Tensor>,
}

/// Int8 products' sums (i32, `[.., n]`) back to f32: times each row's step
/// (`[.., 1]`) and each column's weight scale.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ScaleProduct {
    /// One scale per output column, f32, rank 1.
    pub column_scales: Arc<Tensor>,
}

impl Op for QuantizeRows {
    fn name(&self) -> StaticName {
        "QuantizeRows".into()
    }

    op_as_typed_op!();
}

impl Op for ScaleProduct {
    fn name(&self) -> StaticName {
        "ScaleProduct".into()
    }

    op_as_typed_op!();
}

fn factors<'a>(tensor: &'a Tensor, what: &str) -> TractResult<&'a [f32]> {
    ensure!(tensor.rank() == 1 && tensor.datum_type() == f32::datum_type(), "{what} must be a rank-1 f32 tensor");
    tensor.try_as_plain_ram()?.as_slice::<f32>()
}

/// The last dimension of `fact` must be `len`, when known.
fn check_last_axis(fact: &TypedFact, len: usize, what: &str) -> TractResult<()> {
    let last = fact.shape.last().with_context(|| format!("{what} needs at least one axis"))?;
    if let Ok(concrete) = last.to_usize() {
        ensure!(concrete == len, "{what}'s last axis has {concrete} values, the operator {len}");
    }
    Ok(())
}

impl TypedOp for QuantizeRows {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 1 && inputs[0].datum_type == f32::datum_type(), "QuantizeRows takes one f32 input");
        let channels = factors(&self.unsmooth, "the smoothing")?.len();
        check_last_axis(inputs[0], channels, "QuantizeRows' input")?;
        let mut step_shape: TVec<TDim> = inputs[0].shape.iter().cloned().collect();
        *step_shape.last_mut().expect("checked above") = 1.into();
        Ok(tvec!(i8::fact(inputs[0].shape.iter().cloned()), f32::fact(step_shape)))
    }

    as_op!();
}

impl TypedOp for ScaleProduct {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs.len() == 2, "ScaleProduct takes the sums and the steps");
        ensure!(inputs[0].datum_type == i32::datum_type() && inputs[1].datum_type == f32::datum_type());
        ensure!(inputs[0].rank() == inputs[1].rank(), "sums and steps of different ranks");
        check_last_axis(inputs[0], factors(&self.column_scales, "the column scales")?.len(), "the sums")?;
        check_last_axis(inputs[1], 1, "the steps")?;
        Ok(tvec!(f32::fact(inputs[0].shape.iter().cloned())))
    }

    as_op!();
}

impl EvalOp for QuantizeRows {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let unsmooth = factors(&self.unsmooth, "the smoothing")?;
        let x = &inputs[0];
        let shape = x.shape();
        ensure!(shape.last() == Some(&unsmooth.len()), "input shape {shape:?} for {} channels", unsmooth.len());
        let values = x.try_as_plain_ram()?.as_slice::<f32>()?;
        let mut levels = vec![0i8; values.len()];
        let mut steps = vec![0f32; values.len() / unsmooth.len().max(1)];
        Arch::new().dispatch(Quantise { values, unsmooth, levels: &mut levels, steps: &mut steps });
        let mut step_shape = shape.to_vec();
        *step_shape.last_mut().expect("checked above") = 1;
        Ok(tvec!(
            ArrayD::from_shape_vec(shape, levels)?.into_tvalue(),
            ArrayD::from_shape_vec(step_shape, steps)?.into_tvalue()
        ))
    }
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

impl EvalOp for ScaleProduct {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let columns = factors(&self.column_scales, "the column scales")?;
        let (sums, steps) = (&inputs[0], &inputs[1]);
        let shape = sums.shape();
        ensure!(shape.last() == Some(&columns.len()), "sums of shape {shape:?} for {} columns", columns.len());
        let sums = sums.try_as_plain_ram()?.as_slice::<i32>()?;
        let steps = steps.try_as_plain_ram()?.as_slice::<f32>()?;
        ensure!(steps.len() * columns.len() == sums.len(), "{} steps for {} sums", steps.len(), sums.len());
        let mut values = vec![0f32; sums.len()];
        for ((out, row), &step) in
            values.chunks_exact_mut(columns.len()).zip(sums.chunks_exact(columns.len())).zip(steps)
        {
            for ((o, &sum), &scale) in out.iter_mut().zip(row).zip(columns) {
                *o = sum as f32 * step * scale;
            }
        }
        Ok(tvec!(ArrayD::from_shape_vec(shape, values)?.into_tvalue()))
    }
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

    #[test]
    fn mismatched_shapes_are_errors() {
        let op = QuantizeRows { unsmooth: rctensor1(&[1.0f32, 1.0]) };
        let x = Tensor::zero::<f32>(&[2, 3]).unwrap().into_tvalue();
        assert!(op.eval(&EvalContext::out_of_plan(), tvec!(x)).is_err());
        let op = ScaleProduct { column_scales: rctensor1(&[1.0f32, 1.0]) };
        let sums = Tensor::zero::<i32>(&[2, 2]).unwrap().into_tvalue();
        let steps = Tensor::zero::<f32>(&[3, 1]).unwrap().into_tvalue();
        assert!(op.eval(&EvalContext::out_of_plan(), tvec!(sums, steps)).is_err());
    }
}

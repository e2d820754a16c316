//! The two operators of an int8 compiled graph around each int8 product
//! (see `int8.rs` for the arithmetic), each one pass over its tensor where
//! a chain of tract's element-wise operators would take six.
//!
//! Both work on the last axis, rows being everything before it.

use tract_core::internal::*;
use tract_core::ndarray::ArrayD;

use crate::transformer::{quantise_rows, scale_sums};

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
        quantise_rows(values, unsmooth, &mut levels, &mut steps);
        let mut step_shape = shape.to_vec();
        *step_shape.last_mut().expect("checked above") = 1;
        Ok(tvec!(
            ArrayD::from_shape_vec(shape, levels)?.into_tvalue(),
            ArrayD::from_shape_vec(step_shape, steps)?.into_tvalue()
        ))
    }
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
        let values = scale_sums(sums, steps, columns, None);
        Ok(tvec!(ArrayD::from_shape_vec(shape, values)?.into_tvalue()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

//! GELU fusion for graphs imported from ONNX (before they are compiled).

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::math::{Add, Div, Erf, Mul};
use tract_core::ops::nn::gelu_exact::gelu_exact;

/// Rewrites `x * (0.5 * (1 + erf(x / sqrt 2)))` into tract's fused `GeluExact`.
///
/// tract's own detector knows `(0.5 x)(1 + erf)` and `((1 + erf) x) 0.5` but
/// not this order, which torch's ONNX exporter emits (the default model). Left
/// alone, its four element-wise ops run on tract's generic broadcasting path:
/// a quarter of a batch-32 run.
pub(crate) fn fuse_exact_gelu(model: &mut TypedModel) -> TractResult<()> {
    'patched: loop {
        for node in model.eval_order()?.into_iter().map(|id| model.node(id)) {
            let is_erf = node.op_as::<ElementWiseOp>().is_some_and(|op| op.0.is::<Erf>());
            if !is_erf {
                continue;
            }
            let Some(x) = gelu_input(model, node)? else { continue };
            let mut patch = TypedModelPatch::default();
            let tap = patch.tap_model(model, x.0)?;
            let fused = patch.wire_node(format!("{}.gelu", node.name), gelu_exact(), &[tap])?[0];
            patch.shunt_outside(model, x.1.into(), fused)?;
            patch.apply(model)?;
            continue 'patched;
        }
        return Ok(());
    }
}

/// For an `Erf` node at the heart of the pattern, the GELU input `x` and the
/// id of the node whose output the fused op replaces.
fn gelu_input(model: &TypedModel, erf: &TypedNode) -> TractResult<Option<(OutletId, usize)>> {
    let scale = model.node(erf.inputs[0].node);
    let x = match binary_with_scalar(model, scale) {
        Some((x, c, op)) if op.is::<Mul>() && close(c, std::f32::consts::FRAC_1_SQRT_2) => x,
        Some((x, c, op)) if op.is::<Div>() && close(c, std::f32::consts::SQRT_2) => x,
        _ => return Ok(None),
    };
    let Some(plus_one) = model.single_succ(erf.id)? else { return Ok(None) };
    if !matches!(binary_with_scalar(model, plus_one), Some((_, c, op)) if op.is::<Add>() && close(c, 1.0)) {
        return Ok(None);
    }
    let Some(halve) = model.single_succ(plus_one.id)? else { return Ok(None) };
    if !matches!(binary_with_scalar(model, halve), Some((_, c, op)) if op.is::<Mul>() && close(c, 0.5)) {
        return Ok(None);
    }
    let Some(product) = model.single_succ(halve.id)? else { return Ok(None) };
    let is_mul = product.op_as::<TypedBinOp>().is_some_and(|op| op.0.is::<Mul>());
    if !is_mul || !product.inputs.contains(&x) {
        return Ok(None);
    }
    Ok(Some((x, product.id)))
}

/// A binary op with one scalar constant operand: (other input, constant, op).
fn binary_with_scalar<'m>(
    model: &'m TypedModel,
    node: &'m TypedNode,
) -> Option<(OutletId, f32, &'m dyn tract_core::ops::binary::BinMiniOp)> {
    let op = node.op_as::<TypedBinOp>()?;
    let [a, b] = node.inputs.as_slice() else { return None };
    let scalar = |outlet: &OutletId| {
        let konst = model.outlet_fact(*outlet).ok()?.konst.clone()?;
        if konst.len() != 1 {
            return None;
        }
        konst.cast_to_scalar::<f32>().ok()
    };
    match (scalar(a), scalar(b)) {
        (None, Some(c)) => Some((*a, c, op.0.as_ref())),
        // Only commutative ops may carry the constant on the left.
        (Some(c), None) if !op.0.is::<Div>() => Some((*b, c, op.0.as_ref())),
        _ => None,
    }
}

fn close(value: f32, expected: f32) -> bool {
    (value - expected).abs() <= 1e-6 * expected.abs()
}

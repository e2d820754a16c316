//! Writing a tract model as a compiled graph (builds that import ONNX).

use std::path::Path;

use tract_core::internal::*;
use tract_core::ops::array::{Gather, GatherNd, MultiBroadcastTo, Range, Slice, TypedConcat};
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cast::Cast;
use tract_core::ops::change_axes::AxisOp;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::konst::Const;
use tract_core::ops::logic::Iff;
use tract_core::ops::nn::{Reduce, RmsNorm, Softmax, SoftmaxKind};
use tract_core::ops::source::TypedSource;

use super::*;
use crate::encoder::engine::int8_ops::{QuantizeRows, ScaleProduct};

/// Smaller f32 tensors are stored as they are.
const INT8_MIN_VALUES: usize = 4096;
/// Writes `model` (one output, sources named as the model's inputs) to
/// `path`, recording the ONNX file it came from. Fails on any operator this
/// format does not know, naming it.
pub(crate) fn write(model: &TypedModel, model_sha256: &str, path: &Path) -> TractResult<()> {
    let order = model.eval_order()?;
    let mut index_of = vec![usize::MAX; model.nodes.len()];
    let mut nodes = Vec::with_capacity(order.len());
    let mut data = Vec::new();
    for (index, &id) in order.iter().enumerate() {
        let node = model.node(id);
        index_of[id] = index;
        let op = describe(model, node, &mut data)
            .with_context(|| format!("node {:?} ({}) cannot be compiled", node.name, node.op().name()))?;
        let inputs = node.inputs.iter().map(|i| (index_of[i.node], i.slot)).collect();
        nodes.push(NodeSpec { name: node.name.clone(), op, inputs });
    }
    let inputs = model.input_outlets()?.iter().map(|o| (index_of[o.node], o.slot)).collect();
    let outputs = model.output_outlets()?.iter().map(|o| (index_of[o.node], o.slot)).collect();
    let header = Header { model_sha256: model_sha256.to_string(), nodes, inputs, outputs };
    let header = serde_json::to_vec(&header)?;
    let mut file = Vec::with_capacity(MAGIC.len() + 8 + header.len() + data.len());
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(&(header.len() as u64).to_le_bytes());
    file.extend_from_slice(&header);
    file.extend_from_slice(&data);
    let partial = path.with_extension("partial");
    std::fs::write(&partial, &file)?;
    std::fs::rename(&partial, path)?;
    Ok(())
}
/// The spec of one node, appending its tensors to `data`.
fn describe(model: &TypedModel, node: &TypedNode, data: &mut Vec<u8>) -> TractResult<OpSpec> {
    let op = node.op();
    if let Some(source) = op.downcast_ref::<TypedSource>() {
        let shape = source.fact.shape.iter().map(|d| d.to_string()).collect();
        return Ok(OpSpec::Source { datum: datum_name(source.fact.datum_type)?, shape });
    }
    if let Some(konst) = op.downcast_ref::<Const>() {
        ensure!(konst.exotic_fact().is_none(), "constants with exotic facts are not supported");
        return Ok(OpSpec::Const { tensor: store_tensor(konst.val(), data)? });
    }
    if let Some(binary) = op.downcast_ref::<TypedBinOp>() {
        let output = binary.1.map(datum_name).transpose()?;
        return Ok(OpSpec::Binary { op: binary.0.name().to_string(), output });
    }
    if let Some(unary) = op.downcast_ref::<ElementWiseOp>() {
        let output = unary.1.map(datum_name).transpose()?;
        let name = unary.0.name();
        // Parameterised mini-ops (e.g. PowConst) would lose their parameter.
        unary_op(&name).with_context(|| format!("element-wise {name} is not supported"))?;
        return Ok(OpSpec::Unary { op: name, output });
    }
    if let Some(c) = op.downcast_ref::<Cast>() {
        return Ok(OpSpec::Cast { to: datum_name(c.to)? });
    }
    if let Some(axis) = op.downcast_ref::<AxisOp>() {
        let dims = |ds: &[TDim]| ds.iter().map(|d| d.to_string()).collect();
        return Ok(match axis {
            AxisOp::Add(a) => OpSpec::AddAxis { axis: *a },
            AxisOp::Rm(a) => OpSpec::RemoveAxis { axis: *a },
            AxisOp::Move(from, to) => OpSpec::MoveAxis { from: *from, to: *to },
            AxisOp::Reshape(at, from, to) => OpSpec::Reshape { at: *at, from: dims(from), to: dims(to) },
        });
    }
    if let Some(concat) = op.downcast_ref::<TypedConcat>() {
        return Ok(OpSpec::Concat { axis: concat.axis });
    }
    if let Some(einsum) = op.downcast_ref::<EinSum>() {
        ensure!(einsum.q_params.is_none(), "quantised EinSum is not supported");
        return Ok(OpSpec::EinSum { axes: einsum.axes.to_string(), datum: datum_name(einsum.operating_dt)? });
    }
    if let Some(gather) = op.downcast_ref::<Gather>() {
        ensure!(gather.output_type.is_none(), "Gather with an output type is not supported");
        return Ok(OpSpec::Gather { axis: gather.axis });
    }
    if let Some(gather) = op.downcast_ref::<GatherNd>() {
        return Ok(OpSpec::GatherNd { batch_dims: gather.batch_dims });
    }
    if op.downcast_ref::<Iff>().is_some() {
        return Ok(OpSpec::Iff);
    }
    if let Some(broadcast) = op.downcast_ref::<MultiBroadcastTo>() {
        return Ok(OpSpec::Broadcast { shape: broadcast.shape.iter().map(|d| d.to_string()).collect() });
    }
    if op.downcast_ref::<Range>().is_some() {
        // Its length is private; it is the length of its output.
        let fact = model.outlet_fact(OutletId::new(node.id, 0))?;
        ensure!(fact.rank() == 1, "Range with a rank-{} output", fact.rank());
        return Ok(OpSpec::Range { len: fact.shape[0].to_string() });
    }
    if let Some(reduce) = op.downcast_ref::<Reduce>() {
        return Ok(OpSpec::Reduce { axes: reduce.axes.to_vec(), reducer: reducer_name(&reduce.reducer)?.into() });
    }
    if let Some(norm) = op.downcast_ref::<RmsNorm>() {
        return Ok(OpSpec::RmsNorm { axis: norm.axis, eps: store_tensor(&norm.eps, data)? });
    }
    if let Some(slice) = op.downcast_ref::<Slice>() {
        return Ok(OpSpec::Slice { axis: slice.axis, start: slice.start.to_string(), end: slice.end.to_string() });
    }
    if let Some(softmax) = op.downcast_ref::<Softmax>() {
        ensure!(softmax.quant_output_dt.is_none(), "quantised Softmax is not supported");
        let log = softmax.kind == SoftmaxKind::LogSoftmax;
        return Ok(OpSpec::Softmax { axes: softmax.axes.to_vec(), log });
    }
    if let Some(quantise) = op.downcast_ref::<QuantizeRows>() {
        return Ok(OpSpec::QuantizeRows { unsmooth: store_tensor(&quantise.unsmooth, data)? });
    }
    if let Some(scale) = op.downcast_ref::<ScaleProduct>() {
        return Ok(OpSpec::ScaleProduct { column_scales: store_tensor(&scale.column_scales, data)? });
    }
    bail!("operator {} is not supported by the compiled format", op.name())
}
fn reducer_name(reducer: &Reducer) -> TractResult<&'static str> {
    Ok(match reducer {
        Reducer::Sum => "Sum",
        Reducer::Max => "Max",
        Reducer::Min => "Min",
        Reducer::Prod => "Prod",
        Reducer::MeanOfSquares => "MeanOfSquares",
        other => bail!("reducer {other:?} is not supported"),
    })
}
fn datum_name(datum: DatumType) -> TractResult<String> {
    DATUMS
        .iter()
        .find(|(d, _)| *d == datum)
        .map(|(_, name)| name.to_string())
        .with_context(|| format!("datum type {datum:?} is not supported"))
}
fn store_tensor(tensor: &Tensor, data: &mut Vec<u8>) -> TractResult<TensorSpec> {
    let datum = datum_name(tensor.datum_type())?;
    let shape = tensor.shape().to_vec();
    let plain = tensor.try_as_plain_ram()?;
    if tensor.datum_type() == DatumType::TDim {
        let dims = plain.as_slice::<TDim>()?.iter().map(|d| d.to_string()).collect();
        return Ok(TensorSpec { datum, shape, offset: 0, bytes: 0, dims: Some(dims), int8: None });
    }
    let offset = data.len() as u64;
    if tensor.datum_type() == DatumType::F32
        && tensor.len() >= INT8_MIN_VALUES
        && let Some((layout, values, scales)) = as_int8(plain.as_slice::<f32>()?, &shape)
    {
        data.extend(values.iter().map(|&q| q as u8));
        data.extend(scales.iter().flat_map(|s| s.to_le_bytes()));
        let bytes = (values.len() + 4 * scales.len()) as u64;
        return Ok(TensorSpec { datum, shape, offset, bytes, dims: None, int8: Some(layout) });
    }
    ensure!(cfg!(target_endian = "little"), "compiled graphs are written on little-endian machines only");
    let bytes = tensor.as_bytes();
    data.extend_from_slice(bytes);
    Ok(TensorSpec { datum, shape, offset, bytes: bytes.len() as u64, dims: None, int8: None })
}

/// `values` as int8 times one scale per row or per column of some
/// `rows × columns` view of `shape`, when that reproduces every value
/// exactly (as `q as f32 * scale`, the product the import computed).
fn as_int8(values: &[f32], shape: &[usize]) -> Option<(Int8Layout, Vec<i8>, Vec<f32>)> {
    for split in 1..shape.len() {
        let rows: usize = shape[..split].iter().product();
        for per_row in [true, false] {
            let layout = Int8Layout { rows, per_row };
            if let Some((q, scales)) = quantise(values, layout) {
                return Some((layout, q, scales));
            }
        }
    }
    None
}

fn quantise(values: &[f32], layout: Int8Layout) -> Option<(Vec<i8>, Vec<f32>)> {
    let columns = values.len() / layout.rows;
    let groups = if layout.per_row { layout.rows } else { columns };
    let member = |group: usize, k: usize| if layout.per_row { group * columns + k } else { k * columns + group };
    let members = values.len() / groups;
    let mut q = vec![0i8; values.len()];
    let mut scales = Vec::with_capacity(groups);
    for group in 0..groups {
        let largest = (0..members).map(|k| values[member(group, k)].abs()).fold(0.0f32, f32::max);
        // Symmetric quantisers map the largest magnitude to 127; the scale
        // is within an ulp or two of largest / 127.
        let near = largest / 127.0;
        let candidates = [near, f32::from_bits(near.to_bits() + 1), f32::from_bits(near.to_bits().wrapping_sub(1))];
        let fits = |scale: f32, q: &mut [i8]| {
            (0..members).all(|k| {
                let x = values[member(group, k)];
                let level = if scale > 0.0 { (x / scale).round() } else { 0.0 };
                let ok = level.abs() <= 127.0 && level * scale == x && x.is_finite();
                q[member(group, k)] = level as i8;
                ok
            })
        };
        let scale = candidates.into_iter().find(|&scale| scale.is_finite() && fits(scale, &mut q))?;
        scales.push(scale);
    }
    Some((q, scales))
}

//! Reading a compiled graph back into a tract model.

use std::path::Path;

use tract_core::internal::*;
use tract_core::ops::array::{Gather, GatherNd, MultiBroadcastTo, Range, Slice, TypedConcat};
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::cast::cast;
use tract_core::ops::change_axes::AxisOp;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::logic::Iff;
use tract_core::ops::nn::{Reduce, RmsNorm, Softmax, SoftmaxKind};

use super::*;
use crate::encoder::engine::int8_ops::{QuantizeRows, ScaleProduct};

/// Reads a compiled graph, refusing one compiled from another ONNX file than
/// `model_sha256`. Every offset, index and shape is checked: a damaged file
/// is an error, never a panic or an out-of-bounds read.
pub(crate) fn read(path: &Path, model_sha256: &str) -> TractResult<TypedModel> {
    let file = std::fs::read(path)?;
    let rest = file.strip_prefix(MAGIC.as_slice()).context("not an Attune compiled graph (bad magic)")?;
    let (length, rest) = rest.split_first_chunk::<8>().context("truncated header length")?;
    let length = u64::from_le_bytes(*length);
    ensure!(length <= MAX_HEADER_BYTES && length <= rest.len() as u64, "header length {length} is out of range");
    let (header, data) = rest.split_at(length as usize);
    let header: Header = serde_json::from_slice(header).context("unreadable header")?;
    ensure!(
        header.model_sha256 == model_sha256,
        "compiled from another model (sha256 {}), not this manifest's {model_sha256}",
        header.model_sha256
    );
    build(&header, data)
}

fn build(header: &Header, data: &[u8]) -> TractResult<TypedModel> {
    let mut model = TypedModel::default();
    let mut outlets: Vec<TVec<OutletId>> = Vec::with_capacity(header.nodes.len());
    for (index, spec) in header.nodes.iter().enumerate() {
        let inputs = spec
            .inputs
            .iter()
            .map(|&(node, slot)| {
                outlets
                    .get(node)
                    .and_then(|wires| wires.get(slot))
                    .copied()
                    .with_context(|| format!("node {index} reads ({node}, {slot}), which is not an earlier output"))
            })
            .collect::<TractResult<TVec<OutletId>>>()?;
        let wires = wire(&mut model, spec, &inputs, data).with_context(|| format!("node {index} {:?}", spec.name))?;
        outlets.push(wires);
    }
    let find = |wires: &[(usize, usize)]| {
        wires
            .iter()
            .map(|&(node, slot)| outlets.get(node).and_then(|w| w.get(slot)).copied().context("wire out of range"))
            .collect::<TractResult<Vec<_>>>()
    };
    let (inputs, outputs) = (find(&header.inputs)?, find(&header.outputs)?);
    let mut sources = model.input_outlets()?.to_vec();
    let mut listed = inputs.clone();
    sources.sort();
    listed.sort();
    ensure!(listed == sources, "the input list does not name each source once");
    ensure!(!outputs.is_empty(), "the graph has no output");
    model.set_input_outlets(&inputs)?;
    model.select_output_outlets(&outputs)?;
    Ok(model)
}
/// Adds one node to `model`; returns its outputs.
fn wire(model: &mut TypedModel, spec: &NodeSpec, inputs: &[OutletId], data: &[u8]) -> TractResult<TVec<OutletId>> {
    let name = spec.name.as_str();
    let arity = |n: usize| -> TractResult<()> {
        ensure!(inputs.len() == n, "{} inputs where the operator takes {n}", inputs.len());
        Ok(())
    };
    let dims = |model: &TypedModel, ds: &[String]| -> TractResult<TVec<TDim>> {
        ds.iter().map(|d| model.symbols.parse_tdim(d)).collect()
    };
    let op: Box<dyn TypedOp> = match &spec.op {
        OpSpec::Source { datum, shape } => {
            arity(0)?;
            let shape = dims(model, shape)?;
            let fact = TypedFact::dt_shape(datum_type(datum)?, &*shape);
            return Ok(tvec!(model.add_source(name, fact)?));
        }
        OpSpec::Const { tensor } => {
            arity(0)?;
            let tensor = load_tensor(model, tensor, data)?;
            return Ok(tvec!(model.add_const(name, tensor)?));
        }
        OpSpec::Binary { op, output } => {
            arity(2)?;
            let mini = binary_op(op).with_context(|| format!("unknown binary operator {op}"))?;
            Box::new(TypedBinOp(mini, output.as_deref().map(datum_type).transpose()?))
        }
        OpSpec::Unary { op, output } => {
            arity(1)?;
            let mini = unary_op(op).with_context(|| format!("unknown element-wise operator {op}"))?;
            Box::new(ElementWiseOp(mini, output.as_deref().map(datum_type).transpose()?))
        }
        OpSpec::Cast { to } => Box::new(cast(datum_type(to)?)),
        OpSpec::AddAxis { axis } => Box::new(AxisOp::Add(*axis)),
        OpSpec::RemoveAxis { axis } => Box::new(AxisOp::Rm(*axis)),
        OpSpec::MoveAxis { from, to } => Box::new(AxisOp::Move(*from, *to)),
        OpSpec::Reshape { at, from, to } => Box::new(AxisOp::Reshape(*at, dims(model, from)?, dims(model, to)?)),
        OpSpec::Concat { axis } => Box::new(TypedConcat::new(*axis)),
        OpSpec::EinSum { axes, datum } => Box::new(EinSum::new(axes.parse()?, datum_type(datum)?)),
        OpSpec::Gather { axis } => Box::new(Gather::new(*axis)),
        OpSpec::GatherNd { batch_dims } => Box::new(GatherNd::new(*batch_dims)),
        OpSpec::Iff => Box::new(Iff),
        OpSpec::Broadcast { shape } => Box::new(MultiBroadcastTo::new(ShapeFact::from_dims(dims(model, shape)?))),
        OpSpec::Range { len } => Box::new(Range::new(model.symbols.parse_tdim(len)?)),
        OpSpec::Reduce { axes, reducer } => Box::new(Reduce::new(axes.iter().copied().collect(), reducer_of(reducer)?)),
        OpSpec::RmsNorm { axis, eps } => {
            let eps = load_tensor(model, eps, data)?;
            Box::new(RmsNorm { axis: *axis, eps: eps.into_arc_tensor() })
        }
        OpSpec::Slice { axis, start, end } => {
            Box::new(Slice::new(*axis, model.symbols.parse_tdim(start)?, model.symbols.parse_tdim(end)?))
        }
        OpSpec::Softmax { axes, log } => {
            let kind = if *log { SoftmaxKind::LogSoftmax } else { SoftmaxKind::Softmax };
            Box::new(Softmax { axes: axes.iter().copied().collect(), quant_output_dt: None, kind })
        }
        OpSpec::QuantizeRows { unsmooth } => {
            arity(1)?;
            Box::new(QuantizeRows { unsmooth: load_tensor(model, unsmooth, data)?.into_arc_tensor() })
        }
        OpSpec::ScaleProduct { column_scales } => {
            arity(2)?;
            Box::new(ScaleProduct { column_scales: load_tensor(model, column_scales, data)?.into_arc_tensor() })
        }
    };
    // Rank and axis checks happen here: tract computes the output facts
    // from the inputs' and refuses what does not fit.
    model.wire_node(name, op, inputs)
}
fn load_tensor(model: &TypedModel, spec: &TensorSpec, data: &[u8]) -> TractResult<Tensor> {
    let datum = datum_type(&spec.datum)?;
    let count = spec.shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d)).context("tensor shape overflows")?;
    if datum == DatumType::TDim {
        let dims = spec.dims.as_ref().context("symbolic tensor without its dimensions")?;
        ensure!(dims.len() == count, "{} dimensions for shape {:?}", dims.len(), spec.shape);
        let values = dims.iter().map(|d| model.symbols.parse_tdim(d)).collect::<TractResult<Vec<_>>>()?;
        return Ok(tract_core::ndarray::ArrayD::from_shape_vec(spec.shape.clone(), values)?.into_tensor());
    }
    let expected = match spec.int8 {
        Some(layout) => int8_bytes(count, layout, datum)?,
        None => count.checked_mul(datum.size_of()),
    };
    ensure!(expected == Some(spec.bytes as usize), "{} bytes for shape {:?}", spec.bytes, spec.shape);
    let start = usize::try_from(spec.offset)?;
    let end = start.checked_add(spec.bytes as usize).context("tensor range overflows")?;
    let bytes = data.get(start..end).context("tensor lies outside the file")?;
    if let Some(layout) = spec.int8 {
        let (levels, scales) = bytes.split_at(count);
        let scales = decode(scales, f32::from_le_bytes);
        let columns = count / layout.rows;
        let values: Vec<f32> = levels
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let group = if layout.per_row { i / columns } else { i % columns };
                f32::from(q as i8) * scales[group]
            })
            .collect();
        return Tensor::from_shape(&spec.shape, &values);
    }
    match datum {
        DatumType::Bool => {
            let values = bytes.iter().map(|&b| {
                Ok(match b {
                    0 => false,
                    1 => true,
                    _ => bail!("bool byte {b}"),
                })
            });
            Tensor::from_shape(&spec.shape, &values.collect::<TractResult<Vec<bool>>>()?)
        }
        DatumType::U8 => Tensor::from_shape(&spec.shape, bytes),
        DatumType::I8 => Tensor::from_shape(&spec.shape, &bytes.iter().map(|&b| b as i8).collect::<Vec<_>>()),
        DatumType::I32 => Tensor::from_shape(&spec.shape, &decode(bytes, i32::from_le_bytes)),
        DatumType::I64 => Tensor::from_shape(&spec.shape, &decode(bytes, i64::from_le_bytes)),
        DatumType::F32 => Tensor::from_shape(&spec.shape, &decode(bytes, f32::from_le_bytes)),
        DatumType::F64 => Tensor::from_shape(&spec.shape, &decode(bytes, f64::from_le_bytes)),
        other => bail!("datum type {other:?} is not supported"),
    }
}

/// Bytes of an int8-stored tensor: one per value, four per scale.
fn int8_bytes(count: usize, layout: Int8Layout, datum: DatumType) -> TractResult<Option<usize>> {
    ensure!(datum == DatumType::F32, "only f32 tensors are stored as int8");
    ensure!(layout.rows > 0 && count.is_multiple_of(layout.rows), "{} rows do not divide {count} values", layout.rows);
    let groups = if layout.per_row { layout.rows } else { count / layout.rows };
    Ok(groups.checked_mul(4).and_then(|scales| scales.checked_add(count)))
}

fn decode<const N: usize, T>(bytes: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    bytes.chunks_exact(N).map(|chunk| from(chunk.try_into().expect("chunks of N bytes"))).collect()
}

//! Attune's compiled model file: a tract graph after import and the portable
//! graph passes, saved with the few operator kinds sentence encoders use.
//!
//! Reading it needs tract-core alone. Linking the ONNX parser instead pulls
//! in every operator it can produce (tract-nnef's reader does the same), and
//! that, not the model, is most of a 27 MB library; see `bindings/measure-size`.
//!
//! Layout: `MAGIC`, the JSON header's length (u64, little-endian), the JSON
//! header (nodes in evaluation order, each naming its inputs by earlier
//! node and slot), then the tensor bytes the header points into.
//!
//! tract's import multiplies int8 weights by their scales once, into f32
//! constants four times larger. The writer finds such tensors again — int8
//! values times one scale per row or per column, bit for bit — and stores
//! them that way, so the file stays the size of the int8 ONNX file.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tract_core::internal::*;
use tract_core::ops::array::{Gather, GatherNd, MultiBroadcastTo, Range, Slice, TypedConcat};
use tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_core::ops::cast::{Cast, cast};
use tract_core::ops::change_axes::AxisOp;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::element_wise::{ElementWiseMiniOp, ElementWiseOp};
use tract_core::ops::konst::Const;
use tract_core::ops::logic::{self, Iff};
use tract_core::ops::math;
use tract_core::ops::nn::{self, Reduce, Reducer, RmsNorm, Softmax, SoftmaxKind};
use tract_core::ops::source::TypedSource;

const MAGIC: &[u8; 16] = b"attune-graph-v1\n";
/// Far above any encoder's graph (the default model's header is ~100 kB).
const MAX_HEADER_BYTES: u64 = 64 << 20;

/// The header: everything but the tensor bytes.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    /// sha256 of the ONNX file this graph was compiled from.
    model_sha256: String,
    nodes: Vec<NodeSpec>,
    /// The sources, in the model's input order.
    inputs: Vec<(usize, usize)>,
    outputs: Vec<(usize, usize)>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct NodeSpec {
    name: String,
    op: OpSpec,
    /// (earlier node, output slot) per input.
    inputs: Vec<(usize, usize)>,
}

/// The operators a compiled graph may hold. Dimensions are tract's symbolic
/// expressions as text (`batch`, `2*sequence`); datum types by name (`F32`).
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "kind", deny_unknown_fields)]
enum OpSpec {
    Source { datum: String, shape: Vec<String> },
    Const { tensor: TensorSpec },
    Binary { op: String, output: Option<String> },
    Unary { op: String, output: Option<String> },
    Cast { to: String },
    AddAxis { axis: usize },
    RemoveAxis { axis: usize },
    MoveAxis { from: usize, to: usize },
    Reshape { at: usize, from: Vec<String>, to: Vec<String> },
    Concat { axis: usize },
    EinSum { axes: String, datum: String },
    Gather { axis: usize },
    GatherNd { batch_dims: usize },
    Iff,
    Broadcast { shape: Vec<String> },
    Range { len: String },
    Reduce { axes: Vec<usize>, reducer: String },
    RmsNorm { axis: usize, eps: TensorSpec },
    Slice { axis: usize, start: String, end: String },
    Softmax { axes: Vec<usize>, log: bool },
}

/// A tensor: numbers as little-endian bytes at `offset` in the data section,
/// symbolic dimensions (shape computations) inline as text.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TensorSpec {
    datum: String,
    shape: Vec<usize>,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dims: Option<Vec<String>>,
    /// For f32 tensors stored as int8 times scales: the data holds one i8
    /// per value, then the f32 scales.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    int8: Option<Int8Layout>,
}

/// The tensor seen as a `rows × (len / rows)` matrix, with one scale per
/// row or per column.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Int8Layout {
    rows: usize,
    per_row: bool,
}

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
    bail!("operator {} is not supported by the compiled format", op.name())
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
    };
    // Rank and axis checks happen here: tract computes the output facts
    // from the inputs' and refuses what does not fit.
    model.wire_node(name, op, inputs)
}

fn binary_op(name: &str) -> Option<Box<dyn BinMiniOp>> {
    let comparison: Box<dyn BinMiniOp> = match name {
        "Eq" => Box::new(logic::CompEq),
        "NE" => Box::new(logic::CompNE),
        "LT" => Box::new(logic::CompLT),
        "GT" => Box::new(logic::CompGT),
        "LTE" => Box::new(logic::CompLTE),
        "GTE" => Box::new(logic::CompGTE),
        _ => Box::new(logic::CompEq),
    };
    if comparison.name() == name {
        return Some(comparison);
    }
    let op = match name {
        "Add" => math::add(),
        "Sub" => math::sub(),
        "Mul" => math::mul(),
        "Div" => math::div(),
        "Pow" => math::pow(),
        "Max" => math::max(),
        "Min" => math::min(),
        "And" => logic::and(),
        "Or" => logic::or(),
        _ => return None,
    };
    Some(op.0)
}

fn unary_op(name: &str) -> Option<Box<dyn ElementWiseMiniOp>> {
    let op = match name {
        "Erf" => math::erf(),
        "Exp" => math::exp(),
        "Ln" => math::ln(),
        "Sqrt" => math::sqrt(),
        "Rsqrt" => math::rsqrt(),
        "Recip" => math::recip(),
        "Square" => math::square(),
        "Abs" => math::abs(),
        "Neg" => math::neg(),
        "Tanh" => math::tanh(),
        "IsNan" => math::is_nan(),
        "Not" => logic::not(),
        "Sigmoid" => nn::sigmoid(),
        "GeluExact" => nn::gelu_exact::gelu_exact(),
        _ => return None,
    };
    Some(op.0)
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

fn reducer_of(name: &str) -> TractResult<Reducer> {
    Ok(match name {
        "Sum" => Reducer::Sum,
        "Max" => Reducer::Max,
        "Min" => Reducer::Min,
        "Prod" => Reducer::Prod,
        "MeanOfSquares" => Reducer::MeanOfSquares,
        other => bail!("unknown reducer {other}"),
    })
}

/// The datum types a compiled graph may use.
const DATUMS: [(DatumType, &str); 8] = [
    (DatumType::Bool, "Bool"),
    (DatumType::U8, "U8"),
    (DatumType::I8, "I8"),
    (DatumType::I32, "I32"),
    (DatumType::I64, "I64"),
    (DatumType::F32, "F32"),
    (DatumType::F64, "F64"),
    (DatumType::TDim, "TDim"),
];

fn datum_name(datum: DatumType) -> TractResult<String> {
    DATUMS
        .iter()
        .find(|(d, _)| *d == datum)
        .map(|(_, name)| name.to_string())
        .with_context(|| format!("datum type {datum:?} is not supported"))
}

fn datum_type(name: &str) -> TractResult<DatumType> {
    DATUMS.iter().find(|(_, n)| *n == name).map(|(d, _)| *d).with_context(|| format!("unknown datum type {name:?}"))
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
            let values = bytes.iter().map(|&b| Ok(match b { 0 => false, 1 => true, _ => bail!("bool byte {b}") }));
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
    ensure!(layout.rows > 0 && count % layout.rows == 0, "{} rows do not divide {count} values", layout.rows);
    let groups = if layout.per_row { layout.rows } else { count / layout.rows };
    Ok(groups.checked_mul(4).and_then(|scales| scales.checked_add(count)))
}

fn decode<const N: usize, T>(bytes: &[u8], from: fn([u8; N]) -> T) -> Vec<T> {
    bytes.chunks_exact(N).map(|chunk| from(chunk.try_into().expect("chunks of N bytes"))).collect()
}

#[cfg(all(test, feature = "onnx"))]
mod tests {
    use super::*;
    use crate::encoder::tract_engine::import_onnx;
    use crate::model::ModelManifest;

    fn tiny() -> (ModelManifest, TypedModel) {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny");
        let manifest = ModelManifest::load(&dir).unwrap();
        let model = import_onnx(&manifest).unwrap();
        (manifest, model)
    }

    /// Every operator but constants (tract shares equal constants).
    fn ops(model: &TypedModel) -> Vec<String> {
        let order = model.eval_order().unwrap();
        order.iter().map(|&id| model.node(id)).filter(|n| !n.op_is::<Const>()).map(|n| format!("{:?}", n.op())).collect()
    }

    fn run(model: TypedModel) -> Tensor {
        let ids = Tensor::from_shape(&[2, 5], &[2i64, 7, 9, 11, 3, 2, 40, 41, 3, 0]).unwrap();
        let mask = Tensor::from_shape(&[2, 5], &[1i64, 1, 1, 1, 1, 1, 1, 1, 1, 0]).unwrap();
        let types = Tensor::zero::<i64>(&[2, 5]).unwrap();
        let plan = model.into_runnable().unwrap();
        let outputs = plan.run(tvec!(ids.into_tvalue(), mask.into_tvalue(), types.into_tvalue())).unwrap();
        outputs[0].clone().into_tensor()
    }

    #[test]
    fn graphs_come_back_operator_for_operator() {
        let (manifest, model) = tiny();
        let dir = std::env::temp_dir().join(format!("attune-graph-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.graph");
        write(&model, &manifest.model_sha256, &path).unwrap();
        let back = read(&path, &manifest.model_sha256).unwrap();
        assert_eq!(ops(&back), ops(&model));
        assert_eq!(run(back), run(model), "same states, bit for bit");
        let error = read(&path, "another model").unwrap_err();
        assert!(format!("{error:#}").contains("compiled from another model"), "{error:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let (manifest, model) = tiny();
        let dir = std::env::temp_dir().join(format!("attune-graph-damaged-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.graph");
        write(&model, &manifest.model_sha256, &path).unwrap();
        let good = std::fs::read(&path).unwrap();
        let header_end = MAGIC.len() + 8 + u64::from_le_bytes(good[16..24].try_into().unwrap()) as usize;
        let read_back = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            std::panic::catch_unwind(|| read(&path, &manifest.model_sha256).map(|_| ()))
                .unwrap_or_else(|_| panic!("reading a damaged graph panicked"))
        };
        for cut in [0, 10, 20, header_end / 2, header_end, good.len() - 1] {
            assert!(read_back(&good[..cut]).is_err(), "a file cut at {cut} of {} bytes was read", good.len());
        }
        // Every 97th byte of the header changed: an error or a graph, never a panic.
        for at in (MAGIC.len()..header_end).step_by(97) {
            let mut bytes = good.clone();
            bytes[at] = bytes[at].wrapping_add(1);
            let _ = read_back(&bytes);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}

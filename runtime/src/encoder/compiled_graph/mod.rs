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

mod read;
#[cfg(feature = "onnx")]
mod write;

pub(crate) use read::read;
#[cfg(feature = "onnx")]
pub(crate) use write::write;

use serde::{Deserialize, Serialize};
use tract_core::internal::*;
use tract_core::ops::binary::BinMiniOp;
use tract_core::ops::element_wise::ElementWiseMiniOp;
use tract_core::ops::logic;
use tract_core::ops::math;
use tract_core::ops::nn::{self, Reducer};

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
/// `QuantizeRows` and `ScaleProduct` are Attune's own (`int8_ops`), in int8
/// graphs only.
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
    QuantizeRows { unsmooth: TensorSpec },
    ScaleProduct { column_scales: TensorSpec },
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

fn binary_op(name: &str) -> Option<Box<dyn BinMiniOp>> {
    Some(match name {
        "Add" => math::add().0,
        "Sub" => math::sub().0,
        "Mul" => math::mul().0,
        "Div" => math::div().0,
        "Pow" => math::pow().0,
        "Max" => math::max().0,
        "Min" => math::min().0,
        "And" => logic::and().0,
        "Or" => logic::or().0,
        "Eq" => Box::new(logic::CompEq),
        "NE" => Box::new(logic::CompNE),
        "LT" => Box::new(logic::CompLT),
        "GT" => Box::new(logic::CompGT),
        "LTE" => Box::new(logic::CompLTE),
        "GTE" => Box::new(logic::CompGTE),
        _ => return None,
    })
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
fn datum_type(name: &str) -> TractResult<DatumType> {
    DATUMS.iter().find(|(_, n)| *n == name).map(|(d, _)| *d).with_context(|| format!("unknown datum type {name:?}"))
}
#[cfg(all(test, feature = "onnx"))]
mod tests {
    use super::*;
    use crate::encoder::engine::tract::import_onnx;
    use crate::model::ModelManifest;
    use tract_core::ops::konst::Const;

    fn tiny() -> (ModelManifest, TypedModel) {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny");
        let manifest = ModelManifest::load(&dir).unwrap();
        let model = import_onnx(&manifest).unwrap();
        (manifest, model)
    }

    /// Every operator but constants (tract shares equal constants).
    fn ops(model: &TypedModel) -> Vec<String> {
        let order = model.eval_order().unwrap();
        order
            .iter()
            .map(|&id| model.node(id))
            .filter(|n| !n.op_is::<Const>())
            .map(|n| format!("{:?}", n.op()))
            .collect()
    }

    fn run(model: TypedModel) -> Tensor {
        let ids = Tensor::from_shape(&[2, 5], &[2i64, 7, 9, 11, 3, 2, 40, 41, 3, 0]).unwrap();
        let mask = Tensor::from_shape(&[2, 5], &[1i64, 1, 1, 1, 1, 1, 1, 1, 1, 0]).unwrap();
        let types = Tensor::zero::<i64>(&[2, 5]).unwrap();
        let plan = model.into_runnable().unwrap();
        let outputs = plan.run(tvec!(ids.into_tvalue(), mask.into_tvalue(), types.into_tvalue())).unwrap();
        outputs[0].clone().into_tensor()
    }

    /// The tiny model written to a fresh directory: (manifest, model, dir, file).
    fn written(tag: &str) -> (ModelManifest, TypedModel, std::path::PathBuf, std::path::PathBuf) {
        let (manifest, model) = tiny();
        let dir = std::env::temp_dir().join(format!("attune-graph-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.graph");
        write(&model, &manifest.model_sha256, &path).unwrap();
        (manifest, model, dir, path)
    }

    #[test]
    fn graphs_come_back_operator_for_operator() {
        let (manifest, model, dir, path) = written("round-trip");
        let back = read(&path, &manifest.model_sha256).unwrap();
        assert_eq!(ops(&back), ops(&model));
        assert_eq!(run(back), run(model), "same states, bit for bit");
        let error = read(&path, "another model").unwrap_err();
        assert!(format!("{error:#}").contains("compiled from another model"), "{error:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_files_are_errors_not_panics() {
        let (manifest, _, dir, path) = written("damaged");
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

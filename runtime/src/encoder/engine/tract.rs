//! The pure-Rust backend: tract, with the model optimised once at load for
//! symbolic batch and sequence dimensions.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;

use tract_core::internal::*;
use tract_core::ops::matmul::optimized::OptMatMul;
use tract_linalg::multithread::{Executor, multithread_tract_scope};

use super::layers::find_layers;
use super::{Engine, passes};
use crate::encoder::batching::TokenBatch;
use crate::encoder::compiled_graph;
use crate::error::{Error, Result};
use crate::model::ModelManifest;
use crate::transformer::LayerWeights;

/// Fewer tokens than this in a batch run on the calling thread alone.
const MULTITHREAD_MIN_TOKENS: usize = 64;

pub(crate) struct TractEngine {
    plan: Arc<TypedRunnableModel>,
    /// Position of each of our inputs (ids, mask, types) among the model's.
    input_order: Vec<InputRole>,
    executor: Executor,
    vocabulary_size: Option<usize>,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum InputRole {
    Ids,
    Mask,
    TypeIds,
}

impl TractEngine {
    /// Loads the compiled graph when the manifest names one, else imports the
    /// ONNX file (cargo feature `onnx`).
    pub fn load(manifest: &ModelManifest, threads: usize) -> Result<Self> {
        let (typed, path) = read_graph(manifest)?;
        let input_order = match_inputs(&input_names(&typed)?, manifest)?;
        let specialised = catch_unwind(AssertUnwindSafe(move || {
            let mut typed = typed;
            let vocabulary_size = passes::specialise(&mut typed)?;
            Ok((typed.into_runnable()?, vocabulary_size))
        }));
        let (plan, vocabulary_size) =
            specialised.unwrap_or_else(|_| Err(format_err!("tract panicked"))).map_err(load_error(&path))?;
        Ok(Self { plan, input_order, executor: executor(threads), vocabulary_size })
    }

    /// The graph cut at its first transformer layer's input (it returns
    /// the embeddings' token states), and the weights of every layer as
    /// the graph holds them (f32 or int8); or why its layers are not
    /// recognised.
    pub fn load_embeddings(manifest: &ModelManifest, threads: usize) -> Result<Embeddings> {
        let (typed, path) = read_graph(manifest)?;
        let input_order = match_inputs(&input_names(&typed)?, manifest)?;
        let split = catch_unwind(AssertUnwindSafe(move || -> TractResult<_> {
            let mut typed = typed;
            let vocabulary_size = passes::prepare(&mut typed)?;
            let found = match find_layers(&typed) {
                Ok(found) => found,
                Err(reason) => return Ok(Err(format!("{reason:#}"))),
            };
            let first = found.first().expect("find_layers finds at least one").input;
            typed.select_output_outlets(&[first])?;
            typed.optimize()?;
            let layers = found.into_iter().map(|f| f.weights).collect();
            Ok(Ok((typed.into_runnable()?, vocabulary_size, layers)))
        }));
        let split = split.unwrap_or_else(|_| Err(format_err!("tract panicked"))).map_err(load_error(&path))?;
        Ok(match split {
            Ok((plan, vocabulary_size, layers)) => {
                Embeddings::Split(Self { plan, input_order, executor: executor(threads), vocabulary_size }, layers)
            }
            Err(reason) => Embeddings::LayersNotRecognised(reason),
        })
    }
}

/// A graph cut below its transformer layers, when they are recognised.
pub enum Embeddings {
    /// The embeddings' plan, and every layer's weights.
    Split(TractEngine, Vec<LayerWeights>),
    /// Why the layers were not recognised: the graph runs whole on tract's plan.
    LayersNotRecognised(String),
}

/// The compiled graph when the manifest names one, else the imported ONNX file.
fn read_graph(manifest: &ModelManifest) -> Result<(TypedModel, std::path::PathBuf)> {
    match manifest.compiled_path() {
        Some(path) => {
            // A damaged file may hold a graph tract's checks let through
            // and then trip over: that is a load error, not a crash.
            let read = catch_unwind(|| compiled_graph::read(&path, &manifest.model_sha256));
            let graph = read.unwrap_or_else(|_| Err(format_err!("tract panicked"))).map_err(load_error(&path))?;
            Ok((graph, path))
        }
        None => Ok((import_onnx(manifest)?, manifest.model_path())),
    }
}

fn load_error(path: &Path) -> impl Fn(TractError) -> Error + '_ {
    move |e| Error::ModelLoad { path: path.to_path_buf(), reason: format!("{e:#}") }
}

#[cfg(feature = "multithread")]
fn executor(threads: usize) -> Executor {
    if threads > 1 { Executor::multithread(threads) } else { Executor::SingleThread }
}

/// Without the `multithread` feature every product runs on the calling thread.
#[cfg(not(feature = "multithread"))]
fn executor(_threads: usize) -> Executor {
    Executor::SingleThread
}

/// The ONNX file as a typed graph with symbolic batch and sequence
/// dimensions, after the portable passes: what `compile` stores.
#[cfg(feature = "onnx")]
pub(crate) fn import_onnx(manifest: &ModelManifest) -> Result<TypedModel> {
    use tract_onnx::prelude::{Framework, InferenceModelExt};
    let path = manifest.model_path();
    let error = load_error(&path);
    let mut model = tract_onnx::onnx().model_for_path(&path).map_err(&error)?;
    let names = input_names(&model)?;
    match_inputs(&names, manifest)?;
    let batch = model.symbols.sym("batch");
    let sequence = model.symbols.sym("sequence");
    for ix in 0..names.len() {
        let fact = i64::fact([batch.to_dim(), sequence.to_dim()]);
        model.set_input_fact(ix, fact.into()).map_err(&error)?;
    }
    select_output(&mut model, &manifest.output)?;
    let mut typed = model.into_typed().map_err(&error)?;
    passes::simplify(&mut typed).map_err(&error)?;
    Ok(typed)
}

#[cfg(not(feature = "onnx"))]
fn import_onnx(manifest: &ModelManifest) -> Result<TypedModel> {
    Err(Error::BackendUnavailable {
        backend: "native".into(),
        reason: format!(
            "this build runs compiled models only and {} names none (run `attune compile-model`, \
             or build with cargo feature `onnx`)",
            manifest.directory().display()
        ),
    })
}

/// Writes `manifest`'s model, imported and simplified, as a compiled graph,
/// its weight products in int8 at that precision (their activations' ranges
/// measured on `calibration`). Returns how many products are in int8.
#[cfg(feature = "onnx")]
pub(crate) fn compile(
    manifest: &ModelManifest,
    out: &Path,
    precision: crate::Precision,
    calibration: &[TokenBatch],
) -> Result<usize> {
    let path = manifest.model_path();
    let error = load_error(&path);
    let mut typed = import_onnx(manifest)?;
    let int8_products = match precision {
        crate::Precision::F32 => 0,
        crate::Precision::Int8 => {
            let (products, kept) = crate::encoder::compile::int8::weight_products(&typed).map_err(&error)?;
            let ranges = activation_ranges(&typed, &products, manifest, calibration)?;
            crate::encoder::compile::int8::quantise_weight_products(&mut typed, &products, &ranges, kept)
                .map_err(&error)?
                .rewritten
        }
    };
    compiled_graph::write(&typed, &manifest.model_sha256, out).map_err(error)?;
    Ok(int8_products)
}

/// The largest magnitude per channel of each product's activation, over
/// `batches` run through the f32 graph.
#[cfg(feature = "onnx")]
fn activation_ranges(
    model: &TypedModel,
    products: &[crate::encoder::compile::int8::Product],
    manifest: &ModelManifest,
    batches: &[TokenBatch],
) -> Result<Vec<Vec<f32>>> {
    let path = manifest.model_path();
    let error = load_error(&path);
    let mut outlets: Vec<OutletId> = products.iter().map(|p| p.activation).collect();
    outlets.sort();
    outlets.dedup();
    let mut probe = model.clone();
    probe.select_output_outlets(&outlets).map_err(&error)?;
    let order = match_inputs(&input_names(&probe)?, manifest)?;
    passes::specialise(&mut probe).map_err(&error)?;
    let plan = probe.into_runnable().map_err(&error)?;
    let mut ranges: Vec<Vec<f32>> = products.iter().map(|p| vec![0.0; p.k()]).collect();
    for batch in batches {
        let outputs = plan.run(model_inputs(&order, batch)?).map_err(&error)?;
        for (product, range) in products.iter().zip(&mut ranges) {
            let output = &outputs[outlets.binary_search(&product.activation).expect("listed above")];
            let view = output.to_plain_array_view::<f32>().map_err(&error)?;
            for lane in view.lanes(tract_core::ndarray::Axis(product.k_in_x)) {
                for (largest, value) in range.iter_mut().zip(lane) {
                    *largest = largest.max(value.abs());
                }
            }
        }
    }
    Ok(ranges)
}

/// The batch as the model's inputs, in the model's order.
pub(super) fn model_inputs(order: &[InputRole], batch: &TokenBatch) -> Result<TVec<TValue>> {
    let shape = [batch.rows, batch.seq];
    let tensor = |data: &[i64]| Tensor::from_shape(&shape, data).map(IntoTValue::into_tvalue);
    order
        .iter()
        .map(|role| match role {
            InputRole::Ids => tensor(&batch.ids),
            InputRole::Mask => tensor(&batch.mask),
            InputRole::TypeIds => tensor(&batch.type_ids),
        })
        .collect::<TractResult<TVec<TValue>>>()
        .map_err(|e| Error::Inference(format!("{e:#}")))
}

impl Engine for TractEngine {
    fn vocabulary_size(&self) -> Option<usize> {
        self.vocabulary_size
    }

    fn matrix_kernels(&self) -> Vec<(String, usize)> {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        let products = self.plan.model().nodes.iter().filter_map(|node| node.op_as::<OptMatMul>());
        for kernel in products.flat_map(|product| product.mmm.iter()) {
            *counts.entry(kernel.name().to_string()).or_default() += 1;
        }
        counts.into_iter().collect()
    }

    fn run(&self, batch: &TokenBatch, pool: &mut dyn FnMut(&[f32], usize) -> Result<()>) -> Result<()> {
        // Splitting a matmul over threads costs more than it saves on a short
        // single text.
        let executor = if batch.rows * batch.seq >= MULTITHREAD_MIN_TOKENS {
            self.executor.clone()
        } else {
            Executor::SingleThread
        };
        self.run_with(executor, batch, pool)
    }

    fn run_on_one_thread(&self, batch: &TokenBatch, pool: &mut dyn FnMut(&[f32], usize) -> Result<()>) -> Result<()> {
        self.run_with(Executor::SingleThread, batch, pool)
    }

    fn runs_batches_in_parallel(&self) -> bool {
        true
    }
}

impl TractEngine {
    fn run_with(
        &self,
        executor: Executor,
        batch: &TokenBatch,
        pool: &mut dyn FnMut(&[f32], usize) -> Result<()>,
    ) -> Result<()> {
        let inputs = model_inputs(&self.input_order, batch)?;
        let outputs = multithread_tract_scope(executor, || self.plan.run(inputs))
            .map_err(|e| Error::Inference(format!("{e:#}")))?;
        let hidden = &outputs[0];
        let dims = hidden.shape();
        if dims.len() != 3 || dims[0] != batch.rows || dims[1] != batch.seq {
            return Err(Error::ModelMismatch(format!(
                "output shape {dims:?} is not [batch {}, sequence {}, width]",
                batch.rows, batch.seq
            )));
        }
        let values = hidden
            .try_as_plain_ram()
            .and_then(|plain| plain.as_slice::<f32>())
            .map_err(|e| Error::ModelMismatch(format!("output is not f32: {e}")))?;
        pool(values, dims[2])
    }
}

/// Names of the graph's inputs, in the graph's order.
pub(super) fn input_names<F, O>(model: &Graph<F, O>) -> Result<Vec<String>>
where
    F: Fact + Clone + 'static,
    O: std::fmt::Debug + std::fmt::Display + AsRef<dyn Op> + AsMut<dyn Op> + Clone + 'static,
{
    let outlets = model.input_outlets().map_err(|e| Error::ModelMismatch(e.to_string()))?;
    Ok(outlets.iter().map(|outlet| model.node(outlet.node).name.clone()).collect())
}

/// Maps the model's inputs, in the model's order, to the manifest's names.
pub(super) fn match_inputs(model_inputs: &[String], manifest: &ModelManifest) -> Result<Vec<InputRole>> {
    let names = &manifest.inputs;
    let roles = model_inputs
        .iter()
        .map(|name| match name {
            n if *n == names.input_ids => Ok(InputRole::Ids),
            n if *n == names.attention_mask => Ok(InputRole::Mask),
            n if Some(n) == names.token_type_ids.as_ref() => Ok(InputRole::TypeIds),
            n => Err(Error::ModelMismatch(format!("the model has input {n:?}, which the manifest does not name"))),
        })
        .collect::<Result<Vec<_>>>()?;
    let expected = [Some(&names.input_ids), Some(&names.attention_mask), names.token_type_ids.as_ref()];
    for name in expected.into_iter().flatten() {
        if !model_inputs.contains(name) {
            return Err(Error::ModelMismatch(format!("the model has no input {name:?} (it has {model_inputs:?})")));
        }
    }
    Ok(roles)
}

#[cfg(feature = "onnx")]
fn select_output(model: &mut tract_onnx::prelude::InferenceModel, name: &str) -> Result<()> {
    let outlets = model.output_outlets().map_err(|e| Error::ModelMismatch(e.to_string()))?.to_vec();
    let wanted = outlets
        .iter()
        .find(|outlet| model.outlet_label(**outlet) == Some(name) || model.node(outlet.node).name == name)
        .copied()
        .ok_or_else(|| Error::ModelMismatch(format!("the model has no output {name:?}")))?;
    model.select_output_outlets(&[wanted]).map_err(|e| Error::ModelMismatch(e.to_string()))
}

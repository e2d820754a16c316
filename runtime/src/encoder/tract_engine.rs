//! The pure-Rust backend: tract, with the model optimised once at load for
//! symbolic batch and sequence dimensions.

use std::sync::Arc;

use tract_linalg::multithread::{Executor, multithread_tract_scope};
use tract_onnx::prelude::*;
use tract_onnx::tract_core::ops::konst::Const;
use tract_onnx::tract_core::ops::source::TypedSource;
use tract_onnx::tract_core::optim::Optimizer;

use super::Engine;
use super::batching::TokenBatch;
use crate::error::{Error, Result};
use crate::model::ModelManifest;

pub(crate) struct TractEngine {
    plan: Arc<TypedRunnableModel>,
    /// Position of each of our inputs (ids, mask, types) among the model's.
    input_order: Vec<InputRole>,
    executor: Executor,
}

#[derive(Debug, Clone, Copy)]
enum InputRole {
    Ids,
    Mask,
    TypeIds,
}

impl TractEngine {
    pub fn load(manifest: &ModelManifest, threads: usize) -> Result<Self> {
        let path = manifest.model_path();
        let load_error = |e: TractError| Error::ModelLoad {
            path: path.clone(),
            reason: format!("{e:#}"),
        };
        let mut model = tract_onnx::onnx()
            .model_for_path(&path)
            .map_err(load_error)?;

        let input_order = match_inputs(&model, manifest)?;
        let batch = model.symbols.sym("batch");
        let sequence = model.symbols.sym("sequence");
        for ix in 0..input_order.len() {
            let fact = i64::fact([batch.to_dim(), sequence.to_dim()]);
            model.set_input_fact(ix, fact.into()).map_err(load_error)?;
        }
        select_output(&mut model, &manifest.output)?;

        let mut typed = model.into_typed().map_err(load_error)?;
        fold_constants(&mut typed).map_err(load_error)?;
        declutter(&mut typed).map_err(load_error)?;
        typed.optimize().map_err(load_error)?;
        let plan = typed.into_runnable().map_err(load_error)?;
        let executor = if threads > 1 {
            Executor::multithread(threads)
        } else {
            Executor::SingleThread
        };
        Ok(Self {
            plan,
            input_order,
            executor,
        })
    }
}

impl Engine for TractEngine {
    fn run(
        &self,
        batch: &TokenBatch,
        pool: &mut dyn FnMut(&[f32], usize) -> Result<()>,
    ) -> Result<()> {
        let shape = [batch.rows, batch.seq];
        let tensor = |data: &[i64]| Tensor::from_shape(&shape, data).map(IntoTValue::into_tvalue);
        let inputs = self
            .input_order
            .iter()
            .map(|role| match role {
                InputRole::Ids => tensor(&batch.ids),
                InputRole::Mask => tensor(&batch.mask),
                InputRole::TypeIds => tensor(&batch.type_ids),
            })
            .collect::<TractResult<TVec<TValue>>>()
            .map_err(|e| Error::Inference(format!("{e:#}")))?;
        let outputs = multithread_tract_scope(self.executor.clone(), || self.plan.run(inputs))
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

/// tract's declutter, minus `FoldUniformMask`: in tract 0.23.9 that pass
/// replaces an all-true mask of shape `[1, 1, seq, 1]` by a `[1, 1, 1, 1]`
/// constant, dropping the axis that broadcasts the attention mask of
/// torch-exported BERTs (the default model) to `[batch, 1, seq, seq]`, and
/// the plan then fails on every input.
fn declutter(model: &mut TypedModel) -> TractResult<()> {
    let mut optimizer = Optimizer::declutter();
    optimizer
        .passes
        .retain(|pass| !format!("{pass:?}").starts_with("FoldUniformMask"));
    optimizer.optimize(model)
}

/// Maps the model's inputs, in the model's order, to the manifest's names.
fn match_inputs(model: &InferenceModel, manifest: &ModelManifest) -> Result<Vec<InputRole>> {
    let names = &manifest.inputs;
    let model_inputs: Vec<String> = model
        .input_outlets()
        .map_err(|e| Error::ModelMismatch(e.to_string()))?
        .iter()
        .map(|outlet| model.node(outlet.node).name.clone())
        .collect();
    let roles = model_inputs
        .iter()
        .map(|name| match name {
            n if *n == names.input_ids => Ok(InputRole::Ids),
            n if *n == names.attention_mask => Ok(InputRole::Mask),
            n if Some(n) == names.token_type_ids.as_ref() => Ok(InputRole::TypeIds),
            n => Err(Error::ModelMismatch(format!(
                "the model has input {n:?}, which the manifest does not name"
            ))),
        })
        .collect::<Result<Vec<_>>>()?;
    let expected = [
        Some(&names.input_ids),
        Some(&names.attention_mask),
        names.token_type_ids.as_ref(),
    ];
    for name in expected.into_iter().flatten() {
        if !model_inputs.contains(name) {
            return Err(Error::ModelMismatch(format!(
                "the model has no input {name:?} (it has {model_inputs:?})"
            )));
        }
    }
    Ok(roles)
}

fn select_output(model: &mut InferenceModel, name: &str) -> Result<()> {
    let outlets = model
        .output_outlets()
        .map_err(|e| Error::ModelMismatch(e.to_string()))?
        .to_vec();
    let wanted = outlets
        .iter()
        .find(|outlet| {
            model.outlet_label(**outlet) == Some(name) || model.node(outlet.node).name == name
        })
        .copied()
        .ok_or_else(|| Error::ModelMismatch(format!("the model has no output {name:?}")))?;
    model
        .select_output_outlets(&[wanted])
        .map_err(|e| Error::ModelMismatch(e.to_string()))
}

/// Replaces every node whose inputs are all concrete constants by its value.
///
/// tract's own folding refuses results larger than their inputs, so an int8
/// weight table behind `Cast` + `Mul` (as in the default model) would be
/// dequantised again on every call: 64% of a batch-1 run. Folding it once here
/// trades that for the f32 table's memory.
fn fold_constants(model: &mut TypedModel) -> TractResult<()> {
    'patched: loop {
        for id in model.eval_order()? {
            let node = model.node(id);
            if node.op_is::<Const>() || node.op_is::<TypedSource>() || node.inputs.is_empty() {
                continue;
            }
            let inputs = model
                .node_input_facts(id)?
                .iter()
                .map(|fact| {
                    // Shape computations hold symbols (batch, sequence): leave them to tract.
                    let value = fact
                        .konst
                        .as_ref()
                        .filter(|k| k.datum_type() != TDim::datum_type())?;
                    Some(value.clone().into_tvalue())
                })
                .collect::<Option<TVec<TValue>>>();
            let Some(inputs) = inputs else {
                continue;
            };
            let Some(outputs) = node.op.eval_out_of_plan(inputs).ok().flatten() else {
                continue;
            };
            let mut patch = TypedModelPatch::default();
            for (slot, value) in outputs.into_iter().enumerate() {
                let wire = patch.add_const(
                    format!("{}.folded.{slot}", node.name),
                    value.into_arc_tensor(),
                )?;
                patch.shunt_outside(model, OutletId::new(id, slot), wire)?;
            }
            patch.apply(model)?;
            continue 'patched;
        }
        return Ok(());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_typed() -> TypedModel {
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny");
        let manifest = ModelManifest::load(&dir).unwrap();
        let mut model = tract_onnx::onnx()
            .model_for_path(manifest.model_path())
            .unwrap();
        let (b, s) = (model.symbols.sym("batch"), model.symbols.sym("sequence"));
        for ix in 0..3 {
            model
                .set_input_fact(ix, i64::fact([b.to_dim(), s.to_dim()]).into())
                .unwrap();
        }
        model.into_typed().unwrap()
    }

    #[test]
    fn folding_removes_the_int8_dequantisation() {
        use tract_onnx::tract_core::ops::cast::Cast;
        let casts_of_constants = |model: &TypedModel| {
            model
                .nodes
                .iter()
                .filter(|n| n.op_is::<Cast>())
                .filter(|n| n.inputs.iter().all(|i| model.node(i.node).op_is::<Const>()))
                .count()
        };
        let mut model = tiny_typed();
        assert!(
            casts_of_constants(&model) > 0,
            "the tiny model dequantises in-graph"
        );
        fold_constants(&mut model).unwrap();
        assert_eq!(casts_of_constants(&model), 0);
    }
}

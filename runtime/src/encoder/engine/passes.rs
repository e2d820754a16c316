//! Graph passes applied to the typed model between import and codegen:
//! what tract 0.23.9 leaves undone or gets wrong on sentence encoders.
//!
//! `simplify` is portable: its result is what a compiled model stores.
//! `specialise` runs at every load: it expands the stored weights and
//! generates code for this machine.

use tract_core::internal::*;
use tract_core::ops::konst::Const;
use tract_core::ops::source::TypedSource;
use tract_core::optim::Optimizer;

/// Declutters and fuses GELU: the graph a compiled model stores.
#[cfg(feature = "onnx")]
pub(crate) fn simplify(model: &mut TypedModel) -> TractResult<()> {
    declutter(model)?;
    crate::encoder::compile::gelu_fusion::fuse_exact_gelu(model)
}

/// Folds constants, declutters again around the folded weights and
/// generates the optimised graph. Returns the rows of the word-embedding
/// table when it can be found.
pub(crate) fn specialise(model: &mut TypedModel) -> TractResult<Option<usize>> {
    let vocabulary_size = prepare(model)?;
    model.optimize()?;
    Ok(vocabulary_size)
}

/// `specialise` short of generating code: every weight a folded f32
/// constant, as `layers::find_layers` reads them.
pub(crate) fn prepare(model: &mut TypedModel) -> TractResult<Option<usize>> {
    fold_constants(model)?;
    let vocabulary_size = word_table_rows(model)?;
    declutter(model)?;
    Ok(vocabulary_size)
}

/// Rows of the constant table that the first model input (`input_ids` in
/// every BERT export) indexes. tract indexes it without bounds checks, so the
/// encoder compares the tokenizer's ids with this before running anything.
fn word_table_rows(model: &TypedModel) -> TractResult<Option<usize>> {
    let sources: Vec<OutletId> = model.input_outlets()?.to_vec();
    for node in &model.nodes {
        let is_gather = node.op().name() == "Gather";
        let [table, indices] = node.inputs.as_slice() else { continue };
        if !is_gather || !comes_from(model, *indices, &sources) {
            continue;
        }
        if let Some(konst) = &model.outlet_fact(*table)?.konst {
            return Ok(konst.shape().first().copied());
        }
    }
    Ok(None)
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
                    let value = fact.konst.as_ref().filter(|k| k.datum_type() != TDim::datum_type())?;
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
                let wire = patch.add_const(format!("{}.folded.{slot}", node.name), value.into_arc_tensor())?;
                patch.shunt_outside(model, OutletId::new(id, slot), wire)?;
            }
            patch.apply(model)?;
            continue 'patched;
        }
        return Ok(());
    }
}

/// tract's declutter, minus `FoldUniformMask`: in tract 0.23.9 that pass
/// replaces an all-true mask of shape `[1, 1, seq, 1]` by a `[1, 1, 1, 1]`
/// constant, dropping the axis that broadcasts the attention mask of
/// torch-exported BERTs (the default model) to `[batch, 1, seq, seq]`, and
/// the plan then fails on every input.
fn declutter(model: &mut TypedModel) -> TractResult<()> {
    let mut optimizer = Optimizer::declutter();
    optimizer.passes.retain(|pass| !format!("{pass:?}").starts_with("FoldUniformMask"));
    optimizer.optimize(model)
}

/// True when `outlet` is one of `sources`, possibly through `Cast`s.
fn comes_from(model: &TypedModel, mut outlet: OutletId, sources: &[OutletId]) -> bool {
    loop {
        if sources.contains(&outlet) {
            return true;
        }
        let node = model.node(outlet.node);
        match node.inputs.as_slice() {
            [input] if node.op().name() == "Cast" => outlet = *input,
            _ => return false,
        }
    }
}

#[cfg(all(test, feature = "onnx"))]
mod tests {
    use super::*;
    use crate::model::ModelManifest;

    fn tiny_typed() -> TypedModel {
        use tract_onnx::prelude::*;
        let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/tiny");
        let manifest = ModelManifest::load(&dir).unwrap();
        let mut model = tract_onnx::onnx().model_for_path(manifest.model_path()).unwrap();
        let (b, s) = (model.symbols.sym("batch"), model.symbols.sym("sequence"));
        for ix in 0..3 {
            model.set_input_fact(ix, i64::fact([b.to_dim(), s.to_dim()]).into()).unwrap();
        }
        model.into_typed().unwrap()
    }

    #[test]
    fn folding_removes_the_int8_dequantisation() {
        use tract_core::ops::cast::Cast;
        let casts_of_constants = |model: &TypedModel| {
            model
                .nodes
                .iter()
                .filter(|n| n.op_is::<Cast>())
                .filter(|n| n.inputs.iter().all(|i| model.node(i.node).op_is::<Const>()))
                .count()
        };
        let mut model = tiny_typed();
        assert!(casts_of_constants(&model) > 0, "the tiny model dequantises in-graph");
        fold_constants(&mut model).unwrap();
        assert_eq!(casts_of_constants(&model), 0);
    }

    #[test]
    fn fuses_the_torch_ordered_exact_gelu() {
        let count = |model: &TypedModel, name: &str| model.nodes.iter().filter(|n| n.op().name() == name).count();
        let mut model = tiny_typed();
        fold_constants(&mut model).unwrap();
        declutter(&mut model).unwrap();
        assert_eq!(count(&model, "Erf"), 1, "the tiny model has one GELU in torch's order");
        crate::encoder::compile::gelu_fusion::fuse_exact_gelu(&mut model).unwrap();
        assert_eq!(count(&model, "Erf"), 0);
        assert_eq!(count(&model, "GeluExact"), 1);
    }
}

//! Finds a BERT encoder's transformer layers in its tract graph and reads
//! their weights, so that the top layers can run in Attune's own code
//! (`crate::transformer`). Compiled graphs keep no names for weights, so a
//! layer is recognised by its shape: one softmax per layer; before it the
//! query and key products of the layer's input, after it the value product,
//! the output product, a residual sum and a layer norm; then the
//! feed-forward products around a GELU, a residual sum and a layer norm.
//! Runs on the prepared graph (constants folded), where every weight is a
//! constant: f32, or in an int8 graph the int8 levels of a product between
//! its `QuantizeRows` and `ScaleProduct` (see `int8.rs`).

use ndarray::{Array1, Array2, IxDyn};
use tract_core::internal::tract_ndarray::ArrayViewD;
use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::change_axes::AxisOp;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::element_wise::ElementWiseOp;
use tract_core::ops::logic::Iff;
use tract_core::ops::nn::{RmsNorm, Softmax};

use super::int8_ops::{QuantizeRows, ScaleProduct};
use crate::transformer::{Int8Weight, LayerWeights, Norm, Weight};

/// A layer, and where its input comes from and its output goes in the graph.
#[derive(Debug)]
pub(crate) struct FoundLayer {
    pub input: OutletId,
    pub output: OutletId,
    pub weights: LayerWeights,
}

/// Every transformer layer of `model`, in order; each layer's input is the
/// previous one's output.
pub(crate) fn find_layers(model: &TypedModel) -> TractResult<Vec<FoundLayer>> {
    let graph = Graph { model };
    let softmaxes: Vec<usize> = model.eval_order()?.into_iter().filter(|&id| graph.is::<Softmax>(id)).collect();
    ensure!(!softmaxes.is_empty(), "no attention softmax: not a transformer encoder");
    let mut layers = Vec::with_capacity(softmaxes.len());
    for (index, softmax) in softmaxes.into_iter().enumerate() {
        let found = graph.layer_around(softmax).with_context(|| format!("layer {index} is not a BERT layer"))?;
        if let Some(previous) = layers.last().map(|l: &FoundLayer| l.output) {
            ensure!(found.input == previous, "layer {index} does not take the previous layer's output");
        }
        layers.push(found);
    }
    Ok(layers)
}

/// `weight` with its axes in `order`, the last one as columns.
fn as_matrix<T: Datum + Copy>(weight: ArrayViewD<T>, order: &[usize]) -> TractResult<Array2<T>> {
    let view = weight.permuted_axes(IxDyn(order));
    let columns = *view.shape().last().context("a weight without axes")?;
    let rows = view.len() / columns.max(1);
    Ok(view.as_standard_layout().into_owned().into_shape_with_order((rows, columns))?)
}

/// A rank-1 f32 tensor's values.
fn vector(tensor: &Tensor) -> TractResult<Array1<f32>> {
    ensure!(tensor.rank() == 1, "factors of rank {}", tensor.rank());
    Ok(tensor.to_plain_array_view::<f32>()?.iter().copied().collect())
}

struct Graph<'a> {
    model: &'a TypedModel,
}

/// A weight product found by walking back from one of its uses.
struct Projection {
    input: OutletId,
    weight: Weight,
    bias: Array1<f32>,
    /// Scalar factors met on the way (the attention's score scaling).
    scale: f32,
}

/// A weight and its bias.
type Weighted = (Weight, Array1<f32>);

/// A weight product: its activation input, its weight, and the outlet of
/// its result (before any bias).
struct WeightProduct {
    input: OutletId,
    weight: Weight,
    result: OutletId,
}

impl Graph<'_> {
    fn layer_around(&self, softmax: usize) -> TractResult<FoundLayer> {
        let scores = self.model.node(softmax).inputs[0];
        let (product, _mask) = self.scores_product(scores)?;
        let [query, key] = self.model.node(product).inputs.as_slice() else { bail!("query–key product inputs") };
        let (query, key) = (self.projection(*query)?, self.projection(*key)?);
        ensure!(query.input == key.input, "query and key of different inputs");
        let score_scale = query.scale * key.scale * self.scale_after(product, scores)?;
        let weighted = self.value_product(softmax)?;
        let value_input = self.model.node(weighted).inputs.iter().copied().find(|i| !self.leads_to_softmax(*i));
        let value = self.projection(value_input.context("no value input")?)?;
        ensure!(value.input == query.input && value.scale == 1.0, "value projection of another input");
        let (attention_output, attention_residual) = self.output_product(weighted, query.input)?;
        let (attention_norm, first) = self.layer_norm(attention_residual)?;
        let (intermediate, activated) = self.product_after(first, "the feed-forward input")?;
        let gelu = self.single_successor(activated)?;
        ensure!(self.unary_name(gelu).as_deref() == Some("GeluExact"), "no exact GELU after the first feed-forward");
        let (output, output_residual) = self.output_product(gelu, first)?;
        let (output_norm, last) = self.layer_norm(output_residual)?;
        let heads = self.heads(scores)?;
        let input = query.input;
        let weights = LayerWeights {
            heads,
            score_scale,
            products: [
                (query.weight, query.bias),
                (key.weight, key.bias),
                (value.weight, value.bias),
                attention_output,
                intermediate,
                output,
            ],
            attention_norm,
            output_norm,
        };
        Ok(FoundLayer { input, output: last, weights })
    }

    /// The query–key product behind the softmax's input (through the mask's
    /// sum and scalar factors), and the mask's outlet.
    fn scores_product(&self, scores: OutletId) -> TractResult<(usize, OutletId)> {
        let add = scores.node;
        ensure!(self.binary_name(add).as_deref() == Some("Add"), "the softmax input is not a masked sum");
        for (side, other) in [(0, 1), (1, 0)] {
            let inputs = &self.model.node(add).inputs;
            if let Some(product) = self.through_scalings(inputs[side]).filter(|&n| self.is::<EinSum>(n)) {
                return Ok((product, inputs[other]));
            }
        }
        bail!("no query–key product before the softmax")
    }

    /// Scalar factors between the query–key product and the mask's sum.
    fn scale_after(&self, product: usize, scores: OutletId) -> TractResult<f32> {
        let mut scale = 1.0;
        let mut outlet = OutletId::new(product, 0);
        while let Some(next) = self.model.outlet_successors(outlet).first().map(|s| s.node) {
            if next == scores.node {
                break;
            }
            scale *= self.scalar_factor(next).context("an operator between scores and mask")?;
            outlet = OutletId::new(next, 0);
        }
        Ok(scale)
    }

    /// The node an outlet comes from once reshapes and scalar factors are
    /// passed.
    fn through_scalings(&self, mut outlet: OutletId) -> Option<usize> {
        loop {
            let node = outlet.node;
            if self.is::<AxisOp>(node) || self.scalar_factor(node).is_some() {
                outlet = *self.non_constant_inputs(node).first()?;
            } else {
                return Some(node);
            }
        }
    }

    /// Walks back from a use of a projection: reshapes, scalar factors, the
    /// bias sum, then the product with a constant weight.
    fn projection(&self, mut outlet: OutletId) -> TractResult<Projection> {
        let mut scale = 1.0;
        let mut bias = None;
        loop {
            let node = outlet.node;
            if self.is::<AxisOp>(node) {
                outlet = self.model.node(node).inputs[0];
            } else if let Some(factor) = self.scalar_factor(node) {
                scale *= factor;
                outlet = self.non_constant_inputs(node)[0];
            } else if let Some(b) = self.bias_of(node) {
                ensure!(bias.is_none(), "two bias sums on one projection");
                bias = Some(b);
                outlet = self.non_constant_inputs(node)[0];
            } else if self.is::<EinSum>(node) || self.is::<ScaleProduct>(node) {
                let product = if self.is::<ScaleProduct>(node) { self.model.node(node).inputs[0].node } else { node };
                let WeightProduct { input, weight, .. } = self.weight_product(product)?;
                let outputs = weight.dim().1;
                let bias = bias.unwrap_or_else(|| Array1::zeros(outputs));
                ensure!(bias.len() == outputs, "bias of {} for {outputs} outputs", bias.len());
                return Ok(Projection { input, weight, bias, scale });
            } else {
                bail!("unexpected {} on a projection", self.model.node(node).op().name());
            }
        }
    }

    /// A product with a constant weight, the weight as `[in, out]`: the
    /// weight's contracted axes, in the activation's order, flatten into
    /// rows. An int8 product's input is its `QuantizeRows`' input and its
    /// result the `ScaleProduct` after it.
    fn weight_product(&self, node: usize) -> TractResult<WeightProduct> {
        let einsum = self.model.node(node).op_as::<EinSum>().context("not a product")?;
        ensure!(einsum.q_params.is_none(), "a product with tract's own quantisation");
        let inputs = &self.model.node(node).inputs;
        ensure!(inputs.len() == 2, "a product of {} inputs", inputs.len());
        let (x_slot, w_slot) = match (self.konst(inputs[0]), self.konst(inputs[1])) {
            (None, Some(_)) => (0, 1),
            (Some(_), None) => (1, 0),
            _ => bail!("a product without exactly one constant weight"),
        };
        let weight = self.konst(inputs[w_slot]).expect("checked above");
        let order = self.weight_axes(einsum, x_slot, w_slot)?;
        let result = OutletId::new(node, 0);
        if einsum.operating_dt == f32::datum_type() {
            let matrix = as_matrix(weight.to_plain_array_view::<f32>()?, &order)?;
            return Ok(WeightProduct { input: inputs[x_slot], weight: Weight::F32(matrix), result });
        }
        ensure!(einsum.operating_dt == i32::datum_type(), "a product in {:?}", einsum.operating_dt);
        let levels = as_matrix(weight.to_plain_array_view::<i8>()?, &order)?;
        let quantise = self.model.node(inputs[x_slot].node);
        let unsmooth = &quantise.op_as::<QuantizeRows>().context("an int8 product without QuantizeRows")?.unsmooth;
        let scaled = self.single_successor(result)?;
        let scale = self.model.node(scaled);
        let column_scales =
            &scale.op_as::<ScaleProduct>().context("an int8 product without ScaleProduct")?.column_scales;
        ensure!(scale.inputs == [result, OutletId::new(quantise.id, 1)], "ScaleProduct of other steps");
        let int8 = Int8Weight { column_scales: vector(column_scales)?, unsmooth: vector(unsmooth)?, levels };
        ensure!(
            int8.unsmooth.len() == int8.levels.nrows() && int8.column_scales.len() == int8.levels.ncols(),
            "int8 factors of other sizes than the weight"
        );
        Ok(WeightProduct { input: quantise.inputs[0], weight: Weight::Int8(int8), result: OutletId::new(scaled, 0) })
    }

    /// The order of the weight's axes that puts the contracted ones first
    /// (in the activation's order) and the one output axis last.
    fn weight_axes(&self, einsum: &EinSum, x_slot: usize, w_slot: usize) -> TractResult<Vec<usize>> {
        let expression = einsum.axes.to_string();
        let (operands, output) = expression.split_once("->").context("axes without ->")?;
        let operands: Vec<&str> = operands.split(',').collect();
        ensure!(operands.len() == 2, "axes {expression}");
        let (x_axes, w_axes) = (operands[x_slot], operands[w_slot]);
        let contracted: Vec<char> = x_axes.chars().filter(|c| w_axes.contains(*c) && !output.contains(*c)).collect();
        let outputs: Vec<char> = w_axes.chars().filter(|c| output.contains(*c) && !x_axes.contains(*c)).collect();
        ensure!(
            contracted.len() + outputs.len() == w_axes.len() && outputs.len() == 1,
            "weight axes {w_axes} in {expression}"
        );
        let position = |c: char| w_axes.chars().position(|a| a == c).expect("a weight axis");
        Ok(contracted.iter().chain(&outputs).map(|&c| position(c)).collect())
    }

    /// The product that weights the values by the softmax's output (through
    /// the NaN guard).
    fn value_product(&self, softmax: usize) -> TractResult<usize> {
        let mut frontier = vec![OutletId::new(softmax, 0)];
        while let Some(outlet) = frontier.pop() {
            for successor in self.model.outlet_successors(outlet) {
                let node = successor.node;
                if self.is::<EinSum>(node) {
                    return Ok(node);
                }
                if self.is::<Iff>(node) || self.unary_name(node).as_deref() == Some("IsNan") {
                    frontier.push(OutletId::new(node, 0));
                }
            }
        }
        bail!("no value product after the softmax")
    }

    fn leads_to_softmax(&self, outlet: OutletId) -> bool {
        let node = outlet.node;
        self.is::<Softmax>(node)
            || ((self.is::<Iff>(node) || self.unary_name(node).is_some())
                && self.non_constant_inputs(node).iter().any(|i| self.leads_to_softmax(*i)))
    }

    /// From `after` (reshapes allowed): a product with a constant weight,
    /// its bias sum and the residual sum with `residual`.
    fn output_product(&self, after: usize, residual: OutletId) -> TractResult<(Weighted, OutletId)> {
        let (dense, summed) = self.product_after(OutletId::new(after, 0), "an output product")?;
        let sum = self.single_successor(summed)?;
        ensure!(self.binary_name(sum).as_deref() == Some("Add"), "no residual sum");
        ensure!(self.model.node(sum).inputs.contains(&residual), "the residual sum adds another input");
        Ok((dense, OutletId::new(sum, 0)))
    }

    /// The product with a constant weight fed by `outlet` (reshapes
    /// allowed) and its bias sum: the dense layer and the bias sum's outlet.
    fn product_after(&self, mut outlet: OutletId, what: &str) -> TractResult<(Weighted, OutletId)> {
        let product = loop {
            let mut products: Vec<WeightProduct> =
                self.products_of(outlet).into_iter().filter_map(|node| self.weight_product(node).ok()).collect();
            if products.len() == 1 {
                break products.pop().expect("one product");
            }
            let next = self.single_successor(outlet).with_context(|| format!("no {what}"))?;
            ensure!(self.is::<AxisOp>(next), "no {what}");
            outlet = OutletId::new(next, 0);
        };
        let after = product.result;
        match self.single_successor(after).ok().and_then(|n| self.bias_of(n).map(|b| (n, b))) {
            Some((sum, bias)) => Ok(((product.weight, bias), OutletId::new(sum, 0))),
            None => {
                let bias = Array1::zeros(product.weight.dim().1);
                Ok(((product.weight, bias), after))
            }
        }
    }

    /// The products fed by `outlet`: directly, or through a `QuantizeRows`.
    fn products_of(&self, outlet: OutletId) -> Vec<usize> {
        let successors = |outlet| self.model.outlet_successors(outlet).iter().map(|s| s.node);
        let quantised = successors(outlet).filter(|&n| self.is::<QuantizeRows>(n));
        let through_quantisation: Vec<usize> = quantised.flat_map(|n| successors(OutletId::new(n, 0))).collect();
        successors(outlet).chain(through_quantisation).filter(|&n| self.is::<EinSum>(n)).collect()
    }

    /// A layer norm as tract writes it (mean, difference, RmsNorm, scale,
    /// shift) from `input`; its parameters and output.
    fn layer_norm(&self, input: OutletId) -> TractResult<(Norm, OutletId)> {
        let normalised = self
            .model
            .outlet_successors(input)
            .iter()
            .flat_map(|s| self.model.outlet_successors(OutletId::new(s.node, 0)))
            .map(|s| s.node)
            .find(|&n| self.is::<RmsNorm>(n))
            .context("no layer norm after the residual sum")?;
        let epsilon =
            self.model.node(normalised).op_as::<RmsNorm>().expect("found above").eps.cast_to_scalar::<f32>()?;
        let scaled = self.single_successor(OutletId::new(normalised, 0))?;
        let gamma = self.constant_operand(scaled, "Mul").context("no layer-norm scale")?;
        let shifted = self.single_successor(OutletId::new(scaled, 0))?;
        let beta = self.constant_operand(shifted, "Add").context("no layer-norm shift")?;
        Ok((Norm { gamma, beta, epsilon }, OutletId::new(shifted, 0)))
    }

    /// Heads: the axis between batch and positions in rank-4 scores.
    fn heads(&self, scores: OutletId) -> TractResult<usize> {
        let shape = &self.model.outlet_fact(scores)?.shape;
        match shape.rank() {
            3 => Ok(1),
            4 => shape[1].to_usize().context("a symbolic number of heads"),
            rank => bail!("rank-{rank} attention scores"),
        }
    }

    fn is<O: Op>(&self, node: usize) -> bool {
        self.model.node(node).op_as::<O>().is_some()
    }

    fn binary_name(&self, node: usize) -> Option<String> {
        self.model.node(node).op_as::<TypedBinOp>().map(|b| b.0.name().to_string())
    }

    fn unary_name(&self, node: usize) -> Option<String> {
        self.model.node(node).op_as::<ElementWiseOp>().map(|e| e.0.name())
    }

    fn konst(&self, outlet: OutletId) -> Option<Arc<Tensor>> {
        self.model.outlet_fact(outlet).ok()?.konst.clone()
    }

    fn non_constant_inputs(&self, node: usize) -> Vec<OutletId> {
        self.model.node(node).inputs.iter().copied().filter(|i| self.konst(*i).is_none()).collect()
    }

    /// The one constant operand of a binary `op` node, flattened.
    fn constant_operand(&self, node: usize, op: &str) -> Option<Array1<f32>> {
        if self.binary_name(node).as_deref() != Some(op) {
            return None;
        }
        let constants: Vec<Arc<Tensor>> = self.model.node(node).inputs.iter().filter_map(|i| self.konst(*i)).collect();
        let [value] = constants.as_slice() else { return None };
        let view = value.to_plain_array_view::<f32>().ok()?;
        Some(view.iter().copied().collect())
    }

    /// The factor of a multiplication by a one-value constant.
    fn scalar_factor(&self, node: usize) -> Option<f32> {
        self.constant_operand(node, "Mul").filter(|v| v.len() == 1).map(|v| v[0])
    }

    /// The vector of a sum with a constant of more than one value.
    fn bias_of(&self, node: usize) -> Option<Array1<f32>> {
        self.constant_operand(node, "Add").filter(|v| v.len() > 1)
    }

    fn single_successor(&self, outlet: OutletId) -> TractResult<usize> {
        match self.model.outlet_successors(outlet) {
            [one] => Ok(one.node),
            many => bail!("{} uses where one was expected", many.len()),
        }
    }
}

#[cfg(all(test, feature = "onnx"))]
mod tests {
    use std::path::Path;

    use ndarray::{ArrayView2, Axis};

    use super::*;
    use crate::encoder::Encoder;
    use crate::encoder::engine::{passes as tract_passes, tract as tract_engine};
    use crate::model::ModelManifest;
    use crate::model::tests::default_model;
    use crate::transformer::InferenceLayer;

    fn mean_pooled(rows: ArrayView2<f32>) -> Vec<f32> {
        let mean = rows.mean_axis(Axis(0)).expect("a token");
        let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt();
        mean.iter().map(|v| v / norm).collect()
    }

    fn prepared(manifest: &ModelManifest) -> TypedModel {
        let mut model = tract_engine::import_onnx(manifest).unwrap();
        tract_passes::prepare(&mut model).unwrap();
        model
    }

    #[test]
    fn the_default_models_layers_are_found_with_their_weights() {
        let Some(dir) = default_model() else { return };
        let manifest = ModelManifest::load(&dir).unwrap();
        let layers = find_layers(&prepared(&manifest)).unwrap();
        assert_eq!(layers.len(), 6);
        for found in &layers {
            let layer = found.weights.clone().into_layer().expect("f32 products");
            let layer = &layer;
            assert_eq!(layer.heads, 12);
            assert!((layer.score_scale - 1.0 / 32f32.sqrt()).abs() < 1e-6, "{}", layer.score_scale);
            assert_eq!(layer.query.weight.dim(), (384, 384));
            assert_eq!(layer.attention_output.weight.dim(), (384, 384));
            assert_eq!(layer.intermediate.weight.dim(), (384, 1536));
            assert_eq!(layer.output.weight.dim(), (1536, 384));
            assert!(layer.attention_norm.epsilon > 0.0 && layer.attention_norm.epsilon < 1e-4);
        }
    }

    #[test]
    fn the_top_layers_in_our_code_agree_with_tracts_full_forward() {
        if let Some(dir) = default_model() {
            let lowest = lowest_cosine_of_split(&dir, 2);
            eprintln!("default model, trunk + our top 2 layers against tract's full forward: lowest cosine {lowest}");
            assert!(lowest >= 0.9999, "lowest cosine {lowest}");
        }
        // One single-head layer without query, key or value biases.
        let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny");
        let lowest = lowest_cosine_of_split(&tiny, 1);
        assert!(lowest >= 0.9999, "tiny model: lowest cosine {lowest}");
    }

    /// The encoder's trunk states (all but the top `top` layers) through
    /// the top layers in our code, mean-pooled, against the vectors of
    /// tract's plan of the whole graph: the lowest cosine over the
    /// project's 265 sentences, through the layers as training runs them
    /// and as prediction does (packed).
    fn lowest_cosine_of_split(dir: &Path, top: usize) -> f32 {
        let options = crate::EncoderOptions::default();
        let encoder = crate::OnnxEncoder::load(dir, &options).unwrap();
        let tract_plan = |manifest: &ModelManifest| -> crate::Result<Box<dyn crate::encoder::Engine>> {
            Ok(Box::new(tract_engine::TractEngine::load(manifest, options.threads)?))
        };
        let whole_graph = crate::OnnxEncoder::load_with(dir, &options, tract_plan).unwrap();
        let sentences: Vec<&str> = include_str!("../../../../tests/data/sentences.txt").lines().collect();
        assert_eq!(sentences.len(), 265);
        let expected = whole_graph.embed(&sentences).unwrap();
        let layers = encoder.top_layers(top).unwrap().layers;
        assert_eq!(layers.len(), top);
        let packed: Vec<InferenceLayer> = layers.iter().map(InferenceLayer::of).collect();
        let states = encoder.trunk_states(&sentences, top, &crate::SILENT).unwrap();
        let mut lowest = 1.0f32;
        for (text_states, theirs) in states.iter().zip(expected.rows()) {
            let shape = (text_states.tokens, text_states.width);
            let hidden_in = ndarray::Array2::from_shape_vec(shape, text_states.values.clone()).unwrap();
            let (mut hidden, mut hidden_packed) = (hidden_in.clone(), hidden_in);
            let lengths = [hidden.nrows()];
            for (layer, packed) in layers.iter().zip(&packed) {
                hidden = layer.forward(hidden.view(), &lengths);
                hidden_packed = packed.forward(hidden_packed.view(), &lengths);
            }
            for ours in [hidden, hidden_packed] {
                let cosine: f32 = mean_pooled(ours.view()).iter().zip(theirs).map(|(a, b)| a * b).sum();
                lowest = lowest.min(cosine);
            }
        }
        lowest
    }
}

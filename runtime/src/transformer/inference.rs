//! A transformer layer that only runs forward, on weights packed once for
//! the CPU's matrix kernels (f32 or int8 products): the encoder's own
//! forward and an adapted head's top layers at prediction. Element-wise
//! work is done in place and nothing is kept for a backward pass.

use ndarray::{Array1, Array2, ArrayView2};

use super::products::{Projection, Weight};
use super::{Heads, Layer, Norm, gelu_in_place};

/// A layer's weights as a model stores them: each of its six products
/// (query, key, value, attention output, intermediate, output) f32 or
/// int8, with its bias.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub heads: usize,
    pub score_scale: f32,
    pub products: [(Weight, Array1<f32>); 6],
    pub attention_norm: Norm,
    pub output_norm: Norm,
}

impl LayerWeights {
    /// The layer in the form training takes, when every product is f32.
    pub fn into_layer(self) -> Option<Layer> {
        let [query, key, value, attention_output, intermediate, output] =
            self.products.map(|(weight, bias)| match weight {
                Weight::F32(weight) => Some(super::Dense { weight, bias }),
                Weight::Int8(_) => None,
            });
        Some(Layer {
            heads: self.heads,
            score_scale: self.score_scale,
            query: query?,
            key: key?,
            value: value?,
            attention_output: attention_output?,
            attention_norm: self.attention_norm,
            intermediate: intermediate?,
            output: output?,
            output_norm: self.output_norm,
        })
    }
}

#[derive(Debug)]
pub struct InferenceLayer {
    heads: usize,
    score_scale: f32,
    products: [Projection; 6],
    attention_norm: Norm,
    output_norm: Norm,
}

impl InferenceLayer {
    pub fn new(weights: &LayerWeights) -> Self {
        Self {
            heads: weights.heads,
            score_scale: weights.score_scale,
            products: weights.products.each_ref().map(|(weight, bias)| Projection::new(weight, bias)),
            attention_norm: weights.attention_norm.clone(),
            output_norm: weights.output_norm.clone(),
        }
    }

    /// `layer`, packed (its weights are copied into the kernels' layout).
    pub fn of(layer: &Layer) -> Self {
        Self {
            heads: layer.heads,
            score_scale: layer.score_scale,
            products: layer.products().map(|dense| Projection::f32(&dense.weight, &dense.bias)),
            attention_norm: layer.attention_norm.clone(),
            output_norm: layer.output_norm.clone(),
        }
    }

    /// The layer's output for a batch's token states (`[tokens, width]`,
    /// texts one after another, `lengths` tokens each).
    pub fn forward(&self, states: ArrayView2<f32>, lengths: &[usize]) -> Array2<f32> {
        assert_eq!(lengths.iter().sum::<usize>(), states.nrows(), "the texts' lengths cover the batch");
        let [query, key, value, attention_output, intermediate, output] = &self.products;
        let (q, k, v) = (query.apply(states), key.apply(states), value.apply(states));
        let heads =
            Heads { count: self.heads, width: query.dim().1 / self.heads.max(1), score_scale: self.score_scale };
        let (attended, _) = heads.attend(lengths, [&q, &k, &v], false);
        let mut first = attention_output.apply(attended.view());
        first += &states;
        self.attention_norm.apply_in_place(&mut first);
        let mut inner = intermediate.apply(first.view());
        gelu_in_place(&mut inner);
        let mut second = output.apply(inner.view());
        second += &first;
        self.output_norm.apply_in_place(&mut second);
        second
    }

    /// The kernel each product runs on (`None`: ndarray's product).
    pub fn kernels(&self) -> impl Iterator<Item = Option<&str>> {
        self.products.iter().map(Projection::kernel)
    }
}

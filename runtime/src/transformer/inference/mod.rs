//! A transformer layer that only runs forward, on weights packed once for
//! the CPU's matrix kernels (f32 or int8 products): the encoder's own
//! forward and an adapted head's top layers at prediction. Element-wise
//! work is done in place and nothing is kept for a backward pass. Its
//! products (`products`), row quantisation for int8 (`quantise`), and one
//! text's layers split by tokens over two threads (`split`).

mod products;
#[cfg(feature = "tract")]
mod quantise;
mod split;

use std::ops::Range;

use ndarray::{Array1, Array2, ArrayView2};

#[cfg(feature = "tract")]
pub use products::Int8Weight;
use products::Projection;
pub use products::Weight;
#[cfg(feature = "tract")]
pub(crate) use quantise::{quantise_rows, scale_sums};
pub use split::forward_layers;

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
    /// The width of the token states the layer takes and returns.
    pub fn width(&self) -> usize {
        self.products[0].0.dim().0
    }

    /// Why these weights do not make a layer, if they do not: products
    /// that do not chain, biases or norms of other widths, heads that do
    /// not divide the attention width (a damaged graph can hold any of
    /// them; the layer's code asserts its shapes).
    pub fn shape_error(&self) -> Option<String> {
        let dims = self.products.each_ref().map(|(weight, _)| weight.dim());
        let (width, inner, hidden) = (dims[0].0, dims[0].1, dims[4].1);
        let chained =
            [(width, inner), (width, inner), (width, inner), (inner, width), (width, hidden), (hidden, width)];
        if dims != chained {
            return Some(format!("weight products of shapes {dims:?} do not chain"));
        }
        if let Some((weight, bias)) = self.products.iter().find(|(weight, bias)| bias.len() != weight.dim().1) {
            return Some(format!("a bias of {} values for {} outputs", bias.len(), weight.dim().1));
        }
        let norms = [&self.attention_norm, &self.output_norm];
        if norms.iter().any(|norm| norm.gamma.len() != width || norm.beta.len() != width) {
            return Some(format!("a layer norm of another width than {width}"));
        }
        if self.heads == 0 || inner % self.heads != 0 {
            return Some(format!("{} heads for an attention width of {inner}", self.heads));
        }
        None
    }

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
        let [query, key, value] = self.project(states);
        self.finish(states, &query, [key.view(), value.view()], lengths, 0..states.nrows())
    }

    /// The queries, keys and values of `states`' tokens.
    pub(super) fn project(&self, states: ArrayView2<f32>) -> [Array2<f32>; 3] {
        let [query, key, value, ..] = &self.products;
        [query, key, value].map(|product| product.apply(states))
    }

    /// The layer's output for the batch's rows `rows`, given their states
    /// and queries and every row's keys and values (the batch's texts are
    /// `lengths` tokens long).
    pub(super) fn finish(
        &self,
        states: ArrayView2<f32>,
        query: &Array2<f32>,
        [key, value]: [ArrayView2<f32>; 2],
        lengths: &[usize],
        rows: Range<usize>,
    ) -> Array2<f32> {
        let [_, _, _, attention_output, intermediate, output] = &self.products;
        let heads =
            Heads { count: self.heads, width: query.ncols() / self.heads.max(1), score_scale: self.score_scale };
        let (attended, _) = heads.attend_rows(lengths, rows, [query.view(), key, value], false);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn weights(width: usize, hidden: usize) -> LayerWeights {
        let product = |k, m| (Weight::F32(Array2::zeros((k, m))), Array1::zeros(m));
        let norm = Norm { gamma: Array1::ones(width), beta: Array1::zeros(width), epsilon: 1e-12 };
        LayerWeights {
            heads: 2,
            score_scale: 0.5,
            products: [
                product(width, width),
                product(width, width),
                product(width, width),
                product(width, width),
                product(width, hidden),
                product(hidden, width),
            ],
            attention_norm: norm.clone(),
            output_norm: norm,
        }
    }

    #[test]
    fn weights_that_do_not_make_a_layer_are_named() {
        assert_eq!(weights(4, 8).shape_error(), None);
        let mut short_bias = weights(4, 8);
        short_bias.products[4].1 = Array1::zeros(7);
        assert!(short_bias.shape_error().unwrap().contains("bias"));
        let mut unchained = weights(4, 8);
        unchained.products[5] = (Weight::F32(Array2::zeros((6, 4))), Array1::zeros(4));
        assert!(unchained.shape_error().unwrap().contains("chain"));
        let mut odd_heads = weights(4, 8);
        odd_heads.heads = 3;
        assert!(odd_heads.shape_error().unwrap().contains("heads"));
        let mut narrow_norm = weights(4, 8);
        narrow_norm.output_norm.beta = Array1::zeros(3);
        assert!(narrow_norm.shape_error().unwrap().contains("norm"));
    }
}

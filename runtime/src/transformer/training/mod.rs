//! Training's side of a layer: the forward pass that keeps what the
//! backward pass needs (`Trace`), and the backward pass (`backward`).

mod backward;

use ndarray::{Array2, ArrayView2};

use super::{Layer, Normalised, normal_cdf};

/// Everything a forward pass computed that its backward pass needs.
#[derive(Debug, Clone)]
pub struct Trace {
    pub(in crate::transformer) lengths: Vec<usize>,
    pub(in crate::transformer) input: Array2<f32>,
    pub(in crate::transformer) query: Array2<f32>,
    pub(in crate::transformer) key: Array2<f32>,
    pub(in crate::transformer) value: Array2<f32>,
    /// Per text and head (text-major), `[tokens, tokens]`.
    pub(in crate::transformer) probabilities: Vec<Array2<f32>>,
    pub(in crate::transformer) attended: Array2<f32>,
    pub(in crate::transformer) first: Normalised,
    /// The first feed-forward product before GELU, Φ of it, and after GELU.
    pub(in crate::transformer) inner_before: Array2<f32>,
    pub(in crate::transformer) cdf: Array2<f32>,
    pub(in crate::transformer) inner: Array2<f32>,
    pub(in crate::transformer) second: Normalised,
}

impl Trace {
    /// The layer's output, `[tokens, width]`.
    pub fn output(&self) -> &Array2<f32> {
        &self.second.output
    }
}

impl Layer {
    /// The layer's output for a batch's token states (`[tokens, width]`,
    /// texts one after another, `lengths` tokens each).
    pub fn forward(&self, states: ArrayView2<f32>, lengths: &[usize]) -> Array2<f32> {
        self.trace(states, lengths).second.output
    }

    /// The forward pass, keeping what `backward` needs.
    pub fn trace(&self, states: ArrayView2<f32>, lengths: &[usize]) -> Trace {
        assert_eq!(lengths.iter().sum::<usize>(), states.nrows(), "the texts' lengths cover the batch");
        let dense = |which: usize, x: ArrayView2<f32>| {
            let product = self.products()[which];
            x.dot(&product.weight) + &product.bias
        };
        let (query, key, value) = (dense(0, states), dense(1, states), dense(2, states));
        let (attended, probabilities) = self.attention_heads().attend(lengths, [&query, &key, &value], true);
        let first = self.attention_norm.apply(&states + &dense(3, attended.view()));
        let inner_before = dense(4, first.output.view());
        let cdf = inner_before.mapv(normal_cdf);
        let inner = &inner_before * &cdf;
        let second = self.output_norm.apply(&first.output + &dense(5, inner.view()));
        Trace {
            lengths: lengths.to_vec(),
            input: states.to_owned(),
            query,
            key,
            value,
            probabilities,
            attended,
            first,
            inner_before,
            cdf,
            inner,
            second,
        }
    }
}

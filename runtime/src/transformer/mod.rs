//! A BERT transformer layer in Attune's own code: its weights and the
//! attention and numerics both sides share here; `inference/` runs layers
//! forward on packed weights (the native engine, adapted heads at
//! prediction); `training/` keeps a forward pass's trace and computes its
//! gradients (adapting the top layers). A batch is
//! its texts' real tokens one after another (`[tokens, width]`, with each
//! text's token count): padding never influences a real token's state, so
//! leaving it out changes nothing, and the per-token products run on the
//! whole batch at once while attention stays within each text.

#[cfg(test)]
mod fixtures;
// Layers read from a graph (f32 or int8 weights) exist for the tract
// engine; builds without tract run only adapted heads' f32 layers.
#[cfg_attr(not(feature = "tract"), allow(dead_code))]
mod inference;
mod training;

use std::ops::Range;

use ndarray::{Array1, Array2, ArrayView2, Axis, Slice};

pub use inference::{InferenceLayer, forward_layers};
#[cfg(feature = "tract")]
pub use inference::{Int8Weight, LayerWeights, Weight};
#[cfg(feature = "tract")]
pub(crate) use inference::{quantise_rows, scale_sums};
pub use training::Trace;

/// `x · weight + bias`, `weight` of shape `[in, out]`.
#[derive(Debug, Clone)]
pub struct Dense {
    pub weight: Array2<f32>,
    pub bias: Array1<f32>,
}

/// Layer normalisation over each token's width.
#[derive(Debug, Clone)]
pub struct Norm {
    pub gamma: Array1<f32>,
    pub beta: Array1<f32>,
    pub epsilon: f32,
}

/// A layer norm's output and what its gradient needs.
#[derive(Debug, Clone)]
pub struct Normalised {
    /// (x − mean) / std, before the scale and shift.
    standardised: Array2<f32>,
    inverse_std: Array1<f32>,
    output: Array2<f32>,
}

impl Norm {
    fn apply(&self, x: Array2<f32>) -> Normalised {
        let mut standardised = x;
        let inverse_std = self.standardise(&mut standardised);
        let output = &standardised * &self.gamma + &self.beta;
        Normalised { standardised, inverse_std, output }
    }

    /// As `apply`, keeping only the output (in `x`).
    fn apply_in_place(&self, x: &mut Array2<f32>) {
        self.standardise(x);
        *x *= &self.gamma;
        *x += &self.beta;
    }

    /// Each row of `x` to (x − mean) / std; returns each row's 1 / std.
    fn standardise(&self, x: &mut Array2<f32>) -> Array1<f32> {
        let mut inverse_std = Array1::zeros(x.nrows());
        for (mut row, inverse) in x.rows_mut().into_iter().zip(inverse_std.iter_mut()) {
            let mean = row.mean().unwrap_or(0.0);
            row -= mean;
            let variance = row.iter().map(|v| v * v).sum::<f32>() / row.len().max(1) as f32;
            *inverse = 1.0 / (variance + self.epsilon).sqrt();
            row *= *inverse;
        }
        inverse_std
    }
}

/// Self-attention (multi-head, scaled dot products), then the feed-forward
/// block with exact GELU, each followed by a residual sum and a layer norm.
#[derive(Debug, Clone)]
pub struct Layer {
    pub heads: usize,
    /// What each query–key dot product is multiplied by (1/√head width in BERT).
    pub score_scale: f32,
    pub query: Dense,
    pub key: Dense,
    pub value: Dense,
    pub attention_output: Dense,
    pub attention_norm: Norm,
    pub intermediate: Dense,
    pub output: Dense,
    pub output_norm: Norm,
}

impl Layer {
    /// The six weight products: query, key, value, attention output,
    /// intermediate, output.
    pub fn products(&self) -> [&Dense; 6] {
        [&self.query, &self.key, &self.value, &self.attention_output, &self.intermediate, &self.output]
    }

    pub fn products_mut(&mut self) -> [&mut Dense; 6] {
        let Layer { query, key, value, attention_output, intermediate, output, .. } = self;
        [query, key, value, attention_output, intermediate, output]
    }

    /// Every trainable tensor as a flat slice, in a fixed order, with
    /// whether weight decay applies to it (the matrices, not biases or
    /// norms).
    pub fn parameters_mut(&mut self) -> Vec<(&mut [f32], bool)> {
        let mut all = Vec::with_capacity(16);
        for dense in [&mut self.query, &mut self.key, &mut self.value, &mut self.attention_output] {
            all.push((dense.weight.as_slice_mut().expect("standard layout"), true));
            all.push((dense.bias.as_slice_mut().expect("standard layout"), false));
        }
        all.push((self.attention_norm.gamma.as_slice_mut().expect("standard layout"), false));
        all.push((self.attention_norm.beta.as_slice_mut().expect("standard layout"), false));
        for dense in [&mut self.intermediate, &mut self.output] {
            all.push((dense.weight.as_slice_mut().expect("standard layout"), true));
            all.push((dense.bias.as_slice_mut().expect("standard layout"), false));
        }
        all.push((self.output_norm.gamma.as_slice_mut().expect("standard layout"), false));
        all.push((self.output_norm.beta.as_slice_mut().expect("standard layout"), false));
        all
    }

    fn attention_heads(&self) -> Heads {
        Heads { count: self.heads, width: self.head_width(), score_scale: self.score_scale }
    }

    fn head_width(&self) -> usize {
        self.query.weight.ncols() / self.heads.max(1)
    }

    /// Each (text, head) block of a batch-wide matrix: its rows, its columns.
    fn blocks(&self, lengths: &[usize]) -> impl Iterator<Item = (Slice, Slice)> + use<> {
        blocks(self.heads, self.head_width(), lengths)
    }
}

/// Each (text, head) block of a batch-wide matrix: its rows, its columns.
fn blocks(heads: usize, head_width: usize, lengths: &[usize]) -> impl Iterator<Item = (Slice, Slice)> + use<> {
    let starts = lengths.iter().scan(0, |next, &len| Some((std::mem::replace(next, *next + len), len)));
    let texts: Vec<(usize, usize)> = starts.collect();
    texts.into_iter().flat_map(move |(start, len)| {
        (0..heads).map(move |h| (Slice::from(start..start + len), Slice::from(h * head_width..(h + 1) * head_width)))
    })
}

/// How a layer's attention splits into heads.
#[derive(Debug, Clone, Copy)]
struct Heads {
    count: usize,
    width: usize,
    /// What each query–key dot product is multiplied by.
    score_scale: f32,
}

impl Heads {
    /// Every head's attention within each text, concatenated back to
    /// `[tokens, width]`, and, when `keep_probabilities`, the attention
    /// probabilities per text and head (text-major).
    fn attend(
        self,
        lengths: &[usize],
        [query, key, value]: [&Array2<f32>; 3],
        keep_probabilities: bool,
    ) -> (Array2<f32>, Vec<Array2<f32>>) {
        self.attend_rows(lengths, 0..query.nrows(), [query.view(), key.view(), value.view()], keep_probabilities)
    }

    /// As `attend`, for the queries of the batch's rows `rows` only (what
    /// `query` holds) against every row's keys and values: the attention
    /// of one part of a batch whose layers run split by rows.
    fn attend_rows(
        self,
        lengths: &[usize],
        rows: Range<usize>,
        [query, key, value]: [ArrayView2<f32>; 3],
        keep_probabilities: bool,
    ) -> (Array2<f32>, Vec<Array2<f32>>) {
        let mut attended = Array2::zeros(query.raw_dim());
        let mut probabilities = Vec::with_capacity(if keep_probabilities { lengths.len() * self.count } else { 0 });
        for (text_rows, columns) in blocks(self.count, self.width, lengths) {
            let text = range_of(text_rows);
            let queries = text.start.max(rows.start)..text.end.min(rows.end);
            if queries.is_empty() {
                continue;
            }
            let own = Slice::from(queries.start - rows.start..queries.end - rows.start);
            let mut scores = block_of(query, own, columns).dot(&block_of(key, text_rows, columns).t());
            scores *= self.score_scale;
            softmax_rows(&mut scores);
            let weighted = scores.dot(&block_of(value, text_rows, columns));
            attended.slice_axis_mut(Axis(0), own).slice_axis_mut(Axis(1), columns).assign(&weighted);
            if keep_probabilities {
                probabilities.push(scores);
            }
        }
        (attended, probabilities)
    }
}

fn block_of(matrix: ArrayView2<'_, f32>, rows: Slice, columns: Slice) -> ArrayView2<'_, f32> {
    matrix.slice_axis_move(Axis(0), rows).slice_axis_move(Axis(1), columns)
}

/// The rows a block's slice (from `blocks`) stands for.
fn range_of(slice: Slice) -> Range<usize> {
    let end = slice.end.expect("blocks are bounded");
    slice.start as usize..end as usize
}

/// GELU, x · Φ(x), in place: on tract-linalg's vectorised erf when the
/// build has it (the one tract's own GELU runs; 14 % of a forward went to
/// `mapv` over ours), else on ours.
fn gelu_in_place(x: &mut Array2<f32>) {
    #[cfg(feature = "tract")]
    if let (Some(values), Ok(erf)) = (x.as_slice_mut(), tract_linalg::routines::Func::Erf.ew_f32()) {
        const CHUNK: usize = 1024;
        let mut scaled = [0f32; CHUNK];
        for chunk in values.chunks_mut(CHUNK) {
            let scaled = &mut scaled[..chunk.len()];
            for (s, &v) in scaled.iter_mut().zip(chunk.iter()) {
                *s = v * std::f32::consts::FRAC_1_SQRT_2;
            }
            if erf.run(scaled).is_ok() {
                for (v, e) in chunk.iter_mut().zip(scaled.iter()) {
                    *v *= 0.5 * (1.0 + e);
                }
            } else {
                chunk.iter_mut().for_each(|v| *v *= normal_cdf(*v));
            }
        }
        return;
    }
    x.mapv_inplace(|v| v * normal_cdf(v));
}

fn softmax_rows(scores: &mut Array2<f32>) {
    for mut row in scores.axis_iter_mut(Axis(0)) {
        let largest = row.fold(f32::NEG_INFINITY, |m, &v| m.max(v));
        row.mapv_inplace(|v| (v - largest).exp());
        let total = row.sum();
        row /= total;
    }
}

/// Φ, the standard normal distribution function: GELU(x) = x · Φ(x), and
/// its slope Φ(x) + x · φ(x).
fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

/// φ, the standard normal density.
fn normal_density(x: f32) -> f32 {
    (-0.5 * x * x).exp() * (0.5 * std::f32::consts::FRAC_2_SQRT_PI * std::f32::consts::FRAC_1_SQRT_2)
}

/// The error function as x · P(x²) / Q(x²), x clamped to ±4 (beyond, erf
/// is ±1 in f32). The coefficients were fitted by weighted least squares to
/// f64 erf on [0, 4]; evaluated in f32 the result is within 4e-7 of it.
/// No branches, so loops over it vectorise, which libm's erff does not.
fn erf(x: f32) -> f32 {
    const P: [f32; 7] = [
        std::f32::consts::FRAC_2_SQRT_PI,
        0.184_642_18,
        0.054_329_578,
        0.003_837_558_2,
        3.828_986_4e-4,
        4.787_318e-6,
        -1.369_502_3e-8,
    ];
    const Q: [f32; 6] = [1.0, 0.496_968_42, 0.113_803_47, 0.015_450_255, 0.001_309_462_8, 6.407_477_5e-5];
    let x = x.clamp(-4.0, 4.0);
    let t = x * x;
    let horner = |coefficients: &[f32]| coefficients.iter().rev().fold(0.0, |sum, &c| sum * t + c);
    x * horner(&P) / horner(&Q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn identity_dense(width: usize) -> Dense {
        Dense { weight: Array2::eye(width), bias: Array1::zeros(width) }
    }

    #[test]
    fn the_normal_distribution_matches_known_values() {
        // Φ(1) = 0.841344746, Φ(-1) = 0.158655254, φ(0) = 1/√(2π).
        assert!((normal_cdf(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((normal_cdf(-1.0) - 0.158_655_3).abs() < 1e-6);
        assert_eq!(normal_cdf(0.0), 0.5);
        assert!((normal_density(0.0) - 0.398_942_3).abs() < 1e-7);
        assert_eq!((normal_cdf(-9.0), normal_cdf(9.0)), (0.0, 1.0));
    }

    #[test]
    fn erf_stays_within_4e_7_of_libm() {
        let worst = (-50_000..=50_000)
            .map(|i| i as f32 * 1e-4)
            .map(|x| (erf(x) as f64 - libm::erf(x as f64)).abs())
            .fold(0.0, f64::max);
        assert!(worst < 4e-7, "{worst}");
    }

    #[test]
    fn layer_norm_centres_and_scales_each_token() {
        let norm = Norm { gamma: array![1.0, 1.0, 1.0, 1.0], beta: array![0.0, 0.0, 0.0, 0.0], epsilon: 0.0 };
        let out = norm.apply(array![[1.0, 2.0, 3.0, 4.0]]).output;
        let expected = [-1.341_640_8, -0.447_213_6, 0.447_213_6, 1.341_640_8];
        assert!(out.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-5), "{out}");
    }

    fn small_layer() -> Layer {
        let width = 4;
        Layer {
            heads: 2,
            score_scale: 0.5,
            query: identity_dense(width),
            key: identity_dense(width),
            value: Dense { weight: Array2::eye(width) * 2.0, bias: Array1::ones(width) },
            attention_output: identity_dense(width),
            attention_norm: Norm { gamma: Array1::ones(width), beta: Array1::zeros(width), epsilon: 1e-12 },
            intermediate: identity_dense(width),
            output: identity_dense(width),
            output_norm: Norm { gamma: Array1::ones(width), beta: Array1::zeros(width), epsilon: 1e-12 },
        }
    }

    #[test]
    fn attention_with_one_token_returns_its_value() {
        let layer = small_layer();
        let states = array![[0.5, -1.0, 2.0, 0.0]];
        // A single token attends only to itself: its value, 2x + 1.
        let trace = layer.trace(states.view(), &[1]);
        assert_eq!(trace.attended, array![[2.0, -1.0, 5.0, 1.0]]);
    }

    #[test]
    fn a_layer_keeps_its_tokens_and_ends_in_a_layer_norm() {
        let states = array![[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, -3.0, 0.25], [0.0, 0.1, 0.2, 0.3]];
        let out = small_layer().forward(states.view(), &[3]);
        assert_eq!(out.dim(), (3, 4));
        for row in out.rows() {
            let mean = row.mean().unwrap();
            let variance = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / 4.0;
            assert!(mean.abs() < 1e-5 && (variance - 1.0).abs() < 1e-4, "{row}");
        }
    }
}

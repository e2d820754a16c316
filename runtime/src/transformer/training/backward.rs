//! Gradients of a layer's output with respect to its weights and its input,
//! from the forward pass's `Trace`: the chain rule through the layer's
//! blocks in reverse (output norm, feed-forward, attention norm, attention).

use ndarray::{Array1, Array2, ArrayView2, Axis};

use super::Trace;
use crate::transformer::{Dense, Layer, Norm, Normalised, normal_density};

impl Layer {
    /// The same layer with every weight zero: where gradients add up.
    pub fn zeros_like(&self) -> Layer {
        let dense = |d: &Dense| Dense { weight: Array2::zeros(d.weight.raw_dim()), bias: Array1::zeros(d.bias.len()) };
        let norm = |n: &Norm| Norm {
            gamma: Array1::zeros(n.gamma.len()),
            beta: Array1::zeros(n.beta.len()),
            epsilon: n.epsilon,
        };
        Layer {
            heads: self.heads,
            score_scale: self.score_scale,
            query: dense(&self.query),
            key: dense(&self.key),
            value: dense(&self.value),
            attention_output: dense(&self.attention_output),
            attention_norm: norm(&self.attention_norm),
            intermediate: dense(&self.intermediate),
            output: dense(&self.output),
            output_norm: norm(&self.output_norm),
        }
    }

    /// Adds `other`'s weights to this layer's (gradients of two batches).
    pub fn add(&mut self, mut other: Layer) {
        for ((sum, _), (part, _)) in self.parameters_mut().into_iter().zip(other.parameters_mut()) {
            sum.iter_mut().zip(part.iter()).for_each(|(s, p)| *s += p);
        }
    }

    /// Adds to `gradients` the gradient of a loss with respect to every
    /// weight, given the loss's gradient with respect to the layer's output
    /// (`d_output`, `[tokens, width]`); returns its gradient with respect to
    /// the layer's input. Gradients of several batches add up.
    pub fn backward(&self, trace: &Trace, d_output: ArrayView2<f32>, gradients: &mut Layer) -> Array2<f32> {
        let [d_residual, d_query, d_key, d_value] = self.backward_to_weights(trace, d_output, gradients);
        d_residual
            + d_query.dot(&self.query.weight.t())
            + d_key.dot(&self.key.weight.t())
            + d_value.dot(&self.value.weight.t())
    }

    /// `backward` without the input's gradient, for the lowest trained
    /// layer (its input is frozen); returns what the input's gradient is made
    /// of: the residual path's, and the query, key and value products'.
    pub fn backward_to_weights(
        &self,
        trace: &Trace,
        d_output: ArrayView2<f32>,
        gradients: &mut Layer,
    ) -> [Array2<f32>; 4] {
        let d_second = norm_backward(&self.output_norm, &trace.second, d_output, &mut gradients.output_norm);
        let mut d_inner = dense_backward(&self.output, &trace.inner.view(), &d_second.view(), &mut gradients.output);
        ndarray::Zip::from(&mut d_inner)
            .and(&trace.inner_before)
            .and(&trace.cdf)
            .for_each(|d, &x, &cdf| *d *= cdf + x * normal_density(x));
        let first = trace.first.output.view();
        let d_first =
            d_second + dense_backward(&self.intermediate, &first, &d_inner.view(), &mut gradients.intermediate);
        let d_residual =
            norm_backward(&self.attention_norm, &trace.first, d_first.view(), &mut gradients.attention_norm);
        let attended = trace.attended.view();
        let d_attended =
            dense_backward(&self.attention_output, &attended, &d_residual.view(), &mut gradients.attention_output);
        let (d_query, d_key, d_value) = self.attention_backward(trace, &d_attended);
        let input = trace.input.view();
        add_weight_gradient(&input, &d_query.view(), &mut gradients.query);
        add_weight_gradient(&input, &d_key.view(), &mut gradients.key);
        add_weight_gradient(&input, &d_value.view(), &mut gradients.value);
        [d_residual, d_query, d_key, d_value]
    }

    /// Per head: O = P·V with P = softmax(s·Q·Kᵀ), so dV = Pᵀ·dO, dP = dO·Vᵀ,
    /// dS = P ⊙ (dP − rowsum(dP ⊙ P)), dQ = s·dS·K, dK = s·dSᵀ·Q.
    fn attention_backward(&self, trace: &Trace, d_attended: &Array2<f32>) -> (Array2<f32>, Array2<f32>, Array2<f32>) {
        let mut gradients = [(); 3].map(|_| Array2::<f32>::zeros(trace.query.raw_dim()));
        for ((rows, columns), probabilities) in self.blocks(&trace.lengths).zip(&trace.probabilities) {
            let block = |m: &Array2<f32>| m.slice_axis(Axis(0), rows).slice_axis_move(Axis(1), columns).to_owned();
            let (query, key, value, d_out) =
                (block(&trace.query), block(&trace.key), block(&trace.value), block(d_attended));
            let d_probabilities = d_out.dot(&value.t());
            let row_sums = (&d_probabilities * probabilities).sum_axis(Axis(1)).insert_axis(Axis(1));
            let d_scores = probabilities * &(d_probabilities - &row_sums) * self.score_scale;
            let [d_query, d_key, d_value] = &mut gradients;
            let assign = |gradient: &mut Array2<f32>, value: Array2<f32>| {
                gradient.slice_axis_mut(Axis(0), rows).slice_axis_mut(Axis(1), columns).assign(&value);
            };
            assign(d_query, d_scores.dot(&key));
            assign(d_key, d_scores.t().dot(&query));
            assign(d_value, probabilities.t().dot(&d_out));
        }
        let [d_query, d_key, d_value] = gradients;
        (d_query, d_key, d_value)
    }
}

/// y = x·W + b: adds xᵀ·dy to W's gradient and Σ dy to b's; returns dy·Wᵀ.
fn dense_backward(dense: &Dense, x: &ArrayView2<f32>, dy: &ArrayView2<f32>, gradient: &mut Dense) -> Array2<f32> {
    add_weight_gradient(x, dy, gradient);
    dy.dot(&dense.weight.t())
}

fn add_weight_gradient(x: &ArrayView2<f32>, dy: &ArrayView2<f32>, gradient: &mut Dense) {
    ndarray::linalg::general_mat_mul(1.0, &x.t(), dy, 1.0, &mut gradient.weight);
    gradient.bias += &dy.sum_axis(Axis(0));
}

/// y = x̂·γ + β with x̂ = (x − mean)·r: adds Σ dy·x̂ to γ's gradient and Σ dy
/// to β's; returns dx = r/n · (n·dx̂ − Σ dx̂ − x̂·Σ(dx̂·x̂)) per token, dx̂ = dy·γ.
fn norm_backward(norm: &Norm, normalised: &Normalised, dy: ArrayView2<f32>, gradient: &mut Norm) -> Array2<f32> {
    let standardised = &normalised.standardised;
    gradient.gamma += &(&dy * standardised).sum_axis(Axis(0));
    gradient.beta += &dy.sum_axis(Axis(0));
    let mut dx = &dy * &norm.gamma;
    let n = dx.ncols() as f32;
    for ((mut row, x_hat), &inverse) in dx.rows_mut().into_iter().zip(standardised.rows()).zip(&normalised.inverse_std)
    {
        let sum = row.sum();
        let along = row.dot(&x_hat);
        row.zip_mut_with(&x_hat, |d, &x| *d = inverse / n * (n * *d - sum - x * along));
    }
    dx
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transformer::fixtures::{matrix, random_layer};

    /// The loss Σ output ⊙ weights: its gradient with respect to the output is `weights`.
    fn loss(layer: &Layer, input: &Array2<f32>, weights: &Array2<f32>) -> f32 {
        (layer.forward(input.view(), &[1, input.nrows() - 1]) * weights).sum()
    }

    /// Each parameter a test perturbs, by name.
    fn parameter<'a>(layer: &'a mut Layer, name: &str) -> &'a mut f32 {
        match name {
            "query.weight" => &mut layer.query.weight[[0, 1]],
            "key.weight" => &mut layer.key.weight[[2, 3]],
            "key.bias" => &mut layer.key.bias[2],
            "value.bias" => &mut layer.value.bias[1],
            "attention_output.weight" => &mut layer.attention_output.weight[[1, 0]],
            "attention_norm.gamma" => &mut layer.attention_norm.gamma[2],
            "attention_norm.beta" => &mut layer.attention_norm.beta[0],
            "intermediate.weight" => &mut layer.intermediate.weight[[3, 5]],
            "intermediate.bias" => &mut layer.intermediate.bias[4],
            "output.weight" => &mut layer.output.weight[[5, 2]],
            "output_norm.gamma" => &mut layer.output_norm.gamma[1],
            "output_norm.beta" => &mut layer.output_norm.beta[3],
            other => panic!("no parameter {other}"),
        }
    }

    const PARAMETERS: [&str; 12] = [
        "query.weight",
        "key.weight",
        "key.bias",
        "value.bias",
        "attention_output.weight",
        "attention_norm.gamma",
        "attention_norm.beta",
        "intermediate.weight",
        "intermediate.bias",
        "output.weight",
        "output_norm.gamma",
        "output_norm.beta",
    ];

    fn assert_close(analytic: f32, numeric: f32, what: &str) {
        let tolerance = 2e-3 + 2e-2 * numeric.abs();
        assert!((analytic - numeric).abs() <= tolerance, "{what}: backward {analytic}, finite differences {numeric}");
    }

    #[test]
    fn gradients_match_finite_differences() {
        let (width, ffn, tokens) = (8, 12, 4);
        let layer = random_layer(width, ffn, 1);
        let input = matrix(tokens, width, 21) * 2.0;
        let weights = matrix(tokens, width, 23);
        let mut gradients = layer.zeros_like();
        let d_input = layer.backward(&layer.trace(input.view(), &[1, tokens - 1]), weights.view(), &mut gradients);
        let step = 1e-2;
        for name in PARAMETERS {
            let mut shifted = layer.clone();
            *parameter(&mut shifted, name) += step;
            let up = loss(&shifted, &input, &weights);
            *parameter(&mut shifted, name) -= 2.0 * step;
            let down = loss(&shifted, &input, &weights);
            let analytic = *parameter(&mut gradients.clone(), name);
            assert_close(analytic, (up - down) / (2.0 * step), name);
        }
        for (row, column) in [(0, 0), (1, 4), (2, 7)] {
            let mut shifted = input.clone();
            shifted[[row, column]] += step;
            let up = loss(&layer, &shifted, &weights);
            shifted[[row, column]] -= 2.0 * step;
            let down = loss(&layer, &shifted, &weights);
            assert_close(d_input[[row, column]], (up - down) / (2.0 * step), "input");
        }
    }

    #[test]
    fn a_packed_batch_is_its_texts_run_apart() {
        let layer = random_layer(8, 12, 1);
        let (a, b) = (matrix(2, 8, 31), matrix(4, 8, 33));
        let packed = ndarray::concatenate(Axis(0), &[a.view(), b.view()]).unwrap();
        let together = layer.forward(packed.view(), &[2, 4]);
        let apart = ndarray::concatenate(
            Axis(0),
            &[layer.forward(a.view(), &[2]).view(), layer.forward(b.view(), &[4]).view()],
        )
        .unwrap();
        assert!(together.iter().zip(&apart).all(|(x, y)| (x - y).abs() < 1e-5));

        let ones = |x: &Array2<f32>| Array2::<f32>::ones(x.raw_dim());
        let mut both = layer.zeros_like();
        let d_packed = layer.backward(&layer.trace(packed.view(), &[2, 4]), ones(&packed).view(), &mut both);
        let mut each = layer.zeros_like();
        let d_a = layer.backward(&layer.trace(a.view(), &[2]), ones(&a).view(), &mut each);
        let d_b = layer.backward(&layer.trace(b.view(), &[4]), ones(&b).view(), &mut each);
        let close = |x: &Array2<f32>, y: &Array2<f32>| x.iter().zip(y).all(|(p, q)| (p - q).abs() < 1e-4);
        assert!(close(&both.query.weight, &each.query.weight) && close(&both.output.weight, &each.output.weight));
        assert!(close(&d_packed, &ndarray::concatenate(Axis(0), &[d_a.view(), d_b.view()]).unwrap()));
    }
}

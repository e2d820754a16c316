//! Reproducible layers for the transformer's tests.

use ndarray::{Array1, Array2};

use super::{Dense, Layer, Norm};

/// Reproducible values in [-0.5, 0.5).
pub fn values(count: usize, seed: u64) -> Vec<f32> {
    let mut rng = crate::test_rng::XorShift::seeded(seed);
    (0..count).map(|_| rng.centred()).collect()
}

pub fn matrix(rows: usize, columns: usize, seed: u64) -> Array2<f32> {
    Array2::from_shape_vec((rows, columns), values(rows * columns, seed)).unwrap()
}

fn dense(inputs: usize, outputs: usize, seed: u64) -> Dense {
    Dense { weight: matrix(inputs, outputs, seed), bias: Array1::from(values(outputs, seed + 1)) }
}

fn norm(width: usize, seed: u64) -> Norm {
    let gamma = Array1::from(values(width, seed)) + 1.0;
    Norm { gamma, beta: Array1::from(values(width, seed + 1)), epsilon: 1e-5 }
}

/// A layer of two heads, `width` wide with a feed-forward `ffn` wide, its
/// values drawn from `seed` on.
pub fn random_layer(width: usize, ffn: usize, seed: u64) -> Layer {
    Layer {
        heads: 2,
        score_scale: 1.0 / ((width / 2) as f32).sqrt(),
        query: dense(width, width, seed),
        key: dense(width, width, seed + 2),
        value: dense(width, width, seed + 4),
        attention_output: dense(width, width, seed + 6),
        attention_norm: norm(width, seed + 8),
        intermediate: dense(width, ffn, seed + 10),
        output: dense(ffn, width, seed + 12),
        output_norm: norm(width, seed + 14),
    }
}

//! Low-rank adaptation of the top layers' weight products: each weight W
//! becomes W + s·A·B with A `[in, rank]` and B `[rank, out]` trained (B
//! starts at zero, so training starts from the backbone itself) and W
//! frozen. What a head must store shrinks from every weight to the
//! factors (plus the biases and norms, which are trained in full).
//!
//! The gradients come from the full weight gradient the layers' backward
//! pass already gives: with G = ∂L/∂W, ∂L/∂A = s·G·Bᵀ and ∂L/∂B = s·Aᵀ·G.

use ndarray::Array2;

use super::rng::SplitMix;
use crate::transformer::Layer;

/// The factors of every product of every layer, layer-major.
#[derive(Debug, Clone)]
pub(crate) struct LowRank {
    pub scale: f32,
    /// Per layer, per product (`Layer::products` order): (A, B).
    pub factors: Vec<Vec<(Array2<f32>, Array2<f32>)>>,
}

impl LowRank {
    /// Factors for `layers` at `rank`: A uniform in ±1/√in, B zero; the
    /// scale 2 is LoRA's usual α = 2·rank.
    pub fn new(layers: &[Layer], rank: usize, seed: u64) -> Self {
        let mut random = SplitMix::new(seed ^ 0x4c6f_5241);
        let factors = layers
            .iter()
            .map(|layer| {
                layer
                    .products()
                    .iter()
                    .map(|dense| {
                        let (inputs, outputs) = dense.weight.dim();
                        let bound = 1.0 / (inputs as f32).sqrt();
                        let a = Array2::from_shape_simple_fn((inputs, rank), || (2.0 * random.uniform() - 1.0) * bound);
                        (a, Array2::zeros((rank, outputs)))
                    })
                    .collect()
            })
            .collect();
        Self { scale: 2.0, factors }
    }

    /// `base` with s·A·B added to every product's weight.
    pub fn merged(&self, base: &[Layer]) -> Vec<Layer> {
        let mut layers = base.to_vec();
        for (layer, factors) in layers.iter_mut().zip(&self.factors) {
            for (dense, (a, b)) in layer.products_mut().into_iter().zip(factors) {
                dense.weight.scaled_add(self.scale, &a.dot(b));
            }
        }
        layers
    }

    /// ∂L/∂A and ∂L/∂B of every factor, from the merged layers' gradients.
    pub fn gradients(&self, gradients: &[Layer]) -> Vec<Vec<(Array2<f32>, Array2<f32>)>> {
        gradients
            .iter()
            .zip(&self.factors)
            .map(|(gradient, factors)| {
                gradient
                    .products()
                    .iter()
                    .zip(factors)
                    .map(|(dense, (a, b))| {
                        (dense.weight.dot(&b.t()) * self.scale, a.t().dot(&dense.weight) * self.scale)
                    })
                    .collect()
            })
            .collect()
    }

    /// Every factor's values, A then B, layer by layer and product by product.
    pub fn values_mut(&mut self) -> Vec<&mut [f32]> {
        self.factors
            .iter_mut()
            .flatten()
            .flat_map(|(a, b)| [a.as_slice_mut().expect("standard layout"), b.as_slice_mut().expect("standard layout")])
            .collect()
    }

    /// How many values the factors hold.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.factors.iter().flatten().map(|(a, b)| a.len() + b.len()).sum()
    }
}

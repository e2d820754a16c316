//! The int8 compiled graph: weight products rewritten to run as
//! int8 × int8 → i32 on tract's integer kernels (VNNI on x86_64, the dot
//! product instructions on ARMv8.2), everything else left in f32.
//!
//! A product `x · W` with `W` a constant becomes
//!
//! ```text
//! x' = x / m                       m: one smoothing factor per channel of k
//! s  = max |x'| over k, per row / 127
//! y  = (round(x' / s) as i8 · W'_q as i32) as f32 × s × scale_W'
//! ```
//!
//! where `W'_q`, `scale_W'` are the int8 levels of `diag(m) · W` with one
//! scale per output column. Sentence encoders' layer-norm outputs carry a few
//! channels 10–30 times larger than the rest, the same channels in every
//! text; quantised as they are, those channels would set every row's step
//! and leave the others a handful of levels. The smoothing factors `m` move
//! part of that range into the weights (per channel, as in SmoothQuant),
//! from the activations' ranges measured once at compile time over a fixed
//! calibration text set (`calibration.txt`). Rows are then quantised one by one,
//! symmetrically: no zero point, so the product needs no correction term.
//! `int8_ops` holds the two operators around each product.
//! Softmax, layer norms, GELU, attention's activation × activation products
//! and pooling stay in f32.

use tract_core::internal::*;
use tract_core::ops::einsum::EinSum;

use crate::encoder::engine::int8_ops::{QuantizeRows, ScaleProduct};
/// The share of an activation channel's range moved into the weights
/// (SmoothQuant's α): m_k = max|x_k|^α / max|W_k|^(1−α); chosen on the
/// default model (docs/encoder.md, "Int8 graphs").
const MIGRATION: f32 = 0.6;
/// Smoothing factors are kept within this factor of 1 either way.
const MAX_SMOOTHING: f32 = 1e4;

/// What `quantise_weight_products` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Int8Rewrite {
    /// Products now run in int8.
    pub rewritten: usize,
    /// Products with a constant weight left in f32 (not a finite f32 matrix,
    /// the axes are not a plain `rows × k` by `k × n` product, or it narrows).
    pub kept: usize,
}

/// One weight product in the shape the rewrite handles: `k` is the
/// activation's last axis, `n` the output's, and the activation's other axes
/// pass to the output in place.
#[derive(Debug, Clone)]
pub(crate) struct Product {
    node: usize,
    einsum: EinSum,
    weight_slot: usize,
    /// The activation, and the position of the reduced axis `k` in it.
    pub activation: OutletId,
    pub k_in_x: usize,
    /// Position of `k` in the weight.
    k_in_w: usize,
    weight: Vec<f32>,
    weight_shape: [usize; 2],
}

/// The weight products of `model` the rewrite can take, and how many it
/// cannot.
pub(crate) fn weight_products(model: &TypedModel) -> TractResult<(Vec<Product>, usize)> {
    let mut products = Vec::new();
    let mut kept = 0;
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(einsum) = node.op_as::<EinSum>() else { continue };
        if einsum.q_params.is_some() || einsum.operating_dt != f32::datum_type() || node.inputs.len() != 2 {
            continue;
        }
        let facts = model.node_input_facts(id)?;
        let weight_slot = match (facts[0].konst.is_some(), facts[1].konst.is_some()) {
            (false, true) => 1,
            (true, false) => 0,
            _ => continue,
        };
        match Product::of(node, einsum, weight_slot, &facts) {
            Some(product) if !product.is_down_projection() => products.push(product),
            _ => kept += 1,
        }
    }
    Ok((products, kept))
}

/// Rewrites `products` (from `weight_products` on this same model) in place;
/// `ranges[i]` is the largest magnitude seen per channel of product i's
/// activation.
pub(crate) fn quantise_weight_products(
    model: &mut TypedModel,
    products: &[Product],
    ranges: &[Vec<f32>],
    kept: usize,
) -> TractResult<Int8Rewrite> {
    ensure!(products.len() == ranges.len(), "{} ranges for {} products", ranges.len(), products.len());
    for (product, range) in products.iter().zip(ranges) {
        let patch = product.patch(model, range)?;
        patch.apply(model)?;
    }
    Ok(Int8Rewrite { rewritten: products.len(), kept })
}

impl Product {
    fn of(node: &TypedNode, einsum: &EinSum, weight_slot: usize, facts: &[&TypedFact]) -> Option<Self> {
        let x_slot = 1 - weight_slot;
        let constant = facts[weight_slot].konst.as_ref()?;
        if constant.datum_type() != f32::datum_type() || constant.rank() != 2 {
            return None;
        }
        let weight = constant.try_as_plain_ram().ok()?.as_slice::<f32>().ok()?.to_vec();
        if !weight.iter().all(|v| v.is_finite()) {
            return None;
        }
        let weight_shape = [constant.shape()[0], constant.shape()[1]];
        let (mut k, mut n) = (None, None);
        for axis in einsum.axes.iter_all_axes() {
            let (in_x, in_w, out) = (&axis.inputs[x_slot], &axis.inputs[weight_slot], &axis.outputs[0]);
            match (in_x.len(), in_w.len(), out.len()) {
                (1, 1, 0) if k.is_none() => k = Some((in_x[0], in_w[0])),
                (0, 1, 1) if n.is_none() => n = Some(out[0]),
                (1, 0, 1) if in_x[0] == out[0] => {}
                _ => return None,
            }
        }
        let ((k_in_x, k_in_w), n_in_output) = (k?, n?);
        let rank = facts[x_slot].rank();
        if k_in_x != rank - 1 || n_in_output != rank - 1 {
            return None;
        }
        Some(Self {
            node: node.id,
            einsum: einsum.clone(),
            weight_slot,
            activation: node.inputs[x_slot],
            k_in_x,
            k_in_w,
            weight,
            weight_shape,
        })
    }

    /// A product that narrows (k > n): the feed-forward block's second
    /// product, whose input is the GELU output. Kept in f32: in int8 it
    /// costs the most accuracy (docs/encoder.md, "Int8 graphs").
    fn is_down_projection(&self) -> bool {
        self.k() > self.n()
    }

    /// Channels of the reduced axis.
    pub fn k(&self) -> usize {
        self.weight_shape[self.k_in_w]
    }

    fn n(&self) -> usize {
        self.weight_shape[1 - self.k_in_w]
    }

    /// Index of `W`'s value for channel `k` and output column `n`.
    fn index(&self, k: usize, n: usize) -> usize {
        let columns = self.weight_shape[1];
        if self.k_in_w == 0 { k * columns + n } else { n * columns + k }
    }

    /// `m_k` per channel of k, from the activation's ranges and the weight's.
    fn smoothing(&self, activation_range: &[f32]) -> Vec<f32> {
        (0..self.k())
            .map(|k| {
                let weight_range = (0..self.n()).map(|n| self.weight[self.index(k, n)].abs()).fold(0.0f32, f32::max);
                let x = activation_range.get(k).copied().unwrap_or(0.0);
                if x > 0.0 && weight_range > 0.0 {
                    let migrated = x.powf(MIGRATION) / weight_range.powf(1.0 - MIGRATION);
                    migrated.clamp(1.0 / MAX_SMOOTHING, MAX_SMOOTHING)
                } else {
                    1.0
                }
            })
            .collect()
    }

    /// The levels of `diag(m) · W`, laid out as the weight is, and one scale
    /// per output column.
    fn smoothed_levels(&self, smoothing: &[f32]) -> TractResult<(Tensor, Vec<f32>)> {
        let smoothed = |k: usize, n: usize| self.weight[self.index(k, n)] * smoothing[k];
        let scales: Vec<f32> =
            (0..self.n()).map(|n| (0..self.k()).map(|k| smoothed(k, n).abs()).fold(0.0f32, f32::max) / 127.0).collect();
        let mut levels = vec![0i8; self.weight.len()];
        for k in 0..self.k() {
            for (n, &scale) in scales.iter().enumerate() {
                let level = if scale > 0.0 { (smoothed(k, n) / scale).round() } else { 0.0 };
                levels[self.index(k, n)] = level.clamp(-127.0, 127.0) as i8;
            }
        }
        Ok((Tensor::from_shape(&self.weight_shape, &levels)?, scales))
    }

    fn patch(&self, model: &TypedModel, activation_range: &[f32]) -> TractResult<TypedModelPatch> {
        let node = model.node(self.node);
        let name = &node.name;
        let mut patch = TypedModelPatch::new("int8 weight product");
        let x = patch.tap_model(model, self.activation)?;
        let smoothing = self.smoothing(activation_range);
        let unsmooth: Vec<f32> = smoothing.iter().map(|m| 1.0 / m).collect();
        let quantise = QuantizeRows { unsmooth: rctensor1(&unsmooth) };
        let [x_q, steps] = *patch.wire_node(format!("{name}.quantise"), quantise, &[x])? else {
            bail!("QuantizeRows has two outputs")
        };
        let (weight_q, column_scales) = self.smoothed_levels(&smoothing)?;
        let weight = patch.add_const(format!("{name}.w_q"), weight_q)?;
        let operands = if self.weight_slot == 1 { [x_q, weight] } else { [weight, x_q] };
        let int_product = EinSum::new(self.einsum.axes.clone(), i32::datum_type());
        let sums = patch.wire_node(format!("{name}.int8"), int_product, &operands)?[0];
        let scale = ScaleProduct { column_scales: rctensor1(&column_scales) };
        let output = patch.wire_node(name.clone(), scale, &[sums, steps])?[0];
        patch.shunt_outside(model, node.id.into(), output)?;
        Ok(patch)
    }
}

//! The tract engine's forward for BERT-shaped encoders: tract runs the
//! embeddings (the graph cut at its first transformer layer's input), and
//! the transformer layers run in Attune's code (`transformer::InferenceLayer`)
//! on weights packed once for tract-linalg's kernels, f32 or int8 as the
//! compiled graph holds them. It computes what tract's plan of the whole
//! graph computes, faster: tract's plan keeps symbolic shapes, which hide
//! sizes from its kernel choice and send element-wise work through generic
//! broadcasting, and it pads every text to its batch's longest, where the
//! layers here run on the real tokens only (docs/encoder.md).
//! A batch given to `run` may have its layers split by tokens over two
//! threads (`transformer::forward_layers`): one sentence at a time is how
//! an app asks, and half of each layer's work on each core is worth one
//! meeting per layer. Graphs whose layers are not recognised run on
//! tract's plan.

use super::Engine;
use super::tract::{Embeddings, TractEngine};
use crate::encoder::batching::TokenBatch;
use crate::error::{Error, Result};
use crate::model::ModelManifest;
use crate::transformer::{InferenceLayer, Layer, LayerWeights, forward_layers};

pub(crate) struct NativeEngine {
    embeddings: TractEngine,
    layers: Vec<InferenceLayer>,
    /// Of the token states every layer takes.
    width: usize,
    /// How many a batch's layers may run on (`run`).
    threads: usize,
}

/// The tract engine for `manifest`: the native forward when the graph's
/// layers are recognised, else tract's plan of the whole graph.
pub(crate) fn load(manifest: &ModelManifest, threads: usize) -> Result<Box<dyn Engine>> {
    match NativeEngine::load(manifest, threads)? {
        Some(native) => Ok(Box::new(native)),
        None => Ok(Box::new(TractEngine::load(manifest, threads)?)),
    }
}

impl NativeEngine {
    /// `None` when the graph is not made of layers `find_layers` knows.
    pub fn load(manifest: &ModelManifest, threads: usize) -> Result<Option<Self>> {
        let (embeddings, weights) = match TractEngine::load_embeddings(manifest, threads)? {
            Embeddings::Split(embeddings, weights) => (embeddings, weights),
            Embeddings::LayersNotRecognised(_) => return Ok(None),
        };
        check_shapes(&weights)?;
        let width = weights[0].width();
        Ok(Some(Self::assemble(embeddings, &weights, width, threads)))
    }

    /// The trunk below the top `count` layers (its output: the token
    /// states those layers take), and those layers' weights, for adapting
    /// them on the device. An int8-compiled graph is refused: adaptation
    /// starts from f32 weights.
    pub fn load_trunk(manifest: &ModelManifest, threads: usize, count: usize) -> Result<(Self, Vec<Layer>)> {
        let (embeddings, mut weights) = match TractEngine::load_embeddings(manifest, threads)? {
            Embeddings::Split(embeddings, weights) => (embeddings, weights),
            Embeddings::LayersNotRecognised(reason) => {
                return Err(Error::CannotAdapt(format!("the model's transformer layers are not recognised: {reason}")));
            }
        };
        check_shapes(&weights)?;
        let width = weights[0].width();
        if count == 0 || count > weights.len() {
            return Err(Error::CannotAdapt(format!("{count} top layers asked of a model with {}", weights.len())));
        }
        let top = weights.split_off(weights.len() - count);
        let top = top.into_iter().map(LayerWeights::into_layer).collect::<Option<Vec<Layer>>>();
        let top = top.ok_or_else(|| Error::CannotAdapt("an int8-compiled model has no f32 weights to adapt".into()))?;
        Ok((Self::assemble(embeddings, &weights, width, threads), top))
    }

    /// `layers` (checked, possibly none) after `embeddings`, packed.
    fn assemble(embeddings: TractEngine, layers: &[LayerWeights], width: usize, threads: usize) -> Self {
        Self { embeddings, layers: layers.iter().map(InferenceLayer::new).collect(), width, threads }
    }

    /// The layers on `batch`'s embeddings, their states passed to `pool`.
    fn run_on(
        &self,
        threads: usize,
        batch: &TokenBatch,
        pool: &mut dyn FnMut(&[f32], usize) -> Result<()>,
    ) -> Result<()> {
        let lengths = real_lengths(batch)?;
        self.embeddings.run_on_one_thread(batch, &mut |embedded, width| {
            if width != self.width {
                return Err(Error::ModelMismatch(format!("embeddings {width} wide for layers of {}", self.width)));
            }
            let states = real_tokens(embedded, batch.seq, width, &lengths);
            let states = forward_layers(&self.layers, states, &lengths, threads);
            pool(&padded(states.as_slice().expect("a layer's output is contiguous"), batch.seq, width, &lengths), width)
        })
    }
}

impl Engine for NativeEngine {
    fn run(&self, batch: &TokenBatch, pool: &mut dyn FnMut(&[f32], usize) -> Result<()>) -> Result<()> {
        self.run_on(self.threads, batch, pool)
    }

    fn run_on_one_thread(&self, batch: &TokenBatch, pool: &mut dyn FnMut(&[f32], usize) -> Result<()>) -> Result<()> {
        self.run_on(1, batch, pool)
    }

    fn vocabulary_size(&self) -> Option<usize> {
        self.embeddings.vocabulary_size()
    }

    fn runs_batches_in_parallel(&self) -> bool {
        true
    }

    fn matrix_kernels(&self) -> Vec<(String, usize)> {
        let mut counts = std::collections::BTreeMap::<String, usize>::new();
        for kernel in self.layers.iter().flat_map(InferenceLayer::kernels) {
            *counts.entry(kernel.unwrap_or("ndarray").to_string()).or_default() += 1;
        }
        counts.into_iter().collect()
    }
}

/// Every layer's shapes hold together, and each takes what the one before
/// it returns (`find_layers` finds at least one).
fn check_shapes(weights: &[LayerWeights]) -> Result<()> {
    let width = weights[0].width();
    for (index, layer) in weights.iter().enumerate() {
        let error = layer
            .shape_error()
            .or_else(|| (layer.width() != width).then(|| format!("{} wide after layers {width} wide", layer.width())));
        if let Some(error) = error {
            return Err(Error::ModelMismatch(format!("transformer layer {index}: {error}")));
        }
    }
    Ok(())
}

/// Each row's token count: its mask must be ones then zeros, as
/// `TokenBatch::pad` writes it.
fn real_lengths(batch: &TokenBatch) -> Result<Vec<usize>> {
    let rows = batch.mask.chunks(batch.seq.max(1)).take(batch.rows);
    rows.map(|mask| {
        let length = mask.iter().take_while(|&&m| m == 1).count();
        if mask[length..].iter().all(|&m| m == 0) {
            Ok(length)
        } else {
            Err(Error::Inference("an attention mask with padding before real tokens".into()))
        }
    })
    .collect()
}

/// The real tokens of `[rows, seq, width]` states, one text after another.
fn real_tokens(states: &[f32], seq: usize, width: usize, lengths: &[usize]) -> ndarray::Array2<f32> {
    let total = lengths.iter().sum::<usize>();
    let mut tokens = Vec::with_capacity(total * width);
    for (row, &length) in lengths.iter().enumerate() {
        let start = row * seq * width;
        tokens.extend_from_slice(&states[start..start + length * width]);
    }
    ndarray::Array2::from_shape_vec((total, width), tokens).expect("sized from the lengths")
}

/// Texts' token states, one after another, back to `[rows, seq, width]`
/// with zeros for padding.
fn padded(tokens: &[f32], seq: usize, width: usize, lengths: &[usize]) -> Vec<f32> {
    let mut states = vec![0f32; lengths.len() * seq * width];
    let mut next = 0;
    for (row, &length) in lengths.iter().enumerate() {
        let start = row * seq * width;
        states[start..start + length * width].copy_from_slice(&tokens[next..next + length * width]);
        next += length * width;
    }
    states
}

#[cfg(all(test, feature = "onnx"))]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::model::tests::{default_model, tempdir};
    use crate::{Embeddings, Encoder, EncoderOptions, OnnxEncoder, Precision};

    fn sentences() -> Vec<&'static str> {
        include_str!("../../../../tests/data/sentences.txt").lines().collect()
    }

    fn lowest_cosine(ours: &Embeddings, theirs: &Embeddings) -> f32 {
        let cosines = ours.rows().zip(theirs.rows()).map(|(a, b)| a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>());
        cosines.fold(1.0, f32::min)
    }

    /// The native forward's vectors against those of tract's plan of the
    /// whole graph over the project's 265 sentences (lowest cosine), the
    /// lowest cosine of each sentence run alone to it run among the
    /// others, and the native forward's kernels. Each sentence run alone
    /// on two threads (its layers split by tokens) must give the vector it
    /// gives on one, to the bit.
    fn native_against_plan(dir: &Path) -> (f32, f32, Vec<(String, usize)>) {
        let options = EncoderOptions { threads: 1, ..EncoderOptions::default() };
        let native = OnnxEncoder::load(dir, &options).unwrap();
        let split = OnnxEncoder::load(dir, &EncoderOptions { threads: 2, ..options.clone() }).unwrap();
        let plan =
            OnnxEncoder::load_with(dir, &options, |manifest| Ok(Box::new(TractEngine::load(manifest, 1)?))).unwrap();
        let sentences = sentences();
        let together = native.embed(&sentences).unwrap();
        let alone: Vec<f32> = sentences.iter().flat_map(|s| native.embed(&[s]).unwrap().as_slice().to_vec()).collect();
        let alone_split: Vec<f32> =
            sentences.iter().flat_map(|s| split.embed(&[s]).unwrap().as_slice().to_vec()).collect();
        assert!(alone_split == alone, "two threads changed a sentence's vector");
        let alone = Embeddings::from_values(together.dim(), alone).unwrap();
        let against_plan = lowest_cosine(&together, &plan.embed(&sentences).unwrap());
        (against_plan, lowest_cosine(&alone, &together), native.matrix_kernels())
    }

    #[test]
    fn the_native_forward_computes_what_tracts_plan_does() {
        let tiny = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/tiny");
        let (lowest, alone, kernels) = native_against_plan(&tiny);
        assert!(lowest >= 0.9999 && alone >= 0.99999, "tiny model: lowest cosine {lowest}, alone {alone}");
        assert_eq!(kernels.iter().map(|(_, count)| count).sum::<usize>(), 6, "{kernels:?}");
        let Some(dir) = default_model() else { return };
        let (lowest, alone, kernels) = native_against_plan(&dir);
        eprintln!("default model, f32: lowest cosine {lowest} (alone against batched {alone}), kernels {kernels:?}");
        assert!(lowest >= 0.9999 && alone >= 0.99999, "default model: lowest cosine {lowest}, alone {alone}");
        let int8 = tempdir("native-int8").join("model");
        crate::compile_model(&dir, &int8, Precision::Int8).unwrap();
        let (lowest, alone, kernels) = native_against_plan(&int8);
        eprintln!("default model, int8: lowest cosine {lowest} (alone against batched {alone}), kernels {kernels:?}");
        // tract's own int8 plan moves a little between a sentence run alone
        // and in a batch; ours runs each text on its own tokens.
        assert!(lowest >= 0.9995 && alone >= 0.99999, "int8 model: lowest cosine {lowest}, alone {alone}");
        let int8_products: usize = kernels.iter().filter(|(name, _)| name.contains("i32")).map(|(_, n)| n).sum();
        assert_eq!(int8_products, 24, "{kernels:?}");
    }
}

//! The engines that run a model's graph: Attune's own BERT layers on
//! tract-linalg's kernels (`native`), tract's plan for graphs those layers
//! do not cover (`tract`), and ONNX Runtime loaded at run time (`ort`);
//! with what they need at run time — the graph's layers found and checked
//! (`layers`), tract's graph passes (`passes`) and int8 operators
//! (`int8_ops`).

#[cfg(feature = "tract")]
pub(super) mod int8_ops;
#[cfg(feature = "tract")]
pub(super) mod layers;
#[cfg(feature = "tract")]
pub(super) mod native;
#[cfg(feature = "ort")]
pub(super) mod ort;
#[cfg(feature = "tract")]
pub(super) mod passes;
#[cfg(feature = "tract")]
pub(super) mod tract;

use super::batching::TokenBatch;
use crate::error::Result;

/// Runs one padded batch and hands its `[rows, seq, width]` states to `pool`.
pub(crate) trait Engine: Send + Sync {
    fn run(&self, batch: &TokenBatch, pool: &mut dyn FnMut(&[f32], usize) -> Result<()>) -> Result<()>;

    /// Rows of the model's word-embedding table, when the engine can tell.
    fn vocabulary_size(&self) -> Option<usize> {
        None
    }

    /// Like `run`, all on the calling thread (a thread among others each
    /// running its own batch).
    fn run_on_one_thread(&self, batch: &TokenBatch, pool: &mut dyn FnMut(&[f32], usize) -> Result<()>) -> Result<()> {
        self.run(batch, pool)
    }

    /// Whether batches may run on several threads at once (each on one).
    fn runs_batches_in_parallel(&self) -> bool {
        false
    }

    /// The matrix-product kernels the engine chose, by name, with how many
    /// products use each; empty when the engine does not say.
    fn matrix_kernels(&self) -> Vec<(String, usize)> {
        Vec::new()
    }
}

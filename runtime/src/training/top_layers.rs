//! Adaptation of a backbone's top layers as the runtime's callers see it:
//! texts' trunk states from an encoder, adaptation on them, and sentence
//! vectors through the adapted (or unmodified) top. No ndarray on this
//! surface.

use std::sync::{Arc, OnceLock};

use ndarray::Array2;

pub use super::adapt::AdaptOptions;
use super::adapt::{self, Top};
use crate::encoder::{Encoder, TokenStates};
use crate::error::{Error, Result};
use crate::heads::TopChanges;
use crate::transformer::{InferenceLayer, Layer};

/// Texts' token states below the top layers, one `[tokens, width]` block each.
#[derive(Debug, Clone)]
pub struct TrunkStates {
    layers: usize,
    states: Vec<Array2<f32>>,
}

impl TrunkStates {
    /// States already computed (and perhaps cached), one per text.
    /// A text whose values are not `tokens × width` is a `ModelMismatch`.
    pub(crate) fn from_states(layers: usize, states: Vec<TokenStates>) -> Result<Self> {
        let as_array = |s: TokenStates| {
            let (tokens, width, values) = (s.tokens, s.width, s.values.len());
            Array2::from_shape_vec((tokens, width), s.values).map_err(|_| {
                Error::ModelMismatch(format!("trunk states of {tokens} tokens × {width} hold {values} values"))
            })
        };
        Ok(Self { layers, states: states.into_iter().map(as_array).collect::<Result<_>>()? })
    }

    /// The states of `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Self {
        Self { layers: self.layers, states: rows.iter().map(|&r| self.states[r].clone()).collect() }
    }
}

/// A backbone's top layers, as loaded or after adaptation.
#[derive(Debug, Clone)]
pub struct AdaptedTop {
    top: Top,
    /// `top`'s layers packed for the matrix kernels on first use (a top
    /// never changes once made; clones share them).
    packed: Arc<OnceLock<Vec<InferenceLayer>>>,
    /// Steps taken and the first and last batch's loss (none when unmodified).
    pub steps: usize,
    pub first_loss: f32,
    pub last_loss: f32,
}

impl AdaptedTop {
    fn made(top: Top, steps: usize, first_loss: f32, last_loss: f32) -> Self {
        Self { top, packed: Arc::default(), steps, first_loss, last_loss }
    }

    /// `encoder`'s top `layers` layers, unmodified.
    pub fn of(encoder: &dyn Encoder, layers: usize) -> Result<Self> {
        let top = encoder.top_layers(layers)?;
        let top = Top { layers: top.layers, pooling: top.pooling, normalize: top.normalize };
        Ok(Self::made(top, 0, f32::NAN, f32::NAN))
    }

    /// This top adapted to `labels` (one per row of `states`).
    pub fn adapt(
        &self,
        states: &TrunkStates,
        labels: &[usize],
        options: &AdaptOptions,
        should_stop: &dyn Fn() -> bool,
    ) -> Result<Self> {
        self.check(states)?;
        let done = adapt::adapt(&self.top, &states.states, labels, options, should_stop)?;
        Ok(Self::made(done.top, done.steps, done.first_loss, done.last_loss))
    }

    /// How many layers this top has.
    pub fn layers(&self) -> usize {
        self.top.layers.len()
    }

    /// What this top changed from `frozen` (the same model's unmodified
    /// top), for a head to carry.
    pub fn changes_from(&self, frozen: &AdaptedTop) -> Result<TopChanges> {
        let (mut adapted, mut base) = (self.top.layers.clone(), frozen.top.layers.clone());
        let (adapted, base) = (tensors(&mut adapted), tensors(&mut base));
        if adapted.len() != base.len() || adapted.iter().zip(&base).any(|(a, b)| a.len() != b.len()) {
            return Err(Error::InvalidInput("the adapted and frozen tops differ in shape".into()));
        }
        let tensors: Vec<Vec<f32>> =
            adapted.iter().zip(&base).map(|(a, b)| a.iter().zip(b.iter()).map(|(x, y)| x - y).collect()).collect();
        if tensors.iter().flatten().any(|v| !v.is_finite()) {
            return Err(Error::CannotAdapt("adapting the top layers gave NaN or infinite weights".into()));
        }
        Ok(TopChanges { layers: self.layers(), tensors })
    }

    /// This (frozen) top with `changes` applied; refused when they were
    /// made for another number of layers or other shapes.
    pub fn with_changes(&self, changes: &TopChanges) -> Result<Self> {
        let misfit = |why: String| Error::InvalidHead(format!("the head's adapted layers do not fit the model: {why}"));
        if changes.layers != self.layers() {
            return Err(misfit(format!("{} layers, the model's top has {}", changes.layers, self.layers())));
        }
        let mut top = self.top.clone();
        let mut slots = tensors(&mut top.layers);
        if slots.len() != changes.tensors.len() {
            return Err(misfit(format!("{} tensors for {}", changes.tensors.len(), slots.len())));
        }
        for (slot, change) in slots.iter_mut().zip(&changes.tensors) {
            if slot.len() != change.len() {
                return Err(misfit(format!("a tensor of {} values for {}", change.len(), slot.len())));
            }
            slot.iter_mut().zip(change).for_each(|(w, d)| *w += d);
        }
        drop(slots);
        Ok(Self::made(top, 0, f32::NAN, f32::NAN))
    }

    /// The sentence vectors of `states`' texts, row after row.
    pub fn embed(&self, states: &TrunkStates) -> Result<Vec<f32>> {
        self.check(states)?;
        let packed = self.packed.get_or_init(|| self.top.packed());
        Ok(adapt::embed(&self.top, packed, &states.states).concat())
    }

    fn check(&self, states: &TrunkStates) -> Result<()> {
        if states.layers != self.top.layers.len() {
            return Err(Error::InvalidInput(format!(
                "trunk states below {} layers given to a top of {}",
                states.layers,
                self.top.layers.len()
            )));
        }
        Ok(())
    }
}

/// Every parameter tensor of `layers`, layer after layer.
fn tensors(layers: &mut [Layer]) -> Vec<&mut [f32]> {
    layers.iter_mut().flat_map(|layer| layer.parameters_mut().into_iter().map(|(values, _)| values)).collect()
}

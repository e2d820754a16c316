//! Adaptation of a backbone's top layers as the runtime's callers see it:
//! texts' trunk states from an encoder, adaptation on them, and sentence
//! vectors through the adapted (or unmodified) top. No ndarray on this
//! surface.

use ndarray::Array2;

pub use super::adapt::AdaptOptions;
use super::adapt::{self, Top};
use crate::encoder::{EncodeListener, Encoder};
use crate::error::{Error, Result};

/// Texts' token states below the top layers, one `[tokens, width]` block each.
#[derive(Debug, Clone)]
pub struct TrunkStates {
    layers: usize,
    states: Vec<Array2<f32>>,
}

impl TrunkStates {
    /// Runs `texts` through `encoder`'s trunk below its top `layers` layers.
    pub fn compute(
        encoder: &dyn Encoder,
        layers: usize,
        texts: &[&str],
        listener: &dyn EncodeListener,
    ) -> Result<Self> {
        Ok(Self { layers, states: encoder.trunk_states(texts, layers, listener)? })
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
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
    /// Values a head must store for this top beyond the backbone's own
    /// weights: every weight, or low-rank factors with biases and norms.
    pub trained_values: usize,
    /// Steps taken and the first and last batch's loss (none when unmodified).
    pub steps: usize,
    pub first_loss: f32,
    pub last_loss: f32,
}

impl AdaptedTop {
    /// `encoder`'s top `layers` layers, unmodified.
    pub fn of(encoder: &dyn Encoder, layers: usize) -> Result<Self> {
        let top = encoder.top_layers(layers)?;
        let top = Top { layers: top.layers, pooling: top.pooling, normalize: top.normalize };
        Ok(Self { top, trained_values: 0, steps: 0, first_loss: f32::NAN, last_loss: f32::NAN })
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
        let mut done = adapt::adapt(&self.top, &states.states, labels, options, should_stop)?;
        let all: usize = done.top.layers.iter_mut().flat_map(|l| l.parameters_mut()).map(|(p, _)| p.len()).sum();
        let trained_values = match &done.low_rank {
            Some(factors) => {
                let matrices: usize = done
                    .top
                    .layers
                    .iter_mut()
                    .flat_map(|l| l.parameters_mut())
                    .filter(|p| p.1)
                    .map(|(p, _)| p.len())
                    .sum();
                factors.len() + all - matrices
            }
            None => all,
        };
        Ok(Self {
            top: done.top,
            trained_values,
            steps: done.steps,
            first_loss: done.first_loss,
            last_loss: done.last_loss,
        })
    }

    /// The sentence vectors of `states`' texts, row after row.
    pub fn embed(&self, states: &TrunkStates) -> Result<Vec<f32>> {
        self.check(states)?;
        Ok(adapt::embed(&self.top, &states.states).concat())
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

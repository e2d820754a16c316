//! Learning across devices without sharing text: the shared model that
//! federated rounds pass between the server and the devices. It is a linear
//! head over the backbone's sentence vectors, for the app's fixed label
//! list; its byte form is the head format (bounded, fuzz-hardened, bound to
//! the backbone's fingerprint). Carrying it is the app's job (Flower, or
//! its own channel): the runtime opens no socket.

use ndarray::{Array1, Array2};

use crate::error::{Error, Result};
use crate::heads::{Head, HeadKind, Params};

/// The largest label list a shared model may carry.
const MAX_LABELS: usize = 100_000;
/// Weights beyond this are damaged or hostile (trained ones stay far below).
const MAX_MAGNITUDE: f32 = 1e6;

/// The model federated rounds share: weights `labels × dim` and a bias per
/// label, for the backbone `fingerprint`.
#[derive(Debug, Clone, PartialEq)]
pub struct SharedModel {
    head: Head,
}

impl SharedModel {
    /// A shared model from its parts, as a server or a federated client
    /// hands them over; refuses shapes that do not fit, duplicate labels,
    /// NaN, infinite or huge weights.
    pub fn from_parts(fingerprint: &str, labels: Vec<String>, weights: Vec<f32>, bias: Vec<f32>) -> Result<Self> {
        let classes = labels.len();
        if classes == 0 || classes > MAX_LABELS {
            return Err(invalid(format!("a shared model needs 1 to {MAX_LABELS} labels, not {classes}")));
        }
        let mut sorted: Vec<&String> = labels.iter().collect();
        sorted.sort();
        if sorted.windows(2).any(|pair| pair[0] == pair[1]) || labels.iter().any(|l| l.trim().is_empty()) {
            return Err(invalid("the shared labels must be distinct and not blank".into()));
        }
        if weights.is_empty() || !weights.len().is_multiple_of(classes) || bias.len() != classes {
            return Err(invalid(format!(
                "{} weights and {} biases do not make a head for {classes} labels",
                weights.len(),
                bias.len()
            )));
        }
        if weights.iter().chain(&bias).any(|v| !v.is_finite() || v.abs() > MAX_MAGNITUDE) {
            return Err(invalid("the shared weights hold NaN, infinite or huge values".into()));
        }
        let dim = weights.len() / classes;
        let weights = Array2::from_shape_vec((classes, dim), weights).map_err(|e| invalid(e.to_string()))?;
        let params = Params::Linear { weights, bias: Array1::from_vec(bias) };
        Ok(Self { head: Head::new(fingerprint, labels, params) })
    }

    /// A zero model: every label equally likely. Servers start rounds from it.
    pub fn zeros(fingerprint: &str, labels: Vec<String>, dim: usize) -> Result<Self> {
        let classes = labels.len();
        Self::from_parts(fingerprint, labels, vec![0.0; classes * dim.max(1)], vec![0.0; classes])
    }

    /// Reads the byte form, refusing a model for another backbone.
    pub fn from_bytes(bytes: &[u8], expected_fingerprint: &str) -> Result<Self> {
        Self::from_head(Head::from_bytes(bytes, expected_fingerprint)?)
    }

    /// The head format's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.head.to_bytes()
    }

    /// A linear head as a shared model (its calibration is dropped: rounds
    /// average raw weights).
    pub(crate) fn from_head(head: Head) -> Result<Self> {
        if head.top.is_some() {
            return Err(Error::InvalidHead(
                "a shared model is over the frozen features: it carries no adapted layers".into(),
            ));
        }
        match head.params {
            Params::Linear { weights, bias } => {
                let (weights, _) = weights.into_raw_vec_and_offset();
                Self::from_parts(&head.fingerprint, head.labels, weights, bias.to_vec())
            }
            _ => Err(Error::InvalidHead(format!("a shared model is linear, not {}", head.kind().name()))),
        }
    }

    pub fn fingerprint(&self) -> &str {
        self.head.fingerprint()
    }

    pub fn labels(&self) -> &[String] {
        self.head.labels()
    }

    pub fn dim(&self) -> usize {
        self.head.dim()
    }

    /// Weights, `labels × dim` row-major, and the bias per label.
    pub fn weights(&self) -> &[f32] {
        match &self.head.params {
            Params::Linear { weights, .. } => weights.as_slice().expect("shared models keep standard layout"),
            _ => unreachable!("a shared model is linear"),
        }
    }

    pub fn bias(&self) -> &[f32] {
        match &self.head.params {
            Params::Linear { bias, .. } => bias.as_slice().expect("shared models keep standard layout"),
            _ => unreachable!("a shared model is linear"),
        }
    }

    /// The model as a head to predict or evaluate with.
    pub(crate) fn head(&self) -> &Head {
        &self.head
    }

    /// Refuses a model for another backbone or width than `fingerprint`'s.
    pub(crate) fn check_backbone(&self, fingerprint: &str, dim: usize) -> Result<()> {
        if self.fingerprint() != fingerprint {
            return Err(Error::HeadModelMismatch {
                expected: fingerprint.to_string(),
                found: self.fingerprint().to_string(),
            });
        }
        if self.dim() != dim {
            return Err(invalid(format!("the shared model is {} wide, the model's vectors {dim}", self.dim())));
        }
        debug_assert_eq!(self.head.kind(), HeadKind::Linear);
        Ok(())
    }
}

fn invalid(reason: String) -> Error {
    Error::InvalidInput(reason)
}

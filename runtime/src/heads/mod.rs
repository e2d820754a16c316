//! Heads: small models over the frozen encoder's features. A head is a
//! value — parameters, label map, calibration and the fingerprint of the
//! backbone it was trained for — that serialises to versioned bytes. A head
//! trained on adapted features also carries what adaptation changed in the
//! backbone's top layers.

mod codec;

use ndarray::{Array1, Array2, ArrayView2, Axis};

use crate::error::{Error, Result};
use crate::numeric::{argmax, softmax_rows};

/// Which family a head belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HeadKind {
    /// Class centroids scored by cosine: no training; also zero-shot from
    /// label descriptions.
    Prototype,
    /// Multinomial logistic regression.
    Linear,
    /// One hidden ReLU layer.
    Mlp,
}

impl HeadKind {
    pub fn name(self) -> &'static str {
        match self {
            HeadKind::Prototype => "prototype",
            HeadKind::Linear => "linear",
            HeadKind::Mlp => "mlp",
        }
    }

    pub fn from_name(name: &str) -> Result<Self> {
        match name {
            "prototype" => Ok(HeadKind::Prototype),
            "linear" => Ok(HeadKind::Linear),
            "mlp" => Ok(HeadKind::Mlp),
            other => Err(Error::InvalidInput(format!("unknown head kind {other:?} (prototype, linear or mlp)"))),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Params {
    /// `logits = scale · X Cᵀ` with unit-length centroids `C`.
    Prototype { centroids: Array2<f32>, scale: f32 },
    /// `logits = X Wᵀ + b`.
    Linear { weights: Array2<f32>, bias: Array1<f32> },
    /// `logits = relu(X W1ᵀ + b1) W2ᵀ + b2`, plus `X Sᵀ` with a skip
    /// connection `S`: a linear head that the hidden layer corrects.
    Mlp { w1: Array2<f32>, b1: Array1<f32>, w2: Array2<f32>, b2: Array1<f32>, skip: Option<Array2<f32>> },
}

/// What adapting a backbone's top `layers` layers changed: per parameter
/// tensor, in the layers' own order, the difference from the model's weights
/// (the head's fingerprint names the model). Opaque to heads; the trainer
/// makes and applies it.
#[derive(Debug, Clone, PartialEq)]
pub struct TopChanges {
    pub(crate) layers: usize,
    pub(crate) tensors: Vec<Vec<f32>>,
}

impl TopChanges {
    /// How many of the backbone's top layers the changes are for.
    pub fn layers(&self) -> usize {
        self.layers
    }

    /// How many values they hold.
    pub fn values(&self) -> usize {
        self.tensors.iter().map(Vec::len).sum()
    }

    /// Values per tensor, in the layers' order.
    pub fn tensor_lengths(&self) -> Vec<usize> {
        self.tensors.iter().map(Vec::len).collect()
    }
}

/// A trained (or zero-shot) head.
#[derive(Debug, Clone, PartialEq)]
pub struct Head {
    pub(crate) fingerprint: String,
    pub(crate) labels: Vec<String>,
    pub(crate) dim: usize,
    pub(crate) params: Params,
    /// Logits are divided by this before the softmax (fitted on validation).
    pub(crate) temperature: f32,
    /// Top probabilities below this abstain ("none of these").
    pub(crate) abstain_below: f32,
    /// Unit class prototypes (`labels × dim`) for the novelty check.
    pub(crate) prototypes: Option<Array2<f32>>,
    /// Inputs whose cosine to every prototype is below this abstain too:
    /// far from everything the head was trained on.
    pub(crate) novelty_below: f32,
    /// For a head over adapted features: the top layers those came from.
    pub(crate) top: Option<TopChanges>,
}

/// A label and its calibrated probability.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoredLabel {
    pub label: String,
    pub probability: f32,
}

/// A ranked answer of a head.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// Labels with calibrated probabilities, most likely first.
    pub top: Vec<ScoredLabel>,
    /// True when the best probability is below the head's threshold: the
    /// input is probably none of the known labels.
    pub abstain: bool,
}

impl Head {
    pub(crate) fn new(fingerprint: &str, labels: Vec<String>, params: Params) -> Self {
        let dim = match &params {
            Params::Prototype { centroids, .. } => centroids.ncols(),
            Params::Linear { weights, .. } => weights.ncols(),
            Params::Mlp { w1, .. } => w1.ncols(),
        };
        Self {
            fingerprint: fingerprint.to_string(),
            labels,
            dim,
            params,
            temperature: 1.0,
            abstain_below: 0.0,
            prototypes: None,
            novelty_below: -1.0,
            top: None,
        }
    }

    pub fn kind(&self) -> HeadKind {
        match self.params {
            Params::Prototype { .. } => HeadKind::Prototype,
            Params::Linear { .. } => HeadKind::Linear,
            Params::Mlp { .. } => HeadKind::Mlp,
        }
    }

    pub fn labels(&self) -> &[String] {
        &self.labels
    }

    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn temperature(&self) -> f32 {
        self.temperature
    }

    pub fn abstain_threshold(&self) -> f32 {
        self.abstain_below
    }

    /// The adapted top layers its features come from, if any.
    pub fn top_changes(&self) -> Option<&TopChanges> {
        self.top.as_ref()
    }

    /// Raw scores, `n × labels` row-major, for `features` (`n × dim`).
    pub(crate) fn logits(&self, features: ArrayView2<'_, f32>) -> Array2<f32> {
        match &self.params {
            Params::Prototype { centroids, scale } => features.dot(&centroids.t()) * *scale,
            Params::Linear { weights, bias } => features.dot(&weights.t()) + bias,
            Params::Mlp { w1, b1, w2, b2, skip } => {
                let hidden = (features.dot(&w1.t()) + b1).mapv(|h| h.max(0.0));
                let logits = hidden.dot(&w2.t()) + b2;
                match skip {
                    Some(skip) => logits + features.dot(&skip.t()),
                    None => logits,
                }
            }
        }
    }

    /// Calibrated probabilities, `n × labels` row-major, for `features`
    /// (`n × dim`, row-major). NaN or infinite features are refused.
    pub fn probabilities(&self, features: &[f32]) -> Result<Vec<f32>> {
        let view = self.view(features)?;
        let mut logits = self.logits(view).into_raw_vec_and_offset().0;
        if logits.iter().any(|x| !x.is_finite()) {
            // Only features far outside any encoder's range get here.
            return Err(Error::InvalidInput("the features are too large for this head".into()));
        }
        softmax_rows(&mut logits, self.labels.len(), self.temperature);
        Ok(logits)
    }

    /// The `top_k` labels for one feature vector, with the abstain flag.
    pub fn predict(&self, feature: &[f32], top_k: usize) -> Result<Prediction> {
        let probabilities = self.probabilities(feature)?;
        let mut ranked: Vec<(usize, f32)> = probabilities.iter().copied().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let (_, best) = argmax(&probabilities);
        let novel = self.nearest_prototype(feature).is_some_and(|cosine| cosine < self.novelty_below);
        Ok(Prediction {
            top: ranked
                .into_iter()
                .take(top_k.max(1))
                .map(|(i, probability)| ScoredLabel { label: self.labels[i].clone(), probability })
                .collect(),
            abstain: best < self.abstain_below || novel,
        })
    }

    /// Cosine of `feature` to its nearest class prototype, when the head has them.
    pub(crate) fn nearest_prototype(&self, feature: &[f32]) -> Option<f32> {
        let prototypes = self.prototypes.as_ref()?;
        let norm = feature.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        let feature = ndarray::ArrayView1::from(feature);
        Some(prototypes.dot(&feature).iter().fold(f32::NEG_INFINITY, |m, &c| m.max(c)) / norm)
    }

    fn view<'a>(&self, features: &'a [f32]) -> Result<ArrayView2<'a, f32>> {
        if features.is_empty() || !features.len().is_multiple_of(self.dim) {
            return Err(Error::InvalidInput(format!("features are not rows of width {}", self.dim)));
        }
        if features.iter().any(|x| !x.is_finite()) {
            return Err(Error::InvalidInput("features hold NaN or infinity".into()));
        }
        ArrayView2::from_shape((features.len() / self.dim, self.dim), features)
            .map_err(|e| Error::InvalidInput(e.to_string()))
    }

    /// Serialises the head to its versioned byte format.
    pub fn to_bytes(&self) -> Vec<u8> {
        codec::encode(self)
    }

    /// Decodes a head, refusing one trained for another backbone.
    pub fn from_bytes(bytes: &[u8], expected_fingerprint: &str) -> Result<Self> {
        let head = codec::decode(bytes)?;
        if head.fingerprint != expected_fingerprint {
            return Err(Error::HeadModelMismatch {
                expected: expected_fingerprint.to_string(),
                found: head.fingerprint,
            });
        }
        Ok(head)
    }

    /// Format version written by `to_bytes`.
    pub fn format_version() -> u32 {
        codec::FORMAT_VERSION
    }
}

/// Sums of the (unit-length) feature rows of each class; `None` for a class
/// without examples.
pub(crate) fn class_sums(features: ArrayView2<'_, f32>, labels: &[usize], classes: usize) -> Vec<Option<Array1<f32>>> {
    let mut sums = vec![None::<Array1<f32>>; classes];
    for (row, &label) in features.axis_iter(Axis(0)).zip(labels) {
        match &mut sums[label] {
            Some(sum) => *sum += &row,
            slot @ None => *slot = Some(row.to_owned()),
        }
    }
    sums
}

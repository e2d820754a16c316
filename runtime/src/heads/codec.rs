//! The head checkpoint format, little-endian:
//!
//! ```text
//! "ATHD" | format u32 | kind u8 | fingerprint str | labels u32 + str… | dim u32
//! | temperature f32 | abstain_below f32 | novelty_below f32
//! | has_prototypes u8 [prototypes (labels × dim)] | params
//! str    = length u32 + UTF-8 bytes
//! params = prototype: scale f32, centroids (labels × dim)
//!          linear:    weights (labels × dim), bias (labels)
//!          mlp:       hidden u32, w1 (hidden × dim), b1 (hidden), w2 (labels × hidden), b2 (labels)
//!          mlp with a skip connection: as mlp, then skip (labels × dim)
//! format 2 adds, after params:
//!   has_top u8 [layers u32 | tensors u32 | per tensor: values u32 + f16…]
//! ```
//!
//! The top changes are differences from the model's weights, small enough
//! for f16's three digits; format 1 (no top) is still read.
//!
//! Decoding checks every length against what is left before allocating, so
//! hostile bytes give `Error::InvalidHead`, never a panic or a huge allocation.

use half::f16;
use ndarray::{Array1, Array2};

use super::{Head, Params, TopChanges};
use crate::error::{Error, Result};

const MAGIC: &[u8; 4] = b"ATHD";
pub(crate) const FORMAT_VERSION: u32 = 2;
/// The first format, without adapted top layers.
const FORMAT_WITHOUT_TOP: u32 = 1;
/// More layers than any backbone Attune runs; more tensors than such layers hold.
const MAX_TOP_LAYERS: usize = 64;
const MAX_TOP_TENSORS: usize = 64 * 16;
/// Values in one tensor: a 4096 × 16384 feed-forward matrix.
const MAX_TOP_TENSOR: usize = 1 << 26;
const MAX_LABELS: usize = 100_000;
const MAX_DIM: usize = 16_384;
/// Trained weights stay far below this; larger ones (found by fuzzing) make
/// scores overflow to infinity and probabilities NaN.
const MAX_MAGNITUDE: f32 = 1e6;
/// Calibration fits temperatures in [0.05, 20].
const TEMPERATURES: std::ops::RangeInclusive<f32> = 1e-3..=1e3;

pub(crate) fn encode(head: &Head) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    let (kind, floats): (u8, Vec<&[f32]>) = match &head.params {
        Params::Prototype { centroids, .. } => (0, vec![slice(centroids)]),
        Params::Linear { weights, bias } => (1, vec![slice(weights), vec_slice(bias)]),
        Params::Mlp { w1, b1, w2, b2, skip } => {
            let mut floats = vec![slice(w1), vec_slice(b1), slice(w2), vec_slice(b2)];
            floats.extend(skip.as_ref().map(slice));
            (if skip.is_some() { 3 } else { 2 }, floats)
        }
    };
    out.push(kind);
    put_str(&mut out, &head.fingerprint);
    out.extend_from_slice(&(head.labels.len() as u32).to_le_bytes());
    for label in &head.labels {
        put_str(&mut out, label);
    }
    out.extend_from_slice(&(head.dim as u32).to_le_bytes());
    out.extend_from_slice(&head.temperature.to_le_bytes());
    out.extend_from_slice(&head.abstain_below.to_le_bytes());
    out.extend_from_slice(&head.novelty_below.to_le_bytes());
    match &head.prototypes {
        Some(prototypes) => {
            out.push(1);
            slice(prototypes).iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        }
        None => out.push(0),
    }
    match &head.params {
        Params::Prototype { scale, .. } => out.extend_from_slice(&scale.to_le_bytes()),
        Params::Mlp { w1, .. } => out.extend_from_slice(&(w1.nrows() as u32).to_le_bytes()),
        Params::Linear { .. } => {}
    }
    for values in floats {
        values.iter().for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
    }
    put_top(&mut out, head.top.as_ref());
    out
}

fn put_top(out: &mut Vec<u8>, top: Option<&TopChanges>) {
    let Some(top) = top else {
        out.push(0);
        return;
    };
    out.push(1);
    out.extend_from_slice(&(top.layers as u32).to_le_bytes());
    out.extend_from_slice(&(top.tensors.len() as u32).to_le_bytes());
    for tensor in &top.tensors {
        out.extend_from_slice(&(tensor.len() as u32).to_le_bytes());
        tensor.iter().for_each(|v| out.extend_from_slice(&f16::from_f32(*v).to_le_bytes()));
    }
}

fn slice(array: &Array2<f32>) -> &[f32] {
    array.as_slice().expect("heads keep standard-layout arrays")
}

fn vec_slice(array: &Array1<f32>) -> &[f32] {
    array.as_slice().expect("heads keep standard-layout arrays")
}

fn put_str(out: &mut Vec<u8>, text: &str) {
    out.extend_from_slice(&(text.len() as u32).to_le_bytes());
    out.extend_from_slice(text.as_bytes());
}

pub(crate) fn decode(bytes: &[u8]) -> Result<Head> {
    let mut reader = Reader { bytes, at: 0 };
    if reader.take(4)? != MAGIC {
        return Err(invalid("not a head checkpoint"));
    }
    let format = reader.u32()?;
    if format != FORMAT_VERSION && format != FORMAT_WITHOUT_TOP {
        return Err(invalid(&format!("format {format} is not supported (this build reads {FORMAT_VERSION})")));
    }
    let kind = reader.take(1)?[0];
    let fingerprint = reader.string()?;
    let label_count = reader.count(MAX_LABELS)?;
    let labels = (0..label_count).map(|_| reader.string()).collect::<Result<Vec<_>>>()?;
    if labels.is_empty() {
        return Err(invalid("no labels"));
    }
    let dim = reader.count(MAX_DIM)?;
    if dim == 0 {
        return Err(invalid("zero width"));
    }
    let temperature = reader.f32()?;
    let abstain_below = reader.f32()?;
    let novelty_below = reader.f32()?;
    if !(TEMPERATURES.contains(&temperature)
        && (0.0..=1.0).contains(&abstain_below)
        && (-1.0..=1.0).contains(&novelty_below))
    {
        return Err(invalid("calibration out of range"));
    }
    let classes = labels.len();
    let prototypes = match reader.take(1)?[0] {
        0 => None,
        1 => Some(reader.matrix(classes, dim)?),
        other => return Err(invalid(&format!("prototype flag {other}"))),
    };
    let params = match kind {
        0 => {
            let scale = reader.f32()?;
            // Found by fuzzing: a NaN scale made every probability NaN.
            if !(scale > 0.0 && scale <= MAX_MAGNITUDE) {
                return Err(invalid("the prototype scale is not a positive number"));
            }
            Params::Prototype { scale, centroids: reader.matrix(classes, dim)? }
        }
        1 => Params::Linear { weights: reader.matrix(classes, dim)?, bias: reader.vector(classes)? },
        2 | 3 => {
            let hidden = reader.count(MAX_DIM)?;
            Params::Mlp {
                w1: reader.matrix(hidden, dim)?,
                b1: reader.vector(hidden)?,
                w2: reader.matrix(classes, hidden)?,
                b2: reader.vector(classes)?,
                skip: if kind == 3 { Some(reader.matrix(classes, dim)?) } else { None },
            }
        }
        other => return Err(invalid(&format!("unknown head kind {other}"))),
    };
    let top = if format == FORMAT_WITHOUT_TOP { None } else { reader.top()? };
    if reader.at != bytes.len() {
        return Err(invalid("trailing bytes"));
    }
    Ok(Head { fingerprint, labels, dim, params, temperature, abstain_below, prototypes, novelty_below, top })
}

fn invalid(reason: &str) -> Error {
    Error::InvalidHead(reason.to_string())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.at.checked_add(n).filter(|&end| end <= self.bytes.len()).ok_or_else(|| invalid("truncated"))?;
        let taken = &self.bytes[self.at..end];
        self.at = end;
        Ok(taken)
    }

    fn u32(&mut self) -> Result<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f32(&mut self) -> Result<f32> {
        Ok(f32::from_bits(self.u32()?))
    }

    fn count(&mut self, limit: usize) -> Result<usize> {
        let n = self.u32()? as usize;
        if n > limit {
            return Err(invalid(&format!("a count of {n} is over the limit {limit}")));
        }
        Ok(n)
    }

    fn string(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        let bytes = self.take(n)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| invalid("a string is not UTF-8"))
    }

    fn floats(&mut self, n: usize) -> Result<Vec<f32>> {
        let bytes = self.take(n.checked_mul(4).ok_or_else(|| invalid("size overflow"))?)?;
        let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        if values.iter().any(|v| !(v.is_finite() && v.abs() <= MAX_MAGNITUDE)) {
            return Err(invalid("a weight is NaN, infinite or beyond ±1e6"));
        }
        Ok(values)
    }

    fn matrix(&mut self, rows: usize, cols: usize) -> Result<Array2<f32>> {
        let n = rows.checked_mul(cols).ok_or_else(|| invalid("size overflow"))?;
        Array2::from_shape_vec((rows, cols), self.floats(n)?).map_err(|e| invalid(&e.to_string()))
    }

    fn vector(&mut self, n: usize) -> Result<Array1<f32>> {
        Ok(Array1::from_vec(self.floats(n)?))
    }

    fn top(&mut self) -> Result<Option<TopChanges>> {
        match self.take(1)?[0] {
            0 => return Ok(None),
            1 => {}
            other => return Err(invalid(&format!("top flag {other}"))),
        }
        let layers = self.count(MAX_TOP_LAYERS)?;
        let count = self.count(MAX_TOP_TENSORS)?;
        if layers == 0 || count == 0 {
            return Err(invalid("adapted top layers without layers or tensors"));
        }
        let tensors = (0..count)
            .map(|_| {
                let n = self.count(MAX_TOP_TENSOR)?;
                let bytes = self.take(n * 2)?;
                let values: Vec<f32> =
                    bytes.chunks_exact(2).map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32()).collect();
                if values.iter().any(|v| !v.is_finite()) {
                    return Err(invalid("an adapted layer holds NaN or infinity"));
                }
                Ok(values)
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Some(TopChanges { layers, tensors }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(kind: u8) -> Head {
        let labels = vec!["a".to_string(), "b".to_string(), "ç".to_string()];
        let params = match kind {
            0 => Params::Prototype { centroids: Array2::from_elem((3, 4), 0.5), scale: 12.0 },
            1 => Params::Linear {
                weights: Array2::from_shape_fn((3, 4), |(i, j)| (i * 4 + j) as f32),
                bias: Array1::from_vec(vec![0.1, 0.2, 0.3]),
            },
            _ => Params::Mlp {
                w1: Array2::from_elem((5, 4), 0.25),
                b1: Array1::zeros(5),
                w2: Array2::from_elem((3, 5), -1.0),
                b2: Array1::from_vec(vec![1.0, 2.0, 3.0]),
                skip: (kind == 3).then(|| Array2::from_shape_fn((3, 4), |(i, j)| (i + 2 * j) as f32)),
            },
        };
        let mut head = Head::new("fp", labels, params);
        head.temperature = 1.7;
        head.abstain_below = 0.4;
        if kind == 1 {
            head.prototypes = Some(Array2::from_elem((3, 4), 0.5));
            head.novelty_below = 0.3;
        }
        head
    }

    fn with_top(mut head: Head) -> Head {
        head.top = Some(TopChanges { layers: 2, tensors: vec![vec![0.5, -0.25, 1e-3], vec![], vec![2.0]] });
        head
    }

    #[test]
    fn every_kind_round_trips() {
        for kind in 0..4 {
            let head = sample(kind);
            assert_eq!(decode(&encode(&head)).unwrap(), head);
        }
    }

    #[test]
    fn top_changes_round_trip_at_f16_precision() {
        let head = with_top(sample(1));
        let decoded = decode(&encode(&head)).unwrap();
        let tensors = &decoded.top.as_ref().unwrap().tensors;
        assert_eq!(tensors[0][..2], [0.5, -0.25]);
        assert!((tensors[0][2] - 1e-3).abs() < 1e-6, "{}", tensors[0][2]);
        assert_eq!(decoded.top_changes().map(TopChanges::values), Some(4));
        assert_eq!(Head { top: head.top.clone(), ..decoded.clone() }, head);
    }

    #[test]
    fn format_one_heads_are_still_read() {
        let head = sample(2);
        let mut bytes = encode(&head);
        bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(bytes.pop(), Some(0), "a head without a top ends with its flag");
        assert_eq!(decode(&bytes).unwrap(), head);
    }

    #[test]
    fn damaged_top_layers_are_refused() {
        let bytes = encode(&with_top(sample(1)));
        let top_at = encode(&sample(1)).len() - 1;
        for cut in top_at..bytes.len() {
            assert!(matches!(decode(&bytes[..cut]), Err(Error::InvalidHead(_))), "cut at {cut}");
        }
        let mut nan = bytes.clone();
        let last = nan.len() - 2;
        nan[last..].copy_from_slice(&f16::NAN.to_le_bytes());
        assert!(matches!(decode(&nan), Err(Error::InvalidHead(reason)) if reason.contains("NaN")));
        let mut huge = bytes.clone();
        huge[top_at + 5..top_at + 9].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&huge), Err(Error::InvalidHead(reason)) if reason.contains("limit")));
    }

    #[test]
    fn every_truncation_and_corruption_is_an_error_not_a_panic() {
        let bytes = encode(&with_top(sample(3)));
        for cut in 0..bytes.len() {
            assert!(matches!(decode(&bytes[..cut]), Err(Error::InvalidHead(_))), "cut at {cut}");
        }
        for at in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[at] ^= 0xff;
            let _ = decode(&damaged); // must return, whatever it returns
        }
        let mut trailing = bytes.clone();
        trailing.push(0);
        assert!(decode(&trailing).is_err());
    }

    #[test]
    fn a_prototype_scale_that_is_not_a_positive_number_is_refused() {
        let bytes = encode(&sample(0));
        // The scale is the four bytes before the centroids (3 × 4 f32) and
        // the top flag.
        let at = bytes.len() - 1 - 3 * 4 * 4 - 4;
        assert_eq!(bytes[at..at + 4], 12.0f32.to_le_bytes());
        for bad in [f32::NAN, f32::INFINITY, 0.0, -1.0, 1e30] {
            let mut damaged = bytes.clone();
            damaged[at..at + 4].copy_from_slice(&bad.to_le_bytes());
            assert!(matches!(decode(&damaged), Err(Error::InvalidHead(_))), "scale {bad}");
        }
    }

    #[test]
    fn weights_and_temperatures_that_would_overflow_are_refused() {
        let mut head = sample(1);
        if let Params::Linear { weights, .. } = &mut head.params {
            weights[(0, 0)] = 3e38;
        }
        assert!(matches!(decode(&encode(&head)), Err(Error::InvalidHead(reason)) if reason.contains("1e6")));
        let mut head = sample(1);
        head.temperature = 1e-30;
        assert!(matches!(decode(&encode(&head)), Err(Error::InvalidHead(_))));
    }

    #[test]
    fn huge_counts_are_refused_before_allocating() {
        let mut bytes = encode(&sample(1));
        // The label count sits after magic, format, kind and the fingerprint "fp".
        let at = 4 + 4 + 1 + 4 + 2;
        bytes[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(decode(&bytes), Err(Error::InvalidHead(reason)) if reason.contains("limit")));
    }
}

//! The few numeric primitives every part of the runtime shares: softmax,
//! argmax and unit-length rows, written once.

use ndarray::{Array1, Array2, ArrayViewMut1, Axis};

/// Norms below this are treated as zero: such a vector is left as it is.
const TINY_NORM: f32 = 1e-12;

/// Index and value of the largest entry (the first one on ties); `(0, -inf)`
/// for an empty row.
pub(crate) fn argmax(row: &[f32]) -> (usize, f32) {
    row.iter().enumerate().fold((0, f32::NEG_INFINITY), |best, (i, &p)| if p > best.1 { (i, p) } else { best })
}

/// In-place softmax of one row of logits divided by `temperature`.
pub(crate) fn softmax(row: &mut [f32], temperature: f32) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0.0;
    for value in row.iter_mut() {
        *value = ((*value - max) / temperature).exp();
        sum += *value;
    }
    row.iter_mut().for_each(|v| *v /= sum);
}

/// [`softmax`] of an ndarray row (training works on array views).
pub(crate) fn softmax_view(mut row: ArrayViewMut1<'_, f32>) {
    match row.as_slice_mut() {
        Some(slice) => softmax(slice, 1.0),
        None => {
            let mut owned = row.to_vec();
            softmax(&mut owned, 1.0);
            row.iter_mut().zip(owned).for_each(|(v, p)| *v = p);
        }
    }
}

/// In-place softmax of each row of `logits` (`classes` wide) divided by `temperature`.
pub(crate) fn softmax_rows(logits: &mut [f32], classes: usize, temperature: f32) {
    logits.chunks_exact_mut(classes).for_each(|row| softmax(row, temperature));
}

/// `-log softmax(row / temperature)[label]`, computed stably in f64.
pub(crate) fn cross_entropy(row: impl IntoIterator<Item = f32> + Clone, label: usize, temperature: f32) -> f64 {
    let max = row.clone().into_iter().fold(f32::NEG_INFINITY, f32::max);
    let scaled = |z: f32| f64::from((z - max) / temperature);
    let log_sum = row.clone().into_iter().map(|z| scaled(z).exp()).sum::<f64>().ln();
    let target = row.into_iter().nth(label).map_or(f64::NEG_INFINITY, scaled);
    log_sum - target
}

/// `v` scaled to unit length (a zero vector stays zero).
pub(crate) fn unit(mut v: Array1<f32>) -> Array1<f32> {
    let norm = v.dot(&v).sqrt();
    if norm > TINY_NORM {
        v /= norm;
    }
    v
}

/// Every row of `rows` scaled to unit length (zero rows stay zero).
pub(crate) fn unit_rows(mut rows: Array2<f32>) -> Array2<f32> {
    for mut row in rows.axis_iter_mut(Axis(0)) {
        let norm = row.dot(&row).sqrt();
        if norm > TINY_NORM {
            row /= norm;
        }
    }
    rows
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn softmax_and_cross_entropy_agree() {
        let logits = [2.0f32, -1.0, 0.5];
        let mut p = logits;
        softmax(&mut p, 2.0);
        assert!((p.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        let loss = cross_entropy(logits.iter().copied(), 2, 2.0);
        assert!((loss - -f64::from(p[2]).ln()).abs() < 1e-6);
        assert_eq!(argmax(&p).0, 0);
    }

    #[test]
    fn huge_logits_stay_finite() {
        let mut p = [1e30f32, 1e30 - 1e24, -1e30];
        softmax(&mut p, 1.0);
        assert!(p.iter().all(|x| x.is_finite()));
        assert!(cross_entropy([1e30f32, -1e30], 0, 1.0).is_finite());
    }
}

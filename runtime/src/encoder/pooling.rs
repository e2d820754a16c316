//! Token states to one sentence vector per row.

use crate::model::Pooling;

/// Pools `hidden` (`[rows, seq, width]`, row-major) into `out` (`[rows, width]`)
/// using `mask` (`[rows, seq]`), then L2-normalises each row when asked.
pub(crate) fn pool_rows(
    hidden: &[f32],
    mask: &[i64],
    (rows, seq, width): (usize, usize, usize),
    pooling: Pooling,
    normalize: bool,
    out: &mut [f32],
) {
    debug_assert_eq!(hidden.len(), rows * seq * width);
    debug_assert_eq!(out.len(), rows * width);
    for row in 0..rows {
        let target = &mut out[row * width..(row + 1) * width];
        target.fill(0.0);
        let states = &hidden[row * seq * width..(row + 1) * seq * width];
        match pooling {
            Pooling::Cls => target.copy_from_slice(&states[..width]),
            Pooling::Mean => {
                let mut kept = 0usize;
                for (token, state) in states.chunks_exact(width).enumerate() {
                    if mask[row * seq + token] != 0 {
                        kept += 1;
                        target.iter_mut().zip(state).for_each(|(t, s)| *t += s);
                    }
                }
                let scale = 1.0 / kept.max(1) as f32;
                target.iter_mut().for_each(|t| *t *= scale);
            }
        }
        if normalize {
            let norm = target.iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 1e-12 {
                target.iter_mut().for_each(|t| *t /= norm);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_pooling_ignores_padding_and_normalises() {
        // Two rows, three tokens, width 2; the second row's last token is padding.
        let hidden = [1.0, 0.0, 3.0, 0.0, 2.0, 0.0, 0.0, 2.0, 0.0, 4.0, 100.0, 100.0];
        let mask = [1, 1, 1, 1, 1, 0];
        let mut out = [0.0; 4];
        pool_rows(&hidden, &mask, (2, 3, 2), Pooling::Mean, false, &mut out);
        assert_eq!(out, [2.0, 0.0, 0.0, 3.0]);
        pool_rows(&hidden, &mask, (2, 3, 2), Pooling::Mean, true, &mut out);
        assert_eq!(out, [1.0, 0.0, 0.0, 1.0]);
    }

    #[test]
    fn cls_pooling_takes_the_first_token() {
        let hidden = [3.0, 4.0, 9.0, 9.0];
        let mut out = [0.0; 2];
        pool_rows(&hidden, &[1, 1], (1, 2, 2), Pooling::Cls, true, &mut out);
        assert_eq!(out, [0.6, 0.8]);
    }
}

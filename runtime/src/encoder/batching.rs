//! Length bucketing: texts are grouped with others of similar length so a
//! batch padded to its longest member wastes little compute.

use super::tokenize::Tokens;

/// A padded batch in the layout every backend takes: row-major `[rows, seq]`.
#[derive(Debug)]
pub(crate) struct TokenBatch {
    pub rows: usize,
    pub seq: usize,
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub type_ids: Vec<i64>,
}

impl TokenBatch {
    pub fn pad(members: &[&Tokens]) -> Self {
        let rows = members.len();
        let seq = members.iter().map(|t| t.ids.len()).max().unwrap_or(0);
        let mut batch = TokenBatch {
            rows,
            seq,
            ids: vec![0; rows * seq],
            mask: vec![0; rows * seq],
            type_ids: vec![0; rows * seq],
        };
        for (row, tokens) in members.iter().enumerate() {
            let start = row * seq;
            let len = tokens.ids.len();
            batch.ids[start..start + len].copy_from_slice(&tokens.ids);
            batch.type_ids[start..start + len].copy_from_slice(&tokens.type_ids);
            batch.mask[start..start + len].fill(1);
        }
        batch
    }
}

/// Splits text indices into batches of at most `max_rows`, shortest first.
/// Each batch lists original indices, so results can be put back in order.
pub(crate) fn plan_batches(lengths: &[usize], max_rows: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    // Stable, so equal lengths keep their input order: runs are reproducible.
    order.sort_by_key(|&i| lengths[i]);
    order.chunks(max_rows.max(1)).map(<[usize]>::to_vec).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_group_similar_lengths_and_cover_every_text_once() {
        let lengths = [5, 40, 3, 41, 4, 39, 6];
        let plan = plan_batches(&lengths, 3);
        assert_eq!(plan, vec![vec![2, 4, 0], vec![6, 5, 1], vec![3]]);
        let mut seen: Vec<usize> = plan.concat();
        seen.sort_unstable();
        assert_eq!(seen, (0..lengths.len()).collect::<Vec<_>>());
        assert!(plan_batches(&[], 8).is_empty());
    }

    #[test]
    fn padding_masks_only_real_tokens() {
        let a = Tokens { ids: vec![2, 7, 3], type_ids: vec![0, 0, 0] };
        let b = Tokens { ids: vec![2, 3], type_ids: vec![0, 1] };
        let batch = TokenBatch::pad(&[&a, &b]);
        assert_eq!((batch.rows, batch.seq), (2, 3));
        assert_eq!(batch.ids, vec![2, 7, 3, 2, 3, 0]);
        assert_eq!(batch.mask, vec![1, 1, 1, 1, 1, 0]);
        assert_eq!(batch.type_ids, vec![0, 0, 0, 0, 1, 0]);
    }
}

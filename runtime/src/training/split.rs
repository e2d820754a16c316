//! Stratified validation splits and folds: every label keeps its share.

use super::rng::SplitMix;

/// Indices per label, shuffled.
fn by_label(labels: &[usize], classes: usize, rng: &mut SplitMix) -> Vec<Vec<usize>> {
    let mut groups = vec![Vec::new(); classes];
    for (i, &label) in labels.iter().enumerate() {
        groups[label].push(i);
    }
    groups.iter_mut().for_each(|g| rng.shuffle(g));
    groups
}

/// (train, validation) with about `fraction` of each label held out; labels
/// with a single example stay in training.
pub(crate) fn holdout(labels: &[usize], classes: usize, fraction: f32, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut rng = SplitMix::new(seed);
    let (mut train, mut validation) = (Vec::new(), Vec::new());
    for group in by_label(labels, classes, &mut rng) {
        let held = if group.len() < 2 {
            0
        } else {
            ((group.len() as f32 * fraction).round() as usize).clamp(1, group.len() - 1)
        };
        validation.extend_from_slice(&group[..held]);
        train.extend_from_slice(&group[held..]);
    }
    (train, validation)
}

/// `k` folds, each a (train, validation) pair; every example is validated once.
pub(crate) fn folds(labels: &[usize], classes: usize, k: usize, seed: u64) -> Vec<(Vec<usize>, Vec<usize>)> {
    let mut rng = SplitMix::new(seed);
    let mut assignment = vec![0usize; labels.len()];
    let mut next = 0;
    for group in by_label(labels, classes, &mut rng) {
        for i in group {
            assignment[i] = next % k;
            next += 1;
        }
    }
    (0..k)
        .map(|fold| {
            let (validation, train): (Vec<usize>, Vec<usize>) = (0..labels.len()).partition(|&i| assignment[i] == fold);
            (train, validation)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holdout_is_stratified_and_keeps_singletons_in_training() {
        let labels: Vec<usize> = (0..100)
            .map(|i| {
                if i < 80 {
                    0
                } else if i < 99 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let (train, validation) = holdout(&labels, 3, 0.2, 1);
        assert_eq!(train.len() + validation.len(), 100);
        assert_eq!(validation.iter().filter(|&&i| labels[i] == 0).count(), 16);
        assert_eq!(validation.iter().filter(|&&i| labels[i] == 1).count(), 4);
        assert!(validation.iter().all(|&i| labels[i] != 2));
    }

    #[test]
    fn folds_cover_every_example_once() {
        let labels: Vec<usize> = (0..30).map(|i| i % 3).collect();
        let folds = folds(&labels, 3, 5, 9);
        let mut seen: Vec<usize> = folds.iter().flat_map(|(_, v)| v.clone()).collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..30).collect::<Vec<_>>());
        for (train, validation) in &folds {
            assert_eq!(train.len() + validation.len(), 30);
            for label in 0..3 {
                assert_eq!(validation.iter().filter(|&&i| labels[i] == label).count(), 2);
            }
        }
    }
}

//! Head training on features with a known structure: clusters around class
//! directions, so the right answer is known.

mod support;

use std::sync::atomic::{AtomicUsize, Ordering};

use attune::{
    EpochProgress, Error, Head, HeadChoice, HeadKind, QuietTraining, TrainListener, TrainOptions, TrainingSet,
    evaluate, train, zero_shot_head,
};

const DIM: usize = 24;

/// A stream of standard normal draws.
fn gaussians(seed: u64) -> impl FnMut() -> f32 {
    let mut rng = support::XorShift::seeded(seed);
    move || {
        let (u, v) = (rng.open_unit(), rng.open_unit());
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
    }
}

fn unit(v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.into_iter().map(|x| x / n).collect()
}

/// `per_class` noisy unit vectors around each of `classes` random directions.
fn clusters(classes: usize, per_class: usize, noise: f32, seed: u64) -> (Vec<f32>, Vec<usize>, Vec<Vec<f32>>) {
    let mut gaussian = gaussians(seed);
    let centres: Vec<Vec<f32>> = (0..classes).map(|_| unit((0..DIM).map(|_| gaussian()).collect())).collect();
    let mut features = Vec::new();
    let mut labels = Vec::new();
    for (c, centre) in centres.iter().enumerate() {
        for _ in 0..per_class {
            features.extend(unit(centre.iter().map(|x| x + noise * gaussian()).collect()));
            labels.push(c);
        }
    }
    (features, labels, centres)
}

/// One noisy unit vector around each of `centres`, from a stream of its own.
fn around(centres: &[Vec<f32>], noise: f32, seed: u64) -> Vec<f32> {
    let mut gaussian = gaussians(seed);
    centres.iter().flat_map(|centre| unit(centre.iter().map(|x| x + noise * gaussian()).collect())).collect()
}

/// Disjoint training and test draws around the same centres: `train` then
/// `test` noisy vectors per class, from one stream.
fn split_clusters(classes: usize, train: usize, test: usize, noise: f32, seed: u64) -> Split {
    let (x, y, centres) = clusters(classes, train + test, noise, seed);
    let per_class = train + test;
    let mut split = Split { centres, ..Split::default() };
    for (row, &label) in y.iter().enumerate() {
        let features = &x[row * DIM..(row + 1) * DIM];
        if row % per_class < train {
            split.x.extend_from_slice(features);
            split.y.push(label);
        } else {
            split.test_x.extend_from_slice(features);
            split.test_y.push(label);
        }
    }
    split
}

#[derive(Default)]
struct Split {
    x: Vec<f32>,
    y: Vec<usize>,
    test_x: Vec<f32>,
    test_y: Vec<usize>,
    centres: Vec<Vec<f32>>,
}

fn names(classes: usize) -> Vec<String> {
    (0..classes).map(|c| format!("label-{c}")).collect()
}

/// A training set over `x` and `y` with no weights, no priors and backbone "fp".
fn plain_set<'a>(x: &'a [f32], y: &'a [usize], labels: &'a [String]) -> TrainingSet<'a> {
    TrainingSet { features: x, dim: DIM, labels: y, weights: None, label_names: labels, priors: &[], fingerprint: "fp" }
}

fn accuracy(head: &Head, features: &[f32], labels: &[usize]) -> f64 {
    evaluate(&head.probabilities(features).unwrap(), labels, head.labels()).accuracy
}

#[test]
fn every_head_kind_learns_separable_classes() {
    let Split { x, y, test_x, test_y, .. } = split_clusters(6, 60, 30, 0.25, 1);
    let labels = names(6);
    let set = plain_set(&x, &y, &labels);
    for kind in [HeadKind::Prototype, HeadKind::Linear, HeadKind::Mlp] {
        let options = TrainOptions { head: HeadChoice::Only(kind), ..TrainOptions::default() };
        let (head, report) = train(&set, None, &options, &QuietTraining).unwrap();
        assert_eq!(head.kind(), kind);
        let test = accuracy(&head, &test_x, &test_y);
        assert!(test > 0.95, "{kind:?}: test accuracy {test}");
        let validation = report.validation.unwrap();
        assert!(validation.accuracy > 0.9 && validation.n > 0, "{kind:?}: {validation:?}");
        assert_eq!(report.examples, 360);
    }
}

#[test]
fn training_is_deterministic_given_a_seed() {
    let (x, y, _) = clusters(5, 40, 0.6, 2);
    let labels = names(5);
    let set = plain_set(&x, &y, &labels);
    let options = TrainOptions { head: HeadChoice::Only(HeadKind::Linear), seed: 7, ..TrainOptions::default() };
    let (a, _) = train(&set, None, &options, &QuietTraining).unwrap();
    let (b, _) = train(&set, None, &options, &QuietTraining).unwrap();
    assert_eq!(a.to_bytes(), b.to_bytes());
}

#[test]
fn descriptions_give_a_zero_shot_head_and_a_head_start() {
    // 21 draws per class: the last is the single training example, the
    // other 20 are the test set.
    let (all_x, all_y, centres) = clusters(8, 21, 0.3, 3);
    let is_train = |row: usize| row % 21 == 20;
    let pick = |train: bool| -> (Vec<f32>, Vec<usize>) {
        let rows: Vec<usize> = (0..all_y.len()).filter(|&r| is_train(r) == train).collect();
        (
            rows.iter().flat_map(|&r| all_x[r * DIM..(r + 1) * DIM].to_vec()).collect(),
            rows.iter().map(|&r| all_y[r]).collect(),
        )
    };
    let ((x, y), (test_x, test_y)) = (pick(true), pick(false));
    let labels = names(8);
    // Descriptions point roughly, not exactly, at each class, as label texts
    // do: a noisy draw around each centre, independent of the examples.
    let descriptions = around(&centres, 0.25, 303);
    let zero = zero_shot_head("fp", labels.clone(), &descriptions, DIM).unwrap();
    let zero_accuracy = accuracy(&zero, &test_x, &test_y);
    assert!(zero_accuracy > 0.5, "zero-shot {zero_accuracy} (chance is 0.125)");

    let priors: Vec<Option<Vec<f32>>> = descriptions.chunks(DIM).map(|d| Some(d.to_vec())).collect();
    let with = TrainingSet {
        features: &x,
        dim: DIM,
        labels: &y,
        weights: None,
        label_names: &labels,
        priors: &priors,
        fingerprint: "fp",
    };
    let without = TrainingSet { priors: &[], ..with };
    let (primed, report) = train(&with, None, &TrainOptions::default(), &QuietTraining).unwrap();
    assert_eq!(report.head, HeadKind::Prototype, "one example per label: nothing to validate a trained head on");
    let (blind, _) = train(&without, None, &TrainOptions::default(), &QuietTraining).unwrap();
    let (primed, blind) = (accuracy(&primed, &test_x, &test_y), accuracy(&blind, &test_x, &test_y));
    assert!(primed > zero_accuracy && primed > blind, "primed {primed}, blind {blind}, zero {zero_accuracy}");
}

#[test]
fn class_balancing_keeps_a_rare_label_alive() {
    let Split { mut x, mut y, test_x, test_y, .. } = split_clusters(3, 300, 300, 0.45, 5);
    // Keep 6 of the third label's 300 examples: 300 / 300 / 6.
    x.truncate((600 + 6) * DIM);
    y.truncate(606);
    let labels = names(3);
    let set = plain_set(&x, &y, &labels);
    let rare_recall = |class_balanced: bool| {
        let options =
            TrainOptions { head: HeadChoice::Only(HeadKind::Linear), class_balanced, ..TrainOptions::default() };
        let (head, _) = train(&set, None, &options, &QuietTraining).unwrap();
        evaluate(&head.probabilities(&test_x).unwrap(), &test_y, head.labels()).per_class[2].recall
    };
    let (balanced, plain) = (rare_recall(true), rare_recall(false));
    assert!(balanced > plain, "rare label recall: balanced {balanced}, plain {plain}");
}

#[test]
fn progress_is_reported_and_training_can_be_cancelled() {
    struct CancelAfter(AtomicUsize);
    impl TrainListener for CancelAfter {
        fn on_epoch(&self, progress: &EpochProgress) {
            assert!(progress.loss.is_finite());
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn is_cancelled(&self) -> bool {
            self.0.load(Ordering::SeqCst) >= 3
        }
    }
    let (x, y, _) = clusters(4, 50, 0.5, 6);
    let labels = names(4);
    let set = plain_set(&x, &y, &labels);
    let listener = CancelAfter(AtomicUsize::new(0));
    let options = TrainOptions { head: HeadChoice::Only(HeadKind::Linear), ..TrainOptions::default() };
    assert!(matches!(train(&set, None, &options, &listener), Err(Error::Cancelled)));
    assert_eq!(listener.0.load(Ordering::SeqCst), 3);
}

#[test]
fn retraining_warm_starts_from_the_previous_head() {
    let Split { x, y, test_x, test_y, .. } = split_clusters(4, 40, 30, 0.4, 7);
    let labels = names(4);
    let set = plain_set(&x, &y, &labels);
    let options = TrainOptions { head: HeadChoice::Only(HeadKind::Linear), ..TrainOptions::default() };
    let (first, _) = train(&set, None, &options, &QuietTraining).unwrap();
    // Two epochs from the old head against the same two epochs from the
    // usual start (the prototypes): the warm run continues where the first
    // training ended, so it is further along — a lower loss on the training
    // examples — and loses nothing on held-out ones.
    let short = TrainOptions { epochs: Some(2), weight_decay: Some(0.0), ..options };
    let (warm, _) = train(&set, Some(&first), &short, &QuietTraining).unwrap();
    let (cold, _) = train(&set, None, &short, &QuietTraining).unwrap();
    let training_loss = |head: &Head| evaluate(&head.probabilities(&x).unwrap(), &y, head.labels()).log_loss;
    assert!(accuracy(&warm, &test_x, &test_y) >= accuracy(&first, &test_x, &test_y) - 0.02);
    let (warm_loss, cold_loss) = (training_loss(&warm), training_loss(&cold));
    eprintln!("training log loss after two epochs: warm {warm_loss}, cold {cold_loss}");
    assert!(warm_loss < cold_loss, "training log loss: warm {warm_loss}, cold {cold_loss}");
}

#[test]
fn heads_round_trip_and_refuse_another_backbone() {
    let (x, y, _) = clusters(3, 30, 0.3, 8);
    let labels = names(3);
    let set = TrainingSet {
        features: &x,
        dim: DIM,
        labels: &y,
        weights: None,
        label_names: &labels,
        priors: &[],
        fingerprint: "model-a",
    };
    let (head, _) = train(&set, None, &TrainOptions::default(), &QuietTraining).unwrap();
    let bytes = head.to_bytes();
    assert_eq!(Head::from_bytes(&bytes, "model-a").unwrap(), head);
    assert!(matches!(Head::from_bytes(&bytes, "model-b"), Err(Error::HeadModelMismatch { .. })));
    assert!(matches!(Head::from_bytes(&bytes[..10], "model-a"), Err(Error::InvalidHead(_))));
}

#[test]
fn predictions_are_calibrated_and_abstain_on_strangers() {
    // Enough examples that the 15% validation share measures calibration
    // (150 rows; with 60 its error alone is about 0.05).
    let Split { x, y, test_x: in_scope, centres, .. } = split_clusters(5, 200, 100, 0.4, 9);
    let labels = names(5);
    let set = plain_set(&x, &y, &labels);
    let (head, report) = train(&set, None, &TrainOptions::default(), &QuietTraining).unwrap();
    let ece = report.validation.unwrap().ece;
    assert!(ece < 0.1, "expected calibration error {ece}");
    let prediction = head.predict(&centres[2], 3).unwrap();
    assert_eq!(prediction.top[0].label, "label-2");
    assert!(!prediction.abstain && prediction.top.len() == 3);
    assert!(prediction.top.windows(2).all(|w| w[0].probability >= w[1].probability));
    // In scope, about the chosen 5% abstain; inputs from clusters the head
    // never saw abstain more often. (Only about 2-3 times: top-probability
    // thresholds are a weak out-of-scope detector, see the closing note.)
    let abstain_rate = |x: &[f32]| {
        let rows: Vec<&[f32]> = x.chunks_exact(DIM).collect();
        rows.iter().filter(|row| head.predict(row, 1).unwrap().abstain).count() as f64 / rows.len() as f64
    };
    let (strangers, _, _) = clusters(5, 100, 0.4, 99);
    let (inside, outside) = (abstain_rate(&in_scope), abstain_rate(&strangers));
    assert!(inside < 0.15 && outside > 2.0 * inside, "abstains on {inside} in scope, {outside} out of scope");
}

#[test]
fn bad_training_input_is_refused() {
    let (x, y, _) = clusters(2, 5, 0.3, 10);
    let labels = names(2);
    let set = plain_set(&x, &y, &labels);
    let options = TrainOptions::default();
    let mut nan = x.clone();
    nan[3] = f32::NAN;
    let bad_label = vec![5usize; y.len()];
    let zero_weights = vec![0.0f32; y.len()];
    let cases = [
        TrainingSet { features: &nan, ..set },
        TrainingSet { labels: &bad_label, ..set },
        TrainingSet { features: &x[..DIM * 3], ..set },
        TrainingSet { weights: Some(&zero_weights), ..set },
        TrainingSet { labels: &[], features: &[], ..set },
    ];
    for case in cases {
        assert!(matches!(train(&case, None, &options, &QuietTraining), Err(Error::InvalidInput(_))));
    }
    let bad_options = [
        TrainOptions { learning_rate: Some(-0.01), ..TrainOptions::default() },
        TrainOptions { learning_rate: Some(f32::NAN), ..TrainOptions::default() },
        TrainOptions { weight_decay: Some(-1.0), ..TrainOptions::default() },
    ];
    for options in bad_options {
        assert!(matches!(train(&set, None, &options, &QuietTraining), Err(Error::InvalidInput(_))), "{options:?}");
    }
    assert!(matches!(head_with_nan_query(&set), Err(Error::InvalidInput(_))));
}

fn head_with_nan_query(set: &TrainingSet<'_>) -> Result<attune::Prediction, Error> {
    let (head, _) = train(set, None, &TrainOptions::default(), &QuietTraining)?;
    head.predict(&[f32::NAN; DIM], 1)
}

#[test]
fn differentially_private_training_learns_within_its_budget() {
    use attune::PrivacyOptions;
    let Split { x, y, test_x, test_y, centres } = split_clusters(4, 150, 50, 0.3, 11);
    let labels = names(4);
    let descriptions: Vec<Option<Vec<f32>>> = centres.iter().map(|_| None).collect();
    let set = TrainingSet {
        features: &x,
        dim: DIM,
        labels: &y,
        weights: None,
        label_names: &labels,
        priors: &descriptions,
        fingerprint: "fp",
    };
    // The whole budget in one run.
    let all = PrivacyOptions { run_share: 1.0, ..PrivacyOptions::with_budget(4.0) };
    let options = TrainOptions { privacy: Some(all.clone()), ..TrainOptions::default() };
    let (head, report) = train(&set, None, &options, &QuietTraining).unwrap();
    let spent = report.privacy.unwrap();
    assert!(spent.epsilon <= 4.0 && spent.epsilon > 3.9, "spent {spent:?}");
    let private_accuracy = accuracy(&head, &test_x, &test_y);
    assert!(private_accuracy > 0.85, "private accuracy {private_accuracy}");

    // The ledger: a second run under the same total budget is refused.
    let run = report.private_run.unwrap();
    let again = TrainOptions {
        privacy: Some(PrivacyOptions { previous: vec![run], ..all.clone() }),
        ..TrainOptions::default()
    };
    assert!(matches!(train(&set, None, &again, &QuietTraining), Err(Error::PrivacyBudgetExceeded(_))));
    // A larger total budget leaves room for it, and reports the composed ε.
    let larger = TrainOptions {
        privacy: Some(PrivacyOptions { previous: vec![run], epsilon: 8.0, ..all }),
        ..TrainOptions::default()
    };
    let (_, second) = train(&set, None, &larger, &QuietTraining).unwrap();
    assert!(second.privacy.unwrap().epsilon <= 8.0 && second.privacy.unwrap().epsilon > 4.0);

    // By default a run spends half of what is left: a second run fits.
    let half = TrainOptions { privacy: Some(PrivacyOptions::with_budget(4.0)), ..TrainOptions::default() };
    let (_, first) = train(&set, None, &half, &QuietTraining).unwrap();
    let first_spent = first.privacy.unwrap().epsilon;
    assert!((first_spent - 2.0).abs() < 0.05, "half of ε = 4: {first_spent}");
    let previous = vec![first.private_run.unwrap()];
    let next = TrainOptions {
        privacy: Some(PrivacyOptions { previous, ..PrivacyOptions::with_budget(4.0) }),
        ..TrainOptions::default()
    };
    let (_, then) = train(&set, None, &next, &QuietTraining).unwrap();
    assert!(then.privacy.unwrap().epsilon > first_spent && then.privacy.unwrap().epsilon <= 4.0);

    let mlp = TrainOptions { head: HeadChoice::Only(HeadKind::Mlp), ..options };
    assert!(matches!(train(&set, None, &mlp, &QuietTraining), Err(Error::InvalidInput(_))));
}

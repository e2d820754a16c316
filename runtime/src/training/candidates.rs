//! The candidate heads of a run: which are tried, where each starts, and
//! fitting one on a set of rows.

use ndarray::{Array1, Array2, ArrayView2};

use super::data::Data;
use super::fit::{FitSettings, fit, mlp_around};
use super::plan::{Budget, Plan, Regime};
use super::{CandidateHead, HeadChoice, PROTOTYPE_SCALE, TrainListener};
use crate::error::Result;
use crate::heads::{Head, HeadKind, Params, class_sums};
use crate::numeric::unit;

/// A label description counts as this many examples in its prototype.
const PRIOR_WEIGHT: f32 = 2.0;
/// Pulls of the linear head towards its prototype start, per step and
/// learning rate: free, gentle, firm.
const LINEAR_PULLS: [f32; 3] = [0.0, 0.3, 3.0];
/// With enough examples for a holdout, a firm pull never wins: only free.
const LINEAR_PULLS_HOLDOUT: [f32; 1] = [0.0];
/// Decay of the MLP head's hidden-layer weights towards zero, per step and
/// learning rate (its skip connection is free, like the linear head).
const MLP_DECAY: f32 = 0.1;
/// A hidden layer needs data: about this many examples per label.
const MLP_EXAMPLES_PER_LABEL: usize = 30;

/// The candidates `plan` tries, simplest first (ties go to the first).
pub(crate) fn grid(plan: &Plan<'_>, n: usize) -> Vec<CandidateHead> {
    let pulls: &[f32] = if plan.regime == Regime::Holdout { &LINEAR_PULLS_HOLDOUT } else { &LINEAR_PULLS };
    let linear: Vec<CandidateHead> = match plan.options.weight_decay {
        Some(pull) => vec![CandidateHead::Linear { pull }],
        None => pulls.iter().map(|&pull| CandidateHead::Linear { pull }).collect(),
    };
    let mlp = CandidateHead::Mlp { decay: plan.options.weight_decay.unwrap_or(MLP_DECAY) };
    match plan.options.head {
        HeadChoice::Only(HeadKind::Prototype) => vec![CandidateHead::Prototype],
        HeadChoice::Only(HeadKind::Linear) => linear,
        HeadChoice::Only(HeadKind::Mlp) => vec![mlp],
        HeadChoice::Auto => {
            let mut all = vec![CandidateHead::Prototype];
            all.extend(linear);
            if n >= MLP_EXAMPLES_PER_LABEL * plan.present {
                all.push(mlp);
            }
            all
        }
    }
}

/// The head trained when nothing could be validated: the kind asked for,
/// with its middle setting, else the prototype head.
pub(crate) fn unvalidated_choice(plan: &Plan<'_>) -> CandidateHead {
    match plan.options.head {
        HeadChoice::Only(HeadKind::Linear) => {
            CandidateHead::Linear { pull: plan.options.weight_decay.unwrap_or(LINEAR_PULLS[1]) }
        }
        HeadChoice::Only(HeadKind::Mlp) => CandidateHead::Mlp { decay: plan.options.weight_decay.unwrap_or(MLP_DECAY) },
        _ => CandidateHead::Prototype,
    }
}

/// A fitted candidate and the epochs its fit ran.
pub(crate) struct FittedCandidate {
    pub params: Params,
    pub epochs: usize,
}

/// Fits `candidate` on `train`; with `validation`, early stopping watches it.
pub(crate) fn fit_candidate(
    plan: &Plan<'_>,
    candidate: CandidateHead,
    train: &Data,
    validation: Option<&Data>,
    budget: &Budget,
    listener: &dyn TrainListener,
) -> Result<FittedCandidate> {
    let prototypes = prototypes(plan, train);
    let initial = match candidate {
        CandidateHead::Prototype => {
            return Ok(FittedCandidate {
                params: Params::Prototype { centroids: prototypes, scale: PROTOTYPE_SCALE },
                epochs: 0,
            });
        }
        CandidateHead::Linear { .. } | CandidateHead::PrivateLinear { .. } => {
            let (weights, bias) = linear_start(plan, prototypes);
            Params::Linear { weights, bias }
        }
        CandidateHead::Mlp { .. } => mlp_start(plan, prototypes),
    };
    let settings = FitSettings {
        epochs: plan.epochs,
        batch_size: plan.batch_size,
        learning_rate: plan.learning_rate,
        weight_decay: candidate.decay(),
        label_smoothing: plan.options.label_smoothing,
        optimizer: plan.options.optimizer,
        seed: plan.options.seed,
        early_stopping: validation.is_some() && plan.options.epochs.is_none(),
        // The linear head is pulled towards its start; the MLP's hidden layer towards zero.
        anchored: candidate.kind() == HeadKind::Linear,
    };
    let fitted = fit(&initial, train, validation, &settings, budget, listener, candidate)?;
    Ok(FittedCandidate { params: fitted.params, epochs: fitted.epochs })
}

/// Unit-length prototypes per label: the sum of its training examples plus
/// its description's embedding counted as `PRIOR_WEIGHT` examples, so one
/// noisy example does not drown the description, and many examples do;
/// zero when a label has neither.
fn prototypes(plan: &Plan<'_>, train: &Data) -> Array2<f32> {
    let found = class_sums(train.features.view(), &train.labels, plan.classes);
    let mut rows = Array2::zeros((plan.classes, plan.set.dim));
    for (c, sum) in found.into_iter().enumerate() {
        let prior = plan.set.priors.get(c).and_then(Option::as_ref).map(|p| unit(Array1::from_vec(p.clone())));
        let combined = match (sum, prior) {
            (Some(a), Some(b)) => Some(unit(a + b * PRIOR_WEIGHT)),
            (a, b) => a.map(unit).or(b),
        };
        if let Some(v) = combined {
            rows.row_mut(c).assign(&v);
        }
    }
    rows
}

/// Unit class prototypes of `data` alone (`classes × dim`); zero rows for
/// absent labels. The novelty check compares inputs with them.
pub(crate) fn example_prototypes(data: &Data, classes: usize) -> Array2<f32> {
    let mut rows = Array2::zeros((classes, data.features.ncols()));
    for (c, sum) in class_sums(data.features.view(), &data.labels, classes).into_iter().enumerate() {
        if let Some(sum) = sum {
            rows.row_mut(c).assign(&unit(sum));
        }
    }
    rows
}

/// The warm start when it is a head for the same backbone and width.
fn usable_warm_start<'a>(plan: &Plan<'a>) -> Option<&'a Head> {
    plan.warm_start.filter(|head| head.dim == plan.set.dim && head.fingerprint == plan.set.fingerprint)
}

/// Row of `label` in the warm start's label list.
fn old_row(head: &Head, label: &str) -> Option<usize> {
    head.labels.iter().position(|l| l == label)
}

/// The linear head's start: the previous head's weights for labels it knew
/// (retraining), scaled prototypes for the others: weights and bias.
fn linear_start(plan: &Plan<'_>, prototypes: Array2<f32>) -> (Array2<f32>, Array1<f32>) {
    let mut weights = prototypes * PROTOTYPE_SCALE;
    let mut bias = Array1::zeros(plan.classes);
    if let Some(head) = usable_warm_start(plan)
        && let Params::Linear { weights: old_w, bias: old_b } = &head.params
    {
        for (c, name) in plan.set.label_names.iter().enumerate() {
            if let Some(old) = old_row(head, name) {
                weights.row_mut(c).assign(&old_w.row(old));
                bias[c] = old_b[old];
            }
        }
    }
    (weights, bias)
}

/// The MLP head's start: a hidden layer around the linear start (its skip
/// connection); when retraining an MLP of the same shape, that head's
/// weights, row by row for the labels it knew.
fn mlp_start(plan: &Plan<'_>, prototypes: Array2<f32>) -> Params {
    let (weights, bias) = linear_start(plan, prototypes);
    let mut start = mlp_around(weights, bias, plan.options.mlp_hidden, plan.options.seed);
    if let (Params::Mlp { w1, b1, w2, b2, skip: Some(skip) }, Some(head)) = (&mut start, usable_warm_start(plan))
        && let Params::Mlp { w1: old_w1, b1: old_b1, w2: old_w2, b2: old_b2, skip: Some(old_skip) } = &head.params
        && old_w1.dim() == w1.dim()
    {
        w1.assign(old_w1);
        b1.assign(old_b1);
        for (c, name) in plan.set.label_names.iter().enumerate() {
            if let Some(old) = old_row(head, name) {
                w2.row_mut(c).assign(&old_w2.row(old));
                skip.row_mut(c).assign(&old_skip.row(old));
                b2[c] = old_b2[old];
            }
        }
    }
    start
}

/// Logits of bare parameters (no calibration) for `features`.
pub(crate) fn logits_of(params: &Params, features: ArrayView2<'_, f32>) -> Array2<f32> {
    Head::new("", Vec::new(), params.clone()).logits(features)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::{TrainOptions, TrainingSet};

    #[test]
    fn an_mlp_retrains_from_the_previous_mlp_label_by_label() {
        let (dim, hidden) = (4, 3);
        let ramp = |rows: usize, cols: usize, base: f32| {
            Array2::from_shape_fn((rows, cols), |(i, j)| base + (i * cols + j) as f32)
        };
        let previous = Head::new(
            "fp",
            vec!["a".into(), "b".into()],
            Params::Mlp {
                w1: ramp(hidden, dim, 100.0),
                b1: Array1::from_vec(vec![1.0, 2.0, 3.0]),
                w2: ramp(2, hidden, 200.0),
                b2: Array1::from_vec(vec![-1.0, -2.0]),
                skip: Some(ramp(2, dim, 300.0)),
            },
        );
        // Labels reordered, and one the previous head never knew.
        let names: Vec<String> = ["b", "new", "a"].map(String::from).to_vec();
        let features = vec![0.0; 3 * dim];
        let set = TrainingSet {
            features: &features,
            dim,
            labels: &[0, 1, 2],
            weights: None,
            label_names: &names,
            priors: &[],
            fingerprint: "fp",
        };
        let options = TrainOptions { mlp_hidden: hidden, ..TrainOptions::default() };
        let data = Data::checked(&set, &options).unwrap();
        let plan = Plan::new(&set, Some(&previous), &options, &data);
        let prototypes = Array2::from_elem((3, dim), 0.5);
        let Params::Mlp { w1, b1, w2, b2, skip: Some(skip) } = mlp_start(&plan, prototypes) else { panic!("an MLP") };
        let Params::Mlp { w1: old_w1, b1: old_b1, w2: old_w2, b2: old_b2, skip: Some(old_skip) } = &previous.params
        else {
            unreachable!()
        };
        assert_eq!((&w1, &b1), (old_w1, old_b1));
        for (row, old) in [(0, 1), (2, 0)] {
            assert_eq!(w2.row(row), old_w2.row(old));
            assert_eq!(skip.row(row), old_skip.row(old));
            assert_eq!(b2[row], old_b2[old]);
        }
        // The new label starts from its prototype, like a linear head.
        assert!(skip.row(1).iter().all(|&v| v == 0.5 * PROTOTYPE_SCALE));
        assert_eq!(b2[1], 0.0);

        // Another hidden size: a fresh start around the linear start.
        let other = TrainOptions { mlp_hidden: hidden + 1, ..TrainOptions::default() };
        let Params::Mlp { w1, .. } = mlp_start(&Plan { options: &other, ..plan }, Array2::from_elem((3, dim), 0.5))
        else {
            panic!("an MLP")
        };
        assert_eq!(w1.nrows(), hidden + 1);
    }
}

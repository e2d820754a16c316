//! Training that adapts the backbone's top layers before the head: whether
//! a run adapts, the examples' trunk states (cached with their rows), the
//! adaptation itself on a stratified split whose held-out part judges it,
//! and the adapted features that training and prediction use.
//!
//! The held-out examples are never seen by the adaptation, so a head on the
//! adapted features and one on the frozen features can be compared on them
//! fairly; the adapted head's predictions there are also its evidence for
//! promotion. The final head is trained on all examples' adapted features.

use std::time::Instant;

use half::f16;

use super::features::Features;
use super::training_data::{TrainingData, rows_of};
use crate::encoder::{Encoder, SILENT, TokenStates};
use crate::error::{Error, Result};
use crate::evaluation::{Metrics, evaluate};
use crate::heads::{HeadKind, TopChanges};
use crate::numeric::argmax;
use crate::store::{TrunkKey, TrunkStateRows};
use crate::training::{
    AdaptChoice, AdaptOptions, AdaptationReport, AdaptedTop, HeadChoice, QuietTraining, TrainListener, TrainOptions,
    TrunkStates, holdout, train,
};

/// Share of each label's examples held out to judge the adaptation.
const HOLDOUT_FRACTION: f32 = 0.15;
/// The automatic choice adapts only while the labels have at most this
/// many examples each on average. Adaptation is a few-shot gain that
/// vanishes with more data, where a held-out margin as small as the real
/// gains at 10 per label is noise (docs/training.md, "Adapting the top layers").
const AUTO_MAX_MEAN_PER_LABEL: usize = 50;
/// The automatic choice adapts only when every label has this many
/// examples: fewer leave a held-out set too small to tell the two apart.
const AUTO_MIN_PER_LABEL: usize = 5;

/// A run's adapted top and what it gives the head.
pub(super) struct Adapted {
    pub changes: TopChanges,
    /// Every example's adapted sentence vector, row after row.
    pub features: Vec<f32>,
    /// Label descriptions through the adapted top.
    pub priors: Vec<Option<Vec<f32>>>,
    /// Held-out rows, the adapted candidate's prediction for each, and its
    /// metrics there (the head's validation evidence).
    pub held_out: Vec<usize>,
    pub predictions: Vec<usize>,
    pub metrics: Metrics,
    pub report: AdaptationReport,
}

/// What the adaptation step of a run decided.
pub(super) enum Decision {
    Adapted(Box<Adapted>),
    /// The head is trained on frozen features; the report says why, when
    /// adaptation was allowed.
    Frozen(Option<AdaptationReport>),
}

/// Adapts the model's top layers to the task's examples when `options`
/// allow it and it helps (see `AdaptChoice`). A task trained with
/// differential privacy or following a shared model is refused when
/// adaptation is forced, and skipped otherwise.
pub(super) fn adapt_for_training(
    features: Features<'_>,
    data: &TrainingData,
    options: &TrainOptions,
    follows_shared_model: bool,
    listener: &dyn TrainListener,
) -> Result<Decision> {
    let layers = options.adapt_layers;
    let forced = options.adapt == AdaptChoice::Always;
    let skip = |reason: String| Ok(Decision::Frozen(Some(AdaptationReport::skipped(layers, reason))));
    if options.adapt == AdaptChoice::Never {
        return Ok(Decision::Frozen(None));
    }
    if let Some(reason) = refusal(options, follows_shared_model) {
        return if forced {
            Err(Error::InvalidInput(format!("cannot adapt the top layers: {reason}")))
        } else {
            skip(reason)
        };
    }
    let (train_rows, held_out) = holdout(&data.label_index, data.labels.len(), HOLDOUT_FRACTION, options.seed);
    if let Some(reason) = example_counts_unsuited(data, &train_rows, forced) {
        return skip(reason);
    }
    let encoder = features.encoder;
    let frozen = match AdaptedTop::of(encoder, layers) {
        Err(Error::CannotAdapt(reason)) if !forced => return skip(reason),
        other => other?,
    };
    let started = Instant::now();
    let texts: Vec<&str> = data.texts.iter().map(String::as_str).collect();
    let states = example_trunk_states(features, layers, &texts)?;
    let train_labels: Vec<usize> = train_rows.iter().map(|&r| data.label_index[r]).collect();
    let settings = AdaptOptions { seed: options.seed, ..options.adaptation.clone() };
    let deadline = options.time_budget.map(|budget| started + budget);
    let should_stop = || listener.is_cancelled() || deadline.is_some_and(|d| Instant::now() >= d);
    let adapted = frozen.adapt(&states.select(&train_rows), &train_labels, &settings, &should_stop)?;
    if listener.is_cancelled() {
        return Err(Error::Cancelled);
    }
    let changes = match adapted.changes_from(&frozen) {
        Err(Error::CannotAdapt(reason)) if !forced => return skip(reason),
        other => other?,
    };
    let features = adapted.embed(&states)?;
    let judged = judge(data, &features, &train_rows, &held_out, encoder.fingerprint(), options.seed)?;
    let report = AdaptationReport {
        adapted: true,
        skipped: None,
        layers,
        steps: adapted.steps,
        trained_values: changes.values() as u64,
        first_loss: Some(adapted.first_loss),
        last_loss: Some(adapted.last_loss),
        holdout_rows: held_out.len() as u64,
        frozen_accuracy: Some(judged.frozen.accuracy),
        adapted_accuracy: Some(judged.adapted.accuracy),
        frozen_log_loss: Some(judged.frozen.log_loss),
        adapted_log_loss: Some(judged.adapted.log_loss),
        adapt_ms: started.elapsed().as_millis() as u64,
    };
    if !forced && !judged.favours_adapted() {
        let reason = format!(
            "on {} held-out examples a head on adapted features had a log loss of {:.4} (right {:.2}% of the \
                 time), on frozen ones {:.4} ({:.2}%)",
            held_out.len(),
            judged.adapted.log_loss,
            100.0 * judged.adapted.accuracy,
            judged.frozen.log_loss,
            100.0 * judged.frozen.accuracy
        );
        return Ok(Decision::Frozen(Some(AdaptationReport { adapted: false, skipped: Some(reason), ..report })));
    }
    let priors = adapted_priors(encoder, &adapted, data)?;
    Ok(Decision::Adapted(Box::new(Adapted {
        changes,
        features,
        priors,
        held_out,
        predictions: judged.predictions,
        metrics: judged.adapted,
        report,
    })))
}

/// The examples' states below the top `layers` layers: cached ones, the
/// rest computed now and cached (examples' texts only).
fn example_trunk_states(features: Features<'_>, layers: usize, texts: &[&str]) -> Result<TrunkStates> {
    let key = TrunkKey { fingerprint: features.fingerprint(), layers };
    let mut states: Vec<Option<TokenStates>> =
        features.store.cached_trunk_states(key, texts)?.into_iter().map(|hit| hit.map(from_rows)).collect();
    let missing: Vec<usize> = (0..texts.len()).filter(|&i| states[i].is_none()).collect();
    if !missing.is_empty() {
        let missing_texts: Vec<&str> = missing.iter().map(|&i| texts[i]).collect();
        let fresh = trunk_states(features.encoder, &missing_texts, layers)?;
        let rows: Vec<TrunkStateRows> = fresh.iter().map(to_rows).collect();
        let entries: Vec<(&str, &TrunkStateRows)> = missing_texts.iter().copied().zip(&rows).collect();
        features.store.cache_trunk_states(key, &entries)?;
        for (i, state) in missing.into_iter().zip(fresh) {
            states[i] = Some(state);
        }
    }
    TrunkStates::from_states(layers, states.into_iter().map(|s| s.expect("filled")).collect())
}

/// Adapted features of stored examples' texts (their trunk states cached).
pub(super) fn stored_adapted_features(features: Features<'_>, top: &AdaptedTop, texts: &[&str]) -> Result<Vec<f32>> {
    top.embed(&example_trunk_states(features, top.layers(), texts)?)
}

fn adapted_priors(encoder: &dyn Encoder, top: &AdaptedTop, data: &TrainingData) -> Result<Vec<Option<Vec<f32>>>> {
    let mut priors = vec![None; data.labels.len()];
    if data.described.is_empty() {
        return Ok(priors);
    }
    let texts: Vec<&str> = data.described.iter().map(|(_, text)| text.as_str()).collect();
    let vectors = adapted_features(encoder, top, &texts)?;
    for ((label, _), row) in data.described.iter().zip(vectors.chunks_exact(encoder.dim())) {
        priors[*label] = Some(row.to_vec());
    }
    Ok(priors)
}

/// Sentence vectors of texts the app asks about, through `top`: their
/// trunk states are computed for the call and never stored.
pub(super) fn adapted_features(encoder: &dyn Encoder, top: &AdaptedTop, texts: &[&str]) -> Result<Vec<f32>> {
    top.embed(&TrunkStates::from_states(top.layers(), trunk_states(encoder, texts, top.layers())?)?)
}

/// States as the cache keeps them (f16), so that a run on fresh states and
/// one on cached states give the same result.
fn trunk_states(encoder: &dyn Encoder, texts: &[&str], layers: usize) -> Result<Vec<TokenStates>> {
    let mut states = encoder.trunk_states(texts, layers, &SILENT)?;
    for value in states.iter_mut().flat_map(|state| state.values.iter_mut()) {
        *value = f16::from_f32(*value).to_f32();
    }
    Ok(states)
}

fn from_rows(rows: TrunkStateRows) -> TokenStates {
    TokenStates { tokens: rows.tokens, width: rows.width, values: rows.values }
}

fn to_rows(state: &TokenStates) -> TrunkStateRows {
    TrunkStateRows { tokens: state.tokens, width: state.width, values: state.values.clone() }
}

/// Why adaptation is not for this task at all.
fn refusal(options: &TrainOptions, follows_shared_model: bool) -> Option<String> {
    if options.privacy.is_some() {
        return Some("the task is trained with differential privacy, and adapted layers would not be private".into());
    }
    follows_shared_model.then(|| "the task follows a shared model from federated rounds, over frozen features".into())
}

/// Why the examples are too few to adapt on (or, for the automatic
/// choice, to judge the adaptation, or so many that it would not help).
fn example_counts_unsuited(data: &TrainingData, train_rows: &[usize], forced: bool) -> Option<String> {
    let mut counts = vec![0usize; data.labels.len()];
    train_rows.iter().for_each(|&r| counts[data.label_index[r]] += 1);
    if counts.iter().filter(|&&c| c >= 2).count() < 2 {
        return Some("fewer than two labels have pairs of examples to contrast after the held-out share".into());
    }
    if forced {
        return None;
    }
    let mut all = vec![0usize; data.labels.len()];
    data.label_index.iter().for_each(|&l| all[l] += 1);
    let fewest = all.iter().copied().filter(|&c| c > 0).min().unwrap_or(0);
    if fewest < AUTO_MIN_PER_LABEL {
        return Some(format!(
            "a label has {fewest} examples; adapting needs {AUTO_MIN_PER_LABEL} of each to be judged"
        ));
    }
    let mean = data.label_index.len() / all.iter().filter(|&&c| c > 0).count().max(1);
    (mean > AUTO_MAX_MEAN_PER_LABEL).then(|| {
        format!(
            "the labels have {mean} examples each on average: above {AUTO_MAX_MEAN_PER_LABEL}, a head on frozen \
             features does as well"
        )
    })
}

/// How linear heads on the frozen and on the adapted features did on the
/// held-out rows.
struct Judged {
    frozen: Metrics,
    adapted: Metrics,
    /// The adapted head's prediction for each held-out row.
    predictions: Vec<usize>,
}

impl Judged {
    /// The adapted features validate better: a lower log loss on the
    /// held-out rows. A few hundred rows decide accuracy by a handful of
    /// examples, and the log loss, which weighs every row's probability,
    /// told CLINC150 k = 10's seeds apart where accuracy did not (docs/training.md,
    /// "Adapting the top layers").
    fn favours_adapted(&self) -> bool {
        self.adapted.log_loss < self.frozen.log_loss
    }
}

fn judge(
    data: &TrainingData,
    adapted: &[f32],
    train_rows: &[usize],
    held_out: &[usize],
    fingerprint: &str,
    seed: u64,
) -> Result<Judged> {
    let options = TrainOptions {
        head: HeadChoice::Only(HeadKind::Linear),
        adapt: AdaptChoice::Never,
        seed,
        ..TrainOptions::default()
    };
    let truth: Vec<usize> = held_out.iter().map(|&r| data.label_index[r]).collect();
    let probabilities = |features: &[f32]| -> Result<Vec<f32>> {
        let subset = data.subset(features, train_rows);
        let (head, _) = train(&subset.set(fingerprint), None, &options, &QuietTraining)?;
        head.probabilities(&rows_of(features, data.dim, held_out))
    };
    let frozen = probabilities(&data.features)?;
    let frozen = evaluate(&frozen, &truth, &data.labels);
    let adapted = probabilities(adapted)?;
    let predictions = adapted.chunks_exact(data.labels.len()).map(|row| argmax(row).0).collect();
    Ok(Judged { frozen, adapted: evaluate(&adapted, &truth, &data.labels), predictions })
}

//! Personalised ranking from feedback:
//! `score(q, d) = cos(q, d) + u · d + memory(q, d)`, where the preference
//! vector `u` is fitted to the user's feedback with a pairwise logistic loss
//! and an L2 penalty, and `memory` recalls what the user did with `d` for
//! queries like `q` (a query-conditioned click history: the same reply for
//! the same kind of message). With no feedback both are zero and the ranking
//! is exactly plain semantic search.

use std::collections::HashMap;

use crate::store::{FeedbackEvent, Signal};

/// L2 penalty on `u`: strong enough that a handful of clicks nudges rather
/// than overturns the semantic order.
const PENALTY: f32 = 1.0;
const STEPS: usize = 200;
/// Units of evidence (queries with choices) needed before `u` is fitted and
/// validated.
const MIN_UNITS: usize = 4;
/// Seconds of dwell that count as interest.
const DWELL_POSITIVE: f64 = 10.0;

/// How much one remembered choice moves a document, at full query similarity.
const WANTED_BOOST: f32 = 0.3;
const UNWANTED_PENALTY: f32 = 0.03;
/// Queries less similar than this to a remembered one recall nothing of it.
const RECALL_FROM: f32 = 0.4;
/// Remembered choices add up to at most this, either way.
const MAX_RECALL: f32 = 0.3;

/// A learned preference; empty without feedback.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Preference {
    pub u: Vec<f32>,
    pub pairs: usize,
    /// Per document key: (query vector, weight) of each choice made about it.
    pub memory: HashMap<String, Vec<(Vec<f32>, f32)>>,
}

impl Preference {
    /// What the user's earlier choices about `key`, for queries like
    /// `query`, add to its score.
    pub fn recall(&self, query: &[f32], key: &str) -> f32 {
        let Some(choices) = self.memory.get(key) else { return 0.0 };
        let total: f32 = choices
            .iter()
            .map(|(past, weight)| weight * ((dot(query, past) - RECALL_FROM) / (1.0 - RECALL_FROM)).max(0.0))
            .sum();
        total.clamp(-MAX_RECALL, MAX_RECALL)
    }
}

/// Remembers every choice made for a query: wanted ones up, unwanted down.
fn remember(
    events: &[FeedbackEvent],
    query_vector: &dyn Fn(&str) -> Option<Vec<f32>>,
) -> HashMap<String, Vec<(Vec<f32>, f32)>> {
    let mut memory: HashMap<String, Vec<(Vec<f32>, f32)>> = HashMap::new();
    for event in events {
        let weight = match polarity(event.signal) {
            Some(true) => WANTED_BOOST,
            Some(false) => -UNWANTED_PENALTY,
            None => continue,
        };
        if let Some(q) = event.query.as_deref().and_then(query_vector) {
            memory.entry(event.document_key.clone()).or_default().push((q, weight));
        }
    }
    memory
}

/// Whether a signal says the user wanted the document (`Some(true)`), did not
/// (`Some(false)`), or says nothing on its own (`None`: an impression).
fn polarity(signal: Signal) -> Option<bool> {
    match signal {
        Signal::Click => Some(true),
        Signal::Skip => Some(false),
        Signal::Dwell(seconds) => Some(seconds >= DWELL_POSITIVE),
        Signal::Rating(stars) if stars >= 4.0 => Some(true),
        Signal::Rating(stars) if stars <= 2.0 => Some(false),
        Signal::Rating(_) | Signal::Impression => None,
    }
}

/// One choice: a wanted document against one shown but not wanted.
struct Pair {
    /// d⁺ − d⁻ without its part along the query: what the query explains
    /// is not taste.
    orthogonal: Vec<f32>,
    /// d⁺ − d⁻ as it is, for scoring.
    raw: Vec<f32>,
    /// cos(q, d⁺) − cos(q, d⁻).
    margin: f32,
}

/// Fits the preference from feedback. `vector(key)` gives a document's
/// vector and `query_vector(text)` a query's; pairs are formed within each
/// query (or among query-less recommendation feedback): every document the
/// user wanted against every one shown but not wanted. `u` is kept only when,
/// fitted on the older queries, it orders the user's choices on the newest
/// ones better than plain search does; otherwise it stays zero.
pub(crate) fn fit_preference(
    events: &[FeedbackEvent],
    dim: usize,
    vector: &dyn Fn(&str) -> Option<Vec<f32>>,
    query_vector: &dyn Fn(&str) -> Option<Vec<f32>>,
) -> Preference {
    // Queries in the order of their latest event, so the last are the newest.
    let mut order: Vec<Option<&str>> = Vec::new();
    let mut groups: HashMap<Option<&str>, (Vec<&str>, Vec<&str>)> = HashMap::new();
    for event in events {
        let query = event.query.as_deref();
        order.retain(|q| *q != query);
        order.push(query);
        let (wanted, shown) = groups.entry(query).or_default();
        match polarity(event.signal) {
            Some(true) => wanted.push(&event.document_key),
            Some(false) | None => shown.push(&event.document_key),
        }
    }
    // Units of evidence: each query's choices; without a query, each
    // wanted document's.
    let mut units: Vec<Vec<Pair>> = Vec::new();
    for query in order {
        let (wanted, shown) = &groups[&query];
        let q = query.and_then(query_vector);
        let mut unit = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for positive in wanted {
            if seen.contains(positive) {
                continue;
            }
            seen.push(positive);
            for negative in shown.iter().filter(|n| !wanted.contains(n)) {
                let (Some(p), Some(n)) = (vector(positive), vector(negative)) else { continue };
                unit.push(pair(q.as_deref(), &p, &n));
            }
            if query.is_none() && !unit.is_empty() {
                units.push(std::mem::take(&mut unit));
            }
        }
        if !unit.is_empty() {
            units.push(unit);
        }
    }
    let memory = remember(events, query_vector);
    let all: Vec<&Pair> = units.iter().flatten().collect();
    let zero = vec![0.0f32; dim];
    let u = if units.len() < MIN_UNITS {
        zero
    } else {
        let held_out = (units.len() / 4).max(1);
        let (older, newer) = units.split_at(units.len() - held_out);
        let older: Vec<&Pair> = older.iter().flatten().collect();
        let newer: Vec<&Pair> = newer.iter().flatten().collect();
        if clearly_better(&newer, &solve(&older, dim)) { solve(&all, dim) } else { zero }
    };
    Preference { u, pairs: all.len(), memory }
}

fn pair(q: Option<&[f32]>, p: &[f32], n: &[f32]) -> Pair {
    let margin = q.map_or(0.0, |q| dot(q, p) - dot(q, n));
    let raw: Vec<f32> = p.iter().zip(n).map(|(a, b)| a - b).collect();
    let mut orthogonal = raw.clone();
    if let Some(q) = q {
        let along = dot(&orthogonal, q) / dot(q, q).max(1e-12);
        orthogonal.iter_mut().zip(q).for_each(|(d, x)| *d -= along * x);
    }
    Pair { orthogonal, raw, margin }
}

/// Whether `u` orders the held-out `pairs` better than plain search beyond
/// chance: of the pairs on which the two disagree, `u` must win clearly more
/// (a sign test at about two standard deviations). A handful of lucky
/// queries must not turn on a preference that then misranks everything.
fn clearly_better(pairs: &[&Pair], u: &[f32]) -> bool {
    let (mut wins, mut losses) = (0.0f64, 0.0f64);
    for pair in pairs {
        let plain = pair.margin > 0.0;
        let personal = pair.margin + dot(u, &pair.raw) > 0.0;
        match (personal, plain) {
            (true, false) => wins += 1.0,
            (false, true) => losses += 1.0,
            _ => {}
        }
    }
    wins - losses >= 2.0 * (wins + losses).sqrt() && wins > losses
}

/// Minimises the mean pairwise logistic loss plus the L2 penalty.
fn solve(pairs: &[&Pair], dim: usize) -> Vec<f32> {
    let mut u = vec![0.0f32; dim];
    if pairs.is_empty() {
        return u;
    }
    // The mean pairwise logistic loss has a gradient Lipschitz constant of at
    // most max‖Δ‖²/4; with the penalty's 2λ this step size cannot diverge.
    let max_sq = pairs.iter().map(|p| dot(&p.orthogonal, &p.orthogonal)).fold(0.0f32, f32::max);
    let step = 1.0 / (2.0 * PENALTY + 0.25 * max_sq);
    for _ in 0..STEPS {
        let mut gradient: Vec<f32> = u.iter().map(|x| 2.0 * PENALTY * x).collect();
        for pair in pairs {
            let z = pair.margin + dot(&u, &pair.orthogonal);
            // d/du of log(1 + exp(-z)) = -sigmoid(-z) · difference.
            let weight = 1.0 / (1.0 + z.exp()) / pairs.len() as f32;
            gradient.iter_mut().zip(&pair.orthogonal).for_each(|(g, d)| *g -= weight * d);
        }
        u.iter_mut().zip(&gradient).for_each(|(x, g)| *x -= step * g);
    }
    u
}

/// Dot product with eight independent sums, so the compiler can vectorise it.
pub(crate) fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut sums = [0.0f32; 8];
    let (a_chunks, b_chunks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_chunks.remainder().iter().zip(b_chunks.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a_chunks.zip(b_chunks) {
        for lane in 0..8 {
            sums[lane] += x[lane] * y[lane];
        }
    }
    sums.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(query: Option<&str>, key: &str, signal: Signal) -> FeedbackEvent {
        FeedbackEvent { id: 0, query: query.map(str::to_string), document_key: key.into(), signal, created_at: 0 }
    }

    #[test]
    fn no_feedback_means_no_preference() {
        let preference = fit_preference(&[], 3, &|_| None, &|_| None);
        assert_eq!(preference.u, vec![0.0; 3]);
    }

    /// Documents `a0..a4` lie along x, `b0..b4` along y.
    fn vectors(key: &str) -> Option<Vec<f32>> {
        match key.as_bytes().first() {
            Some(b'a') => Some(vec![1.0, 0.0]),
            Some(b'b') => Some(vec![0.0, 1.0]),
            _ => None,
        }
    }

    #[test]
    fn consistent_choices_point_the_preference_at_what_was_wanted() {
        // Five recommendation rounds: an `a` clicked, a `b` skipped each time.
        let events: Vec<FeedbackEvent> = (0..5)
            .flat_map(|i| {
                [
                    event(None, &format!("b{i}"), Signal::Impression),
                    event(None, &format!("a{i}"), Signal::Click),
                    event(None, &format!("b{i}"), Signal::Skip),
                ]
            })
            .collect();
        let preference = fit_preference(&events, 2, &vectors, &|_| None);
        assert!(preference.pairs > 0);
        assert!(preference.u[0] > 0.0 && preference.u[1] < 0.0, "{:?}", preference.u);
    }

    #[test]
    fn too_little_or_contradicted_evidence_leaves_no_preference() {
        let round = |i: usize, wanted: &str, unwanted: &str| {
            [event(None, &format!("{wanted}{i}"), Signal::Click), event(None, &format!("{unwanted}{i}"), Signal::Skip)]
        };
        let few: Vec<FeedbackEvent> = (0..3).flat_map(|i| round(i, "a", "b")).collect();
        assert_eq!(fit_preference(&few, 2, &vectors, &|_| None).u, vec![0.0; 2], "three choices are not enough");
        // Four rounds one way, then the newest the other way: not confirmed.
        let mut changed: Vec<FeedbackEvent> = (0..4).flat_map(|i| round(i, "a", "b")).collect();
        changed.extend(round(4, "b", "a"));
        assert_eq!(fit_preference(&changed, 2, &vectors, &|_| None).u, vec![0.0; 2]);
    }

    #[test]
    fn a_remembered_choice_is_recalled_for_similar_queries_only() {
        let query = |text: &str| match text {
            "where are you" => Some(vec![1.0, 0.0]),
            _ => None,
        };
        let events =
            [event(Some("where are you"), "late", Signal::Click), event(Some("where are you"), "home", Signal::Skip)];
        let preference = fit_preference(&events, 2, &|_| Some(vec![0.0, 1.0]), &query);
        assert!(preference.recall(&[1.0, 0.0], "late") > 0.2);
        assert!(preference.recall(&[1.0, 0.0], "home") < 0.0);
        let unrelated = [0.0, 1.0];
        assert_eq!(preference.recall(&unrelated, "late"), 0.0);
        assert_eq!(preference.recall(&[1.0, 0.0], "never chosen"), 0.0);
    }

    #[test]
    fn dot_matches_the_plain_sum() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.1).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-4);
    }
}

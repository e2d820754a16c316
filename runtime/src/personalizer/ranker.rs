//! Personalised ranking from feedback: `score(q, d) = cos(q, d) + u · d`,
//! where the preference vector `u` is fitted to the user's feedback with a
//! pairwise logistic loss and an L2 penalty. With no feedback `u` is zero and
//! the ranking is exactly plain semantic search.

use std::collections::HashMap;

use crate::store::{FeedbackEvent, Signal};

/// L2 penalty on `u`: strong enough that a handful of clicks nudges rather
/// than overturns the semantic order.
const PENALTY: f32 = 1.0;
const STEPS: usize = 200;
/// Seconds of dwell that count as interest.
const DWELL_POSITIVE: f64 = 10.0;

/// A learned preference; all zeros without feedback.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Preference {
    pub u: Vec<f32>,
    pub pairs: usize,
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

/// Fits `u` from feedback. `vector(key)` gives a document's vector and
/// `query_vector(text)` a query's; pairs are formed within each query (or
/// among query-less recommendation feedback): every document the user wanted
/// against every one shown but not wanted.
pub(crate) fn fit(
    events: &[FeedbackEvent],
    dim: usize,
    vector: &dyn Fn(&str) -> Option<Vec<f32>>,
    query_vector: &dyn Fn(&str) -> Option<Vec<f32>>,
) -> Preference {
    let mut groups: HashMap<Option<&str>, (Vec<&str>, Vec<&str>)> = HashMap::new();
    for event in events {
        let (wanted, shown) = groups.entry(event.query.as_deref()).or_default();
        match polarity(event.signal) {
            Some(true) => wanted.push(&event.document_key),
            Some(false) | None => shown.push(&event.document_key),
        }
    }
    // (difference d⁺ − d⁻, semantic margin cos(q, d⁺) − cos(q, d⁻)).
    let mut pairs: Vec<(Vec<f32>, f32)> = Vec::new();
    for (query, (wanted, shown)) in &groups {
        let q = query.and_then(query_vector);
        for positive in wanted {
            for negative in shown.iter().filter(|n| !wanted.contains(n)) {
                let (Some(p), Some(n)) = (vector(positive), vector(negative)) else { continue };
                let margin = q.as_ref().map_or(0.0, |q| dot(q, &p) - dot(q, &n));
                let mut difference: Vec<f32> = p.iter().zip(&n).map(|(a, b)| a - b).collect();
                // What the query explains is not taste: keep only the part of
                // the difference orthogonal to the query.
                if let Some(q) = &q {
                    let along = dot(&difference, q) / dot(q, q).max(1e-12);
                    difference.iter_mut().zip(q).for_each(|(d, x)| *d -= along * x);
                }
                pairs.push((difference, margin));
            }
        }
    }
    let mut u = vec![0.0f32; dim];
    if pairs.is_empty() {
        return Preference { u, pairs: 0 };
    }
    // The mean pairwise logistic loss has a gradient Lipschitz constant of at
    // most max‖Δ‖²/4; with the penalty's 2λ this step size cannot diverge.
    let max_sq = pairs.iter().map(|(d, _)| dot(d, d)).fold(0.0f32, f32::max);
    let step = 1.0 / (2.0 * PENALTY + 0.25 * max_sq);
    for _ in 0..STEPS {
        let mut gradient: Vec<f32> = u.iter().map(|x| 2.0 * PENALTY * x).collect();
        for (difference, margin) in &pairs {
            let z = margin + dot(&u, difference);
            // d/du of log(1 + exp(-z)) = -sigmoid(-z) · difference.
            let weight = 1.0 / (1.0 + z.exp()) / pairs.len() as f32;
            gradient.iter_mut().zip(difference).for_each(|(g, d)| *g -= weight * d);
        }
        u.iter_mut().zip(&gradient).for_each(|(x, g)| *x -= step * g);
    }
    Preference { u, pairs: pairs.len() }
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
        let preference = fit(&[], 3, &|_| None, &|_| None);
        assert_eq!(preference.u, vec![0.0; 3]);
    }

    #[test]
    fn clicks_over_skips_point_the_preference_at_what_was_wanted() {
        let vectors = |key: &str| match key {
            "a" => Some(vec![1.0, 0.0]),
            "b" => Some(vec![0.0, 1.0]),
            _ => None,
        };
        let events = [
            event(None, "b", Signal::Impression),
            event(None, "a", Signal::Click),
            event(None, "b", Signal::Skip),
            event(None, "a", Signal::Rating(5.0)),
        ];
        let preference = fit(&events, 2, &vectors, &|_| None);
        assert!(preference.pairs > 0);
        assert!(preference.u[0] > 0.0 && preference.u[1] < 0.0, "{:?}", preference.u);
    }

    #[test]
    fn dot_matches_the_plain_sum() {
        let a: Vec<f32> = (0..19).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..19).map(|i| 1.0 - i as f32 * 0.1).collect();
        let plain: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - plain).abs() < 1e-4);
    }
}

//! Differential privacy for the linear head: DP-SGD (Abadi et al. 2016) with
//! Poisson sampling, per-example clipping and Gaussian noise, and a Rényi
//! DP accountant for the sampled Gaussian mechanism (Mironov et al. 2019).
//!
//! The accountant uses integer orders 2..=256 and the conversion to
//! (ε, δ) of Balle et al. 2020, as Opacus and Google's dp-accounting do.

use serde::Serialize;

/// Rényi orders the accountant evaluates.
const ORDERS: std::ops::RangeInclusive<u32> = 2..=256;

/// One private training run, as the ledger keeps it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PrivateRun {
    /// Poisson sampling rate: expected batch size over examples.
    pub sampling_rate: f64,
    /// Noise standard deviation over the clipping norm.
    pub noise_multiplier: f64,
    pub steps: u64,
}

/// The privacy spent by a list of runs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct PrivacySpent {
    pub epsilon: f64,
    pub delta: f64,
    /// The Rényi order that gave the tightest bound.
    pub order: u32,
}

/// ε at `delta` for all `runs` composed (RDP adds up per order).
pub fn privacy_spent(runs: &[PrivateRun], delta: f64) -> PrivacySpent {
    ORDERS
        .map(|order| {
            let alpha = f64::from(order);
            let rdp: f64 = runs
                .iter()
                .map(|r| r.steps as f64 * rdp_sampled_gaussian(r.sampling_rate, r.noise_multiplier, order))
                .sum();
            let epsilon = rdp - (delta.ln() + alpha.ln()) / (alpha - 1.0) + ((alpha - 1.0) / alpha).ln();
            PrivacySpent { epsilon: epsilon.max(0.0), delta, order }
        })
        .min_by(|a, b| a.epsilon.total_cmp(&b.epsilon))
        .expect("at least one order")
}

/// The smallest noise multiplier (to 0.1%) for which `steps` steps at
/// `sampling_rate`, added to `previous` runs, stay within `epsilon` at
/// `delta`; `None` when even enormous noise cannot.
pub fn noise_for_budget(
    previous: &[PrivateRun],
    sampling_rate: f64,
    steps: u64,
    epsilon: f64,
    delta: f64,
) -> Option<f64> {
    let spent = |sigma: f64| {
        let mut runs = previous.to_vec();
        runs.push(PrivateRun { sampling_rate, noise_multiplier: sigma, steps });
        privacy_spent(&runs, delta).epsilon
    };
    let (mut low, mut high) = (0.1f64, 1000.0f64);
    if spent(high) > epsilon {
        return None;
    }
    while (high - low) / high > 1e-3 {
        let middle = (low * high).sqrt();
        if spent(middle) <= epsilon { high = middle } else { low = middle }
    }
    Some(high)
}

/// RDP of one step of the sampled Gaussian mechanism at an integer order:
/// `log(Σₖ C(α,k) (1−q)^(α−k) qᵏ exp((k²−k)/(2σ²))) / (α−1)`.
fn rdp_sampled_gaussian(q: f64, sigma: f64, order: u32) -> f64 {
    let alpha = f64::from(order);
    if q <= 0.0 {
        return 0.0;
    }
    if q >= 1.0 {
        return alpha / (2.0 * sigma * sigma);
    }
    let mut terms = Vec::with_capacity(order as usize + 1);
    let mut log_binomial = 0.0f64;
    for k in 0..=order {
        let kf = f64::from(k);
        if k > 0 {
            log_binomial += (alpha - kf + 1.0).ln() - kf.ln();
        }
        terms.push(log_binomial + kf * q.ln() + (alpha - kf) * (1.0 - q).ln() + (kf * kf - kf) / (2.0 * sigma * sigma));
    }
    let max = terms.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (max + terms.iter().map(|t| (t - max).exp()).sum::<f64>().ln()) / (alpha - 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference values from Google's dp-accounting 0.x (RdpAccountant with
    /// orders 2..=256, PoissonSampledDpEvent of GaussianDpEvent), written by
    /// `tests/bench/dp_reference.py`.
    const REFERENCE: &str = include_str!("dp_reference.json");

    #[test]
    fn matches_google_dp_accounting() {
        let cases: Vec<serde_json::Value> = serde_json::from_str(REFERENCE).unwrap();
        assert!(cases.len() >= 5);
        for case in cases {
            let run = PrivateRun {
                sampling_rate: case["q"].as_f64().unwrap(),
                noise_multiplier: case["sigma"].as_f64().unwrap(),
                steps: case["steps"].as_u64().unwrap(),
            };
            let expected = case["epsilon"].as_f64().unwrap();
            let got = privacy_spent(&[run], case["delta"].as_f64().unwrap()).epsilon;
            assert!((got - expected).abs() <= 1e-6 * expected.max(1.0), "{case}: got {got}");
        }
    }

    #[test]
    fn runs_compose_and_more_noise_spends_less() {
        let run = PrivateRun { sampling_rate: 0.01, noise_multiplier: 1.0, steps: 1000 };
        let one = privacy_spent(&[run], 1e-5).epsilon;
        let two = privacy_spent(&[run, run], 1e-5).epsilon;
        assert!(two > one && two < 2.0 * one, "RDP composition is sub-linear in ε: {one} → {two}");
        let quieter = privacy_spent(&[PrivateRun { noise_multiplier: 2.0, ..run }], 1e-5).epsilon;
        assert!(quieter < one);
    }

    #[test]
    fn the_noise_for_a_budget_meets_it() {
        let sigma = noise_for_budget(&[], 0.02, 500, 2.0, 1e-5).unwrap();
        let spent = privacy_spent(&[PrivateRun { sampling_rate: 0.02, noise_multiplier: sigma, steps: 500 }], 1e-5);
        assert!(spent.epsilon <= 2.0 && spent.epsilon > 1.95, "{spent:?} at sigma {sigma}");
        assert!(noise_for_budget(&[], 1.0, 1_000_000, 1e-6, 1e-10).is_none());
    }
}

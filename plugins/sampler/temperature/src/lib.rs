//! Temperature sampling over data domains (METHODS.md §4.2): `p_i = n_i^(1/T) / Σ_j n_j^(1/T)`
//! with `n_i` the tokens available in domain `i`. `T = 1` reproduces the domains'
//! proportions, `T → ∞` is uniform; T = 5 (multilingual NMT) and 1/T = 0.3 (mT5) are
//! common.

use recast_sdk::sampler::*;
use serde::Deserialize;

/// Parameters; see README.md.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    temperature: f64,
}

impl Default for Params {
    fn default() -> Self {
        Params { temperature: 1.0 }
    }
}

struct Temperature {
    inverse_t: f64,
}

impl Plugin for Temperature {
    type Config = Params;

    fn new(p: Params, _: &Context) -> Result<Self, String> {
        if !(p.temperature.is_finite() && p.temperature > 0.0) {
            return Err(format!("temperature must be finite and > 0, not {}", p.temperature));
        }
        Ok(Temperature { inverse_t: 1.0 / p.temperature })
    }
}

impl Sampler for Temperature {
    fn next(&mut self, request: &SampleRequest) -> Result<Mixture, String> {
        // Work in log space relative to the largest domain: no overflow for any T.
        let logs: Vec<f64> = request.domains.iter().map(|d| (d.tokens_available as f64).ln() * self.inverse_t).collect();
        let max = logs.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        if !max.is_finite() {
            return Err("no domain has any tokens".into());
        }
        let raw: Vec<f64> = logs.iter().map(|l| (l - max).exp()).collect();
        let total: f64 = raw.iter().sum();
        Ok(Mixture::Weights(raw.iter().map(|w| (w / total) as f32).collect()))
    }
}

recast_sdk::export_sampler!(Temperature);

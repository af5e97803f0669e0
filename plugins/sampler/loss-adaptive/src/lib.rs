//! Loss-adaptive domain weights (Sheared-LLaMA's dynamic batch loading, as LLaMA-MoE uses
//! it; METHODS.md §4.3): whenever new validation losses arrive, each domain's weight is
//! multiplied by `exp(η · max(ℓ_i − ℓ_i^ref, 0))` and the weights renormalised (smoothed
//! toward uniform), so domains that lag their reference loss get more data.

use recast_sdk::sampler::*;
use serde::{Deserialize, Serialize};

/// Parameters; see README.md.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    eta: f64,
    smoothing: f64,
    reference: Vec<f32>,
}

impl Default for Params {
    fn default() -> Self {
        Params { eta: 1.0, smoothing: 1e-2, reference: Vec::new() }
    }
}

/// Weights and the validation losses they were last updated from.
#[derive(Default, Serialize, Deserialize)]
struct State {
    weights: Vec<f64>,
    seen: Vec<Option<f32>>,
}

struct LossAdaptive {
    p: Params,
    state: State,
}

impl Plugin for LossAdaptive {
    type Config = Params;

    fn new(p: Params, _: &Context) -> Result<Self, String> {
        if !(p.eta.is_finite() && p.eta >= 0.0 && (0.0..=1.0).contains(&p.smoothing)) {
            return Err(format!("need eta >= 0 and 0 <= smoothing <= 1, got eta = {} and smoothing = {}", p.eta, p.smoothing));
        }
        Ok(LossAdaptive { p, state: State::default() })
    }

    fn save_state(&self) -> Vec<u8> {
        recast_sdk::state_to_bytes(&self.state)
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        self.state = recast_sdk::state_from_bytes(state)?;
        Ok(())
    }
}

impl Sampler for LossAdaptive {
    fn next(&mut self, request: &SampleRequest) -> Result<Mixture, String> {
        let n = request.domains.len();
        if self.state.weights.len() != n {
            self.state = State { weights: vec![1.0 / n as f64; n], seen: vec![None; n] };
        }
        let valid: Vec<Option<f32>> = request.domains.iter().map(|d| d.valid_loss).collect();
        if valid.iter().all(Option::is_some) && valid != self.state.seen {
            for (i, d) in request.domains.iter().enumerate() {
                // The reference: the parameter, else the domain's own, else its first
                // validation loss (so the weights track relative progress).
                let reference = self.p.reference.get(i).copied().or(d.reference_loss).or(self.state.seen[i]).or(d.valid_loss).unwrap_or(0.0);
                let lag = (d.valid_loss.unwrap_or(reference) - reference).max(0.0) as f64;
                self.state.weights[i] *= (self.p.eta * lag).exp();
            }
            let total: f64 = self.state.weights.iter().sum();
            for w in &mut self.state.weights {
                *w = (1.0 - self.p.smoothing) * *w / total + self.p.smoothing / n as f64;
            }
            if self.state.seen.iter().all(Option::is_none) {
                self.state.seen = valid;
            }
        }
        Ok(Mixture::Weights(self.state.weights.iter().map(|&w| w as f32).collect()))
    }
}

recast_sdk::export_sampler!(LossAdaptive);

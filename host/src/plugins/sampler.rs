//! The sampler adapter: typed, validated calls into a data-mixture policy.

use super::component::PluginComponent;
use super::engine::PluginEngine;
use super::error::{OutputViolation, PluginError};
use super::instance::PluginInstance;
use super::kind::PluginKind;
use super::limits::PluginLimits;
use super::wit::sampler;
pub use super::wit::sampler_types::{DomainStats, Mixture, SampleRequest};

/// A data-sampler plugin.
pub struct SamplerPlugin {
    instance: PluginInstance,
    guest: sampler::Guest,
}

impl SamplerPlugin {
    /// Instantiate and configure a sampler.
    pub fn new(engine: &PluginEngine, component: &PluginComponent, params: &str, seed: u64, limits: PluginLimits) -> Result<Self, PluginError> {
        let mut instance = PluginInstance::new(engine, component, PluginKind::Sampler, params, seed, limits)?;
        let guest = instance.exports(|pre, store, inst| sampler::GuestIndices::new(pre)?.load(store, inst))?;
        Ok(SamplerPlugin { instance, guest })
    }

    /// The lifecycle and bookkeeping shared by every kind.
    pub fn instance(&mut self) -> &mut PluginInstance {
        &mut self.instance
    }

    /// The mixture for the step in `request`, validated.
    pub fn next(&mut self, request: &SampleRequest) -> Result<Mixture, PluginError> {
        self.instance.set_step(Some(request.step));
        let guest = &self.guest;
        let sandbox = &mut self.instance.sandbox;
        let mixture = sandbox.call_fallible("next", |store| guest.call_next(store, request))?;
        validate_mixture(&mixture, request).map_err(|v| sandbox.invalid("next", v))?;
        Ok(mixture)
    }
}

/// One finite, non-negative weight per domain, not all zero; or counts summing to the
/// batch.
pub fn validate_mixture(mixture: &Mixture, request: &SampleRequest) -> Result<(), OutputViolation> {
    let domains = request.domains.len();
    match mixture {
        Mixture::Weights(weights) => {
            OutputViolation::length(|| "mixture.weights".into(), domains, weights.len())?;
            for (i, &w) in weights.iter().enumerate() {
                OutputViolation::within(|| format!("mixture.weights[{i}]"), w as f64, 0.0, f64::INFINITY, ">= 0")?;
            }
            if weights.iter().all(|&w| w == 0.0) {
                return Err(OutputViolation::Inconsistent { field: "mixture.weights".into(), reason: "all weights are 0".into() });
            }
        }
        Mixture::Counts(counts) => {
            OutputViolation::length(|| "mixture.counts".into(), domains, counts.len())?;
            let total: u64 = counts.iter().map(|&c| c as u64).sum();
            if total != request.batch_sequences as u64 {
                return Err(OutputViolation::Inconsistent { field: "mixture.counts".into(), reason: format!("sum to {total}, but the batch holds {} sequences", request.batch_sequences) });
            }
        }
    }
    Ok(())
}

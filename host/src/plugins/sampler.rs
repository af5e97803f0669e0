//! The sampler adapter: typed, validated calls into a data-mixture policy.

use super::conformance::{self, Log};
use super::error::{OutputViolation, PluginError};
use super::host_api::PluginState;
use super::kind::{Kind, Plugin, PluginKind, ScaffoldTemplates, lifecycle_calls};
use super::wit::sampler;
pub use super::wit::sampler_types::{DomainStats, Mixture, SampleRequest};
use super::wit::types::PluginKind as WitKind;
use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

/// The sampler kind: data-mixture policies.
pub struct SamplerKind;

impl Kind for SamplerKind {
    const KIND: PluginKind = PluginKind::Sampler;
    const NAME: &'static str = "sampler";
    const RUN_ROLE: Option<&'static str> = Some("sampler");
    const WIT: WitKind = WitKind::Sampler;
    const TEMPLATES: ScaffoldTemplates =
        ScaffoldTemplates { rust: include_str!("templates/sampler.rs.tmpl"), python: include_str!("templates/sampler.py.tmpl"), javascript: include_str!("templates/sampler.js.tmpl") };
    lifecycle_calls!(sampler::Guest);

    fn load(pre: &InstancePre<PluginState>, store: &mut Store<PluginState>, instance: &Instance) -> wasmtime::Result<Self::Guest> {
        sampler::GuestIndices::new(pre)?.load(store, instance)
    }

    /// Mixtures at the first step, after one step and once validation losses exist.
    fn conformance(p: &mut SamplerPlugin, log: &mut Log<'_>) -> Result<(), PluginError> {
        for step in [0, 1, 50] {
            let request = conformance::synthetic_request(step);
            let m = p.next(&request)?;
            log(p.instance(), format!("next(step {step})"), format!("{m:?}"));
        }
        Ok(())
    }
}

/// A data-sampler plugin.
pub type SamplerPlugin = Plugin<SamplerKind>;

impl SamplerPlugin {
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

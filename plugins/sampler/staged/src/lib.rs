//! A stage table of domain mixtures (METHODS.md §4.4): the weights in force depend only
//! on the step, so multi-stage recipes (Innovator's four stages, UltraFuser's two) state
//! their data plan in the run config.

use recast_sdk::sampler::*;
use serde::Deserialize;

/// Parameters; see README.md.
#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct Params {
    stages: Vec<Stage>,
}

/// Weights used up to (not including) step `until`.
#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Stage {
    until: u64,
    weights: Vec<f32>,
}

struct Staged {
    stages: Vec<Stage>,
}

impl Plugin for Staged {
    type Config = Params;

    fn new(p: Params, _: &Context) -> Result<Self, String> {
        if p.stages.is_empty() {
            return Err("stages must list at least one { until, weights } entry".into());
        }
        for (i, s) in p.stages.iter().enumerate() {
            if i > 0 && s.until <= p.stages[i - 1].until {
                return Err(format!("stages[{i}].until = {} does not come after {}", s.until, p.stages[i - 1].until));
            }
            if s.weights.iter().any(|w| !(w.is_finite() && *w >= 0.0)) || s.weights.iter().all(|&w| w == 0.0) {
                return Err(format!("stages[{i}].weights must be finite, >= 0 and not all 0"));
            }
        }
        Ok(Staged { stages: p.stages })
    }
}

impl Sampler for Staged {
    fn next(&mut self, request: &SampleRequest) -> Result<Mixture, String> {
        // After the last stage's end its weights stay in force.
        let stage = self.stages.iter().find(|s| request.step < s.until).or(self.stages.last()).ok_or("no stages")?;
        if stage.weights.len() != request.domains.len() {
            return Err(format!("a stage lists {} weights for {} domains", stage.weights.len(), request.domains.len()));
        }
        Ok(Mixture::Weights(stage.weights.clone()))
    }
}

recast_sdk::export_sampler!(Staged);

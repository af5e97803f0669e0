//! Auxiliary-loss-free load balancing (Wang et al. 2024; DeepSeek-V3; METHODS.md §1.4):
//! experts are chosen by score plus a per-expert bias that changes only the selection,
//! never the combine weights; after each step the bias of every over-loaded expert goes
//! down by γ and of every under-loaded one up by γ.

use recast_sdk::router::*;
use serde::Deserialize;

/// Parameters; see README.md.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    gamma: f32,
    top_k: u32,
    score: String,
    renormalize: bool,
    scaling: f32,
    update_until: Option<u64>,
}

impl Default for Params {
    fn default() -> Self {
        Params { gamma: 1e-3, top_k: 2, score: "sigmoid".into(), renormalize: true, scaling: 1.0, update_until: None }
    }
}

struct AuxFreeBias {
    spec: RouterSpec,
    gamma: f32,
    update_until: Option<u64>,
}

impl Plugin for AuxFreeBias {
    type Config = Params;

    fn new(p: Params, _: &Context) -> Result<Self, String> {
        if !(p.gamma.is_finite() && p.gamma >= 0.0) {
            return Err(format!("gamma must be >= 0, not {}", p.gamma));
        }
        if !(p.scaling.is_finite() && p.scaling > 0.0) {
            return Err(format!("scaling must be > 0, not {}", p.scaling));
        }
        let score = match p.score.as_str() {
            "sigmoid" => ScoreFunction::Sigmoid,
            "softmax" => ScoreFunction::Softmax,
            other => return Err(format!("score must be \"sigmoid\" or \"softmax\", not {other:?}")),
        };
        let spec = RouterSpec { score, renormalize: p.renormalize, scaling: p.scaling, selection_bias: SelectionBias::Plugin, ..RouterSpec::softmax_topk(p.top_k) };
        Ok(AuxFreeBias { spec, gamma: p.gamma, update_until: p.update_until })
    }
}

/// `γ · sign(mean load − load)` per expert: 0 for an expert exactly at the mean.
pub fn bias_deltas(load: &[u32], gamma: f32) -> Vec<f32> {
    let mean = load.iter().map(|&c| c as f64).sum::<f64>() / load.len().max(1) as f64;
    load.iter()
        .map(|&c| match (mean - c as f64).partial_cmp(&0.0) {
            Some(std::cmp::Ordering::Greater) => gamma,
            Some(std::cmp::Ordering::Less) => -gamma,
            _ => 0.0,
        })
        .collect()
}

impl Router for AuxFreeBias {
    fn spec(&mut self, layer: &LayerInfo) -> Result<RouterSpec, String> {
        check_top_k(self.spec.top_k, layer)?;
        Ok(self.spec)
    }

    fn on_step(&mut self, step: u64, stats: &[LayerStats]) -> Result<Vec<RouterUpdate>, String> {
        if self.update_until.is_some_and(|until| step >= until) {
            return Ok(Vec::new());
        }
        Ok(stats.iter().map(|s| RouterUpdate { layer: s.layer, bias_delta: Some(bias_deltas(&s.expert_load, self.gamma)), spec: None }).collect())
    }
}

recast_sdk::export_router!(AuxFreeBias);

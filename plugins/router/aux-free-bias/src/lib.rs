//! Auxiliary-loss-free load balancing (Wang et al. 2024; DeepSeek-V3; METHODS.md §1.4):
//! experts are chosen by score plus a per-expert bias that changes only the selection,
//! never the combine weights; after each step the bias of every over-loaded expert goes
//! down by γ and of every under-loaded one up by γ. The plugin keeps the bias it has
//! built up per layer as its state (clamped to ±`max_bias` when set), so a checkpoint or
//! a hot reload carries it to the next instance or version.

use std::collections::BTreeMap;

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
    max_bias: Option<f32>,
}

impl Default for Params {
    fn default() -> Self {
        Params { gamma: 1e-3, top_k: 2, score: "sigmoid".into(), renormalize: true, scaling: 1.0, update_until: None, max_bias: None }
    }
}

struct AuxFreeBias {
    spec: RouterSpec,
    gamma: f32,
    update_until: Option<u64>,
    max_bias: Option<f32>,
    /// The bias built up so far, per MoE layer (the host applies the same sum).
    bias: BTreeMap<u32, Vec<f32>>,
}

impl Plugin for AuxFreeBias {
    type Config = Params;

    fn new(p: Params, _: &Context) -> Result<Self, String> {
        if !(p.gamma.is_finite() && p.gamma >= 0.0) {
            return Err(format!("gamma must be >= 0, not {}", p.gamma));
        }
        if p.max_bias.is_some_and(|m| !(m.is_finite() && m > 0.0)) {
            return Err(format!("max_bias must be > 0, not {:?}", p.max_bias));
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
        Ok(AuxFreeBias { spec, gamma: p.gamma, update_until: p.update_until, max_bias: p.max_bias, bias: BTreeMap::new() })
    }

    /// Per layer: the layer index, the expert count, then the biases (little-endian).
    fn save_state(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (layer, bias) in &self.bias {
            out.extend(layer.to_le_bytes());
            out.extend((bias.len() as u32).to_le_bytes());
            bias.iter().for_each(|b| out.extend(b.to_le_bytes()));
        }
        out
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        let mut bias = BTreeMap::new();
        let mut rest = state;
        let word = |rest: &mut &[u8]| -> Result<[u8; 4], String> {
            let (head, tail) = rest.split_at_checked(4).ok_or("aux-free-bias state is truncated")?;
            *rest = tail;
            Ok([head[0], head[1], head[2], head[3]])
        };
        while !rest.is_empty() {
            let layer = u32::from_le_bytes(word(&mut rest)?);
            let n = u32::from_le_bytes(word(&mut rest)?);
            let values = (0..n).map(|_| word(&mut rest).map(f32::from_le_bytes)).collect::<Result<Vec<f32>, String>>()?;
            bias.insert(layer, values);
        }
        self.bias = bias;
        Ok(())
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
        let mut updates = Vec::with_capacity(stats.len());
        let mut largest = 0f32;
        for s in stats {
            let bias = self.bias.entry(s.layer).or_default();
            bias.resize(s.expert_load.len(), 0.0);
            let mut delta = bias_deltas(&s.expert_load, self.gamma);
            for (b, d) in bias.iter_mut().zip(&mut delta) {
                let target = match self.max_bias {
                    Some(m) => (*b + *d).clamp(-m, m),
                    None => *b + *d,
                };
                *d = target - *b;
                *b = target;
                largest = largest.max(b.abs());
            }
            updates.push(RouterUpdate { layer: s.layer, bias_delta: Some(delta), spec: None });
        }
        recast_sdk::metric("bias_abs_max", largest as f64);
        Ok(updates)
    }
}

recast_sdk::export_router!(AuxFreeBias);

//! Collapse watch: token-choice top-k over softmax scores that watches every expert's
//! load after each step. An expert whose load stays under `threshold` × the layer's
//! mean load for `patience` steps in a row has collapsed (the router no longer sends it
//! tokens, so it no longer learns to earn them); from then on, each step its load is
//! still that low, its selection bias goes up by `nudge` (selection only: the combine
//! weights stay the softmax scores). Every nudge, and every expert that recovers, is a
//! log line the host journals. `starve` deliberately starves one expert at the start
//! (a negative selection bias), so an experiment can show the watch reviving it.

use std::collections::BTreeMap;

use recast_sdk::router::*;
use recast_sdk::types::LogLevel;
use serde::{Deserialize, Serialize};

/// Parameters; see README.md.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    top_k: u32,
    threshold: f32,
    patience: u32,
    nudge: f32,
    starve: Option<Starve>,
}

/// An expert pushed out of selection on purpose after the first step.
#[derive(Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct Starve {
    expert: u32,
    bias: f32,
}

impl Default for Params {
    fn default() -> Self {
        Params { top_k: 2, threshold: 0.25, patience: 10, nudge: 0.05, starve: None }
    }
}

/// What the watch knows about one layer.
#[derive(Clone, Default, Serialize, Deserialize)]
struct LayerWatch {
    /// Steps in a row each expert has been under the threshold.
    starved_for: Vec<u32>,
    /// The selection bias the watch has given each expert (the host holds the same sum).
    bias: Vec<f32>,
}

/// The state a checkpoint or a hot reload carries over.
#[derive(Default, Serialize, Deserialize)]
struct State {
    layers: BTreeMap<u32, LayerWatch>,
    starved: bool,
}

struct CollapseWatch {
    spec: RouterSpec,
    threshold: f32,
    patience: u32,
    nudge: f32,
    starve: Option<Starve>,
    state: State,
}

impl Plugin for CollapseWatch {
    type Config = Params;

    fn new(p: Params, _: &Context) -> Result<Self, String> {
        if p.top_k == 0 {
            return Err("top_k must be at least 1".into());
        }
        if !(p.threshold.is_finite() && p.threshold > 0.0 && p.threshold < 1.0) {
            return Err(format!("threshold must be in (0, 1), not {}", p.threshold));
        }
        if p.patience == 0 {
            return Err("patience must be at least 1 step".into());
        }
        if !(p.nudge.is_finite() && p.nudge >= 0.0) {
            return Err(format!("nudge must be >= 0, not {}", p.nudge));
        }
        if p.starve.is_some_and(|s| !s.bias.is_finite()) {
            return Err("starve.bias must be a finite number".into());
        }
        let spec = RouterSpec { selection_bias: SelectionBias::Plugin, ..RouterSpec::softmax_topk(p.top_k) };
        Ok(CollapseWatch { spec, threshold: p.threshold, patience: p.patience, nudge: p.nudge, starve: p.starve, state: State::default() })
    }

    fn save_state(&self) -> Vec<u8> {
        recast_sdk::state_to_bytes(&self.state)
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        self.state = recast_sdk::state_from_bytes(state)?;
        Ok(())
    }
}

/// What one step's loads do to one layer's watch: the bias change of every expert.
/// `log` gets a line for each nudge and each recovery.
fn watch_layer(w: &mut LayerWatch, layer: u32, load: &[u32], threshold: f32, patience: u32, nudge: f32, log: &mut dyn FnMut(String)) -> Vec<f32> {
    let experts = load.len();
    w.starved_for.resize(experts, 0);
    w.bias.resize(experts, 0.0);
    let mean = load.iter().map(|&c| c as f64).sum::<f64>() / experts.max(1) as f64;
    let mut delta = vec![0f32; experts];
    for (e, &count) in load.iter().enumerate() {
        let share = if mean > 0.0 { count as f64 / mean } else { 1.0 };
        if share < threshold as f64 {
            w.starved_for[e] += 1;
            if w.starved_for[e] >= patience && nudge > 0.0 {
                delta[e] = nudge;
                w.bias[e] += nudge;
                log(format!("layer {layer} expert {e}: load {count} ({:.1} % of the mean) for {} steps; selection bias +{nudge} to {:.4}", share * 100.0, w.starved_for[e], w.bias[e]));
            }
        } else {
            if w.starved_for[e] >= patience {
                log(format!("layer {layer} expert {e}: recovered, load {count} ({:.1} % of the mean) after {} starved steps; selection bias stays {:.4}", share * 100.0, w.starved_for[e], w.bias[e]));
            }
            w.starved_for[e] = 0;
        }
    }
    delta
}

impl Router for CollapseWatch {
    fn spec(&mut self, layer: &LayerInfo) -> Result<RouterSpec, String> {
        check_top_k(self.spec.top_k, layer)?;
        if let Some(s) = self.starve
            && s.expert >= layer.num_experts
        {
            return Err(format!("starve.expert {} is not an expert of layer {} ({} experts)", s.expert, layer.layer, layer.num_experts));
        }
        Ok(self.spec)
    }

    fn on_step(&mut self, step: u64, stats: &[LayerStats]) -> Result<Vec<RouterUpdate>, String> {
        let mut updates = Vec::with_capacity(stats.len());
        let (mut nudged, mut collapsed) = (0u32, 0u32);
        let starve = self.starve.filter(|_| !self.state.starved);
        for s in stats {
            let w = self.state.layers.entry(s.layer).or_default();
            let mut log = |line: String| recast_sdk::log(LogLevel::Info, &format!("step {step}: {line}"));
            let mut delta = watch_layer(w, s.layer, &s.expert_load, self.threshold, self.patience, self.nudge, &mut log);
            nudged += delta.iter().filter(|&&d| d > 0.0).count() as u32;
            collapsed += w.starved_for.iter().filter(|&&n| n >= self.patience).count() as u32;
            if let Some(starve) = starve
                && let Some(d) = delta.get_mut(starve.expert as usize)
            {
                *d += starve.bias;
                w.bias[starve.expert as usize] += starve.bias;
                log(format!("layer {} expert {}: starved on purpose, selection bias {:+}", s.layer, starve.expert, starve.bias));
            }
            updates.push(RouterUpdate { layer: s.layer, bias_delta: Some(delta), spec: None });
        }
        if starve.is_some() {
            self.state.starved = true;
        }
        recast_sdk::metric("collapsed_experts", collapsed as f64);
        recast_sdk::metric("nudged_experts", nudged as f64);
        Ok(updates)
    }
}

recast_sdk::export_router!(CollapseWatch);

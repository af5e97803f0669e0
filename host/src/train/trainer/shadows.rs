//! Shadow routers (`[[plugins.shadow_router]]`): router plugins that see every MoE
//! layer's router logits each step, route them with their own spec and selection bias,
//! and are never used for the forward pass or the gradient. What they would have done —
//! agreement with the live router, the load they would produce, its MaxVio, their drops
//! — goes to `metrics.jsonl` under `shadow_routers`; their `on-step` gets the statistics
//! of their own routing, so a balancing shadow balances what it would route. A shadow
//! that faults is switched off (journaled); training goes on.

use std::time::{Duration, Instant};

use candle_core::{Device, Tensor};
use serde_json::{Value, json};

use super::TrainError;
use super::slots::{PluginHost, Slot};
use crate::contract::{LayerInfo, LogLevel, RouterSpec, TokenLogits};
use crate::moe::layer::{TokenRouter, route_tokens};
use crate::moe::losses;
use crate::moe::routing_record::RoutingRecord;
use crate::moe::spec::LayerStats;
use crate::moe::stats::{layer_stats, merge};
use crate::plugins::router::validate_bias_sums;
use crate::plugins::{PluginComponent, PluginError, RouterKind};
use crate::train::checkpoint::{LayerRouting, PluginSnapshot, ShadowSnapshot, TrainState};

/// The journal and metrics names of the shadow routers, by position in the config.
pub const SHADOW_ROLES: [&str; crate::train::config::MAX_SHADOW_ROUTERS] =
    ["shadow_router.0", "shadow_router.1", "shadow_router.2", "shadow_router.3", "shadow_router.4", "shadow_router.5", "shadow_router.6", "shadow_router.7"];

/// One shadow router: its plugin, and per MoE layer (in layer order) its spec and bias.
pub(super) struct ShadowRouter {
    pub role: &'static str,
    pub slot: Slot<RouterKind>,
    pub specs: Vec<RouterSpec>,
    pub bias: Vec<Vec<f32>>,
    /// Why it was switched off, once it faulted.
    pub off: Option<String>,
}

/// What one shadow would have done in one layer over a step's micro-batches.
#[derive(Clone, Debug)]
pub(super) struct ShadowTally {
    /// Its statistics, as the live router's `on-step` gets them.
    pub stats: LayerStats,
    /// Σ over tokens of |live experts ∩ shadow experts|.
    pub shared: u64,
    /// Σ over tokens of max(|live experts|, |shadow experts|).
    pub slots: u64,
}

impl ShadowTally {
    /// The metrics record of this layer.
    fn describe(&self) -> Value {
        let load = &self.stats.expert_load;
        let total: u64 = load.iter().map(|&c| c as u64).sum();
        let mean = total as f64 / load.len().max(1) as f64;
        let max_vio = if mean > 0.0 { load.iter().copied().max().unwrap_or(0) as f64 / mean - 1.0 } else { 0.0 };
        json!({
            "layer": self.stats.layer,
            "agreement": if self.slots > 0 { self.shared as f64 / self.slots as f64 } else { 1.0 },
            "expert_load": load, "max_vio": max_vio, "dropped": self.stats.dropped,
            "drop_rate": if total > 0 { self.stats.dropped as f64 / total as f64 } else { 0.0 },
        })
    }
}

impl ShadowRouter {
    /// A shadow running `component` with `params`, with its specs for `infos`.
    pub fn new(role: &'static str, host: &PluginHost, component: &PluginComponent, params: &str, infos: &[LayerInfo]) -> Result<Self, PluginError> {
        let mut slot = Slot::new(host, component, params)?;
        let specs = infos.iter().map(|info| slot.live.spec(info)).collect::<Result<Vec<_>, _>>()?;
        let bias = infos.iter().map(|info| vec![0.0; info.num_experts as usize]).collect();
        Ok(Self { role, slot, specs, bias, off: None })
    }

    /// Route one micro-batch's layer `index` (its position among the MoE layers) from
    /// the live router's `logits` (`[T, E]`), compare with the live `routing`, and add it
    /// to `tally`.
    pub fn observe(&mut self, index: usize, info: &LayerInfo, logits: &[f32], live: &RoutingRecord, tally: &mut Option<ShadowTally>) -> Result<(), String> {
        let (Some(spec), Some(bias)) = (self.specs.get(index), self.bias.get(index)) else { return Err(format!("no spec for MoE layer {}", info.layer)) };
        let experts = info.num_experts as usize;
        let tokens = logits.len() / experts.max(1);
        let z = Tensor::from_slice(logits, (tokens, experts), &Device::Cpu).map_err(|e| e.to_string())?;
        let slot = &mut self.slot;
        let mut route = |_: usize, l: &TokenLogits| slot.live.route(info, l).map_err(|e| e.to_string());
        let hook = spec.per_token_route.then_some(&mut route as &mut TokenRouter<'_>);
        let routed = route_tokens(info.layer as usize, &z, spec, bias, hook).map_err(|e| e.to_string())?;
        let gates = routed.gates.to_dtype(candle_core::DType::F32).and_then(|g| g.flatten_all()?.to_vec1::<f32>()).map_err(|e| e.to_string())?;
        let mine = RoutingRecord::new(info.layer as usize, tokens, &routed.selection, &gates);
        let (mut shared, mut slots) = (0u64, 0u64);
        for (a, b) in live.experts_by_token().iter().zip(mine.experts_by_token()) {
            shared += a.iter().filter(|e| b.contains(e)).count() as u64;
            slots += a.len().max(b.len()) as u64;
        }
        let probs = routed.scores.probs.flatten_all().and_then(|p| p.to_vec1::<f32>()).map_err(|e| e.to_string())?;
        let scalar = |t: candle_core::Result<Tensor>| t.and_then(|t| t.to_scalar::<f32>()).map_err(|e| e.to_string());
        let lb = scalar(losses::load_balance(&routed.scores.probs, &routed.selection.load))?;
        let zl = scalar(losses::z_loss(&z))?;
        let stats = layer_stats(info.layer as usize, tokens, routed.k, &routed.selection, &probs, experts, (lb, zl));
        match tally {
            Some(t) => {
                merge(&mut t.stats, &stats);
                t.shared += shared;
                t.slots += slots;
            }
            None => *tally = Some(ShadowTally { stats, shared, slots }),
        }
        Ok(())
    }

    /// The shadow's `on-step` with its own statistics; its updates change its own specs
    /// and biases only.
    pub fn on_step(&mut self, step: u64, tallies: &[ShadowTally], infos: &[LayerInfo]) -> Result<(), String> {
        let stats: Vec<LayerStats> = tallies.iter().map(|t| t.stats.clone()).collect();
        let updates = self.slot.live.on_step(step, &stats, infos).map_err(|e| e.to_string())?;
        let bias = &self.bias;
        validate_bias_sums(&updates, |layer| infos.iter().position(|i| i.layer == layer).and_then(|p| bias.get(p)).map(Vec::as_slice)).map_err(|v| self.slot.live.invalid_update(v).to_string())?;
        for update in updates {
            let Some(p) = infos.iter().position(|i| i.layer == update.layer) else { continue };
            if let Some(delta) = &update.bias_delta {
                self.bias[p].iter_mut().zip(delta).for_each(|(b, d)| *b += d);
            }
            if let Some(spec) = update.spec {
                self.specs[p] = spec;
            }
        }
        Ok(())
    }
}

/// The metrics record of one shadow's step: per layer, what [`ShadowTally::describe`]
/// gives.
pub(super) fn describe(label: &str, tallies: &[ShadowTally]) -> Value {
    json!({ "plugin": label, "layers": tallies.iter().map(ShadowTally::describe).collect::<Vec<_>>() })
}

impl super::Trainer {
    /// Let every shadow that is on route this micro-batch's layers from the live
    /// router's logits, adding to `tallies` (per shadow, per MoE layer); a shadow that
    /// fails is switched off and journaled, and training goes on.
    pub(super) fn shadows_observe(&mut self, step: u64, logits: &[Vec<f32>], live: &[RoutingRecord], tallies: &mut [Vec<Option<ShadowTally>>], time: &mut Duration) -> Result<(), TrainError> {
        if self.shadows.is_empty() {
            return Ok(());
        }
        let clock = Instant::now();
        let infos = self.layer_infos();
        let mut failures = Vec::new();
        for (shadow, tally) in self.shadows.iter_mut().zip(tallies.iter_mut()) {
            if shadow.off.is_some() {
                continue;
            }
            shadow.slot.live.instance().set_step(Some(step));
            tally.resize(infos.len(), None);
            let result = infos.iter().enumerate().try_for_each(|(i, info)| match (logits.get(i), live.get(i)) {
                (Some(z), Some(record)) => shadow.observe(i, info, z, record, &mut tally[i]),
                _ => Err(format!("layer {}: the forward pass recorded no routing", info.layer)),
            });
            if let Err(reason) = result {
                failures.push((shadow.role, reason.clone()));
                shadow.off = Some(reason);
            }
        }
        *time += clock.elapsed();
        for (role, reason) in failures {
            self.shadow_off(step + 1, role, &reason)?;
        }
        Ok(())
    }

    /// After step `step` (0-based): every shadow's `on-step` with its own statistics,
    /// and the metrics of what each would have done, by role.
    pub(super) fn shadows_on_step(&mut self, step: u64, tallies: Vec<Vec<Option<ShadowTally>>>) -> Result<serde_json::Map<String, Value>, TrainError> {
        let infos = self.layer_infos();
        let mut out = serde_json::Map::new();
        let (mut failures, mut logs) = (Vec::new(), Vec::new());
        for (shadow, tally) in self.shadows.iter_mut().zip(tallies) {
            let tally: Vec<ShadowTally> = tally.into_iter().flatten().collect();
            if shadow.off.is_some() || tally.len() != infos.len() {
                continue;
            }
            let mut record = describe(shadow.slot.live.instance().component().label(), &tally);
            if let Err(reason) = shadow.on_step(step, &tally, &infos) {
                failures.push((shadow.role, reason.clone()));
                shadow.off = Some(reason);
            }
            // What the shadow said this step: its metrics beside its routing, its log
            // lines at info and above in the journal (never left to pile up).
            let instance = shadow.slot.live.instance();
            let metrics: serde_json::Map<String, Value> = instance.drain_metrics().into_iter().map(|(name, value)| (name, json!(value))).collect();
            if !metrics.is_empty() {
                record["plugin_metrics"] = Value::Object(metrics);
            }
            for log in instance.drain_logs() {
                if matches!(log.level, LogLevel::Info | LogLevel::Warn | LogLevel::Error) {
                    logs.push(json!({ "step": step + 1, "event": "plugin-log", "role": shadow.role, "level": format!("{:?}", log.level).to_lowercase(), "message": log.message }));
                }
            }
            out.insert(shadow.role.to_string(), record);
        }
        for line in &logs {
            self.journal(line)?;
        }
        for (role, reason) in failures {
            self.shadow_off(step + 1, role, &reason)?;
        }
        Ok(out)
    }

    /// Journal that the shadow `role` is switched off, and why.
    fn shadow_off(&mut self, step: u64, role: &str, reason: &str) -> Result<(), TrainError> {
        tracing::warn!("step {step}: the shadow router {role} failed and is switched off (training goes on): {reason}");
        self.journal(&json!({ "step": step, "event": "shadow-off", "role": role, "reason": reason }))
    }

    /// What a checkpoint keeps of the shadow routers.
    pub(super) fn shadow_snapshots(&mut self) -> Result<Vec<ShadowSnapshot>, TrainError> {
        let layers: Vec<usize> = self.model.moe_layers().map(|l| l.layer).collect();
        let mut out = Vec::new();
        for shadow in &mut self.shadows {
            let state = shadow.slot.live.instance().save_state().unwrap_or_default();
            let c = shadow.slot.live.instance().component().clone();
            let plugin = PluginSnapshot { role: shadow.role.into(), label: c.label().into(), digest: c.digest().to_hex(), state: hex::encode(state) };
            let routing = layers.iter().zip(shadow.specs.iter().zip(&shadow.bias)).map(|(&layer, (spec, bias))| LayerRouting { layer, spec: *spec, selection_bias: bias.clone() }).collect();
            out.push(ShadowSnapshot { plugin, layers: routing });
        }
        Ok(out)
    }

    /// Give each shadow router the state a checkpoint kept of it, when the checkpoint
    /// has the same code in the same place; a shadow without one starts afresh
    /// (journaled), since shadows never change what training does.
    pub(super) fn restore_shadows(&mut self, state: &TrainState) -> Result<(), TrainError> {
        let mut fresh = Vec::new();
        for shadow in &mut self.shadows {
            let digest = shadow.slot.live.instance().component().digest().to_hex();
            let saved = state.shadows.iter().find(|s| s.plugin.role == shadow.role && s.plugin.digest == digest);
            let restored = saved.is_some_and(|saved| {
                let loaded = hex::decode(&saved.plugin.state).ok().is_some_and(|bytes| shadow.slot.live.instance().load_state(&bytes).is_ok());
                if loaded && saved.layers.len() == shadow.specs.len() {
                    shadow.specs = saved.layers.iter().map(|l| l.spec).collect();
                    shadow.bias = saved.layers.iter().map(|l| l.selection_bias.clone()).collect();
                }
                loaded
            });
            if !restored {
                fresh.push(shadow.role);
            }
        }
        for role in fresh {
            self.journal(&json!({ "step": self.step, "event": "shadow-restart", "role": role, "reason": "the checkpoint holds no state of this shadow router's code" }))?;
        }
        Ok(())
    }
}

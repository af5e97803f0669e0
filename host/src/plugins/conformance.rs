//! Conformance calls for `recast plugin check`: each kind's functions on synthetic but
//! realistic inputs, every output validated exactly as in a run.

use super::aux_schedule::AuxSchedulePlugin;
use super::component::PluginComponent;
use super::engine::PluginEngine;
use super::error::PluginError;
use super::init_scheme::{InitSchemePlugin, ModelShape, SourceModel, TensorInfo};
use super::instance::{PluginInstance, PluginMeta};
use super::kind::PluginKind;
use super::limits::PluginLimits;
use super::router::{LayerInfo, LayerStats, RouterPlugin, RouterSpec, TokenLogits};
use super::sampler::{DomainStats, SampleRequest, SamplerPlugin};

/// One conformance call that passed.
#[derive(Clone, Debug)]
pub struct CheckedCall {
    /// The call, e.g. `spec(layer 1)`.
    pub call: String,
    /// What it returned, briefly.
    pub detail: String,
    /// Fuel it used, when metered.
    pub fuel: Option<u64>,
}

/// Run the conformance calls of `component`'s kind; `report` sees each passing call.
/// The first failure is returned as the typed error.
pub fn check(engine: &PluginEngine, component: &PluginComponent, params: &str, limits: PluginLimits, mut report: impl FnMut(&CheckedCall)) -> Result<PluginMeta, PluginError> {
    let seed = 0x5EED;
    let mut log = |instance: &mut PluginInstance, call: String, detail: String| {
        // `info` and `configure` ran inside instantiation; later calls report their fuel.
        let fuel = if call == "info" || call == "configure" { None } else { instance.fuel_used_by_last_call() };
        report(&CheckedCall { call, detail, fuel });
    };
    let meta = match component.kind() {
        PluginKind::Router => {
            let mut p = RouterPlugin::new(engine, component, params, seed, limits)?;
            announce(p.instance(), &mut log);
            check_router(&mut p, &mut log)?;
            round_trip_state(p.instance(), &mut log)?;
            let spec = p.spec(&synthetic_layers()[0])?;
            log(p.instance(), "spec(layer 0) after load-state".into(), describe_spec(&spec));
            p.instance().meta().clone()
        }
        PluginKind::AuxSchedule => {
            let mut p = AuxSchedulePlugin::new(engine, component, params, seed, limits)?;
            announce(p.instance(), &mut log);
            let layers = [0, 1, 2, 3];
            for (step, stats) in [(0, Vec::new()), (1, synthetic_stats(&layers, 8, false)), (1000, synthetic_stats(&layers, 8, true))] {
                let c = p.coefficients(step, &layers, &stats)?;
                let detail = c.iter().map(|c| format!("L{}: lb {:.3e} z {:.3e}", c.layer, c.load_balance, c.z_loss)).collect::<Vec<_>>().join(", ");
                log(p.instance(), format!("coefficients(step {step})"), detail);
            }
            round_trip_state(p.instance(), &mut log)?;
            p.instance().meta().clone()
        }
        PluginKind::Sampler => {
            let mut p = SamplerPlugin::new(engine, component, params, seed, limits)?;
            announce(p.instance(), &mut log);
            for step in [0, 1, 50] {
                let request = synthetic_request(step);
                let m = p.next(&request)?;
                log(p.instance(), format!("next(step {step})"), format!("{m:?}"));
            }
            round_trip_state(p.instance(), &mut log)?;
            p.instance().meta().clone()
        }
        PluginKind::InitScheme => {
            let mut p = InitSchemePlugin::new(engine, component, params, seed, limits)?;
            announce(p.instance(), &mut log);
            let sources = [synthetic_source()];
            let (plan, tensors) = p.plan(&sources)?;
            let detail = format!("{} ops writing {} tensors, {} MoE layers", plan.ops.len(), tensors.len(), plan.target.moe_layers.len());
            log(p.instance(), "plan(synthetic 2-layer llama)".into(), detail);
            round_trip_state(p.instance(), &mut log)?;
            p.instance().meta().clone()
        }
    };
    Ok(meta)
}

type Log<'a> = dyn FnMut(&mut PluginInstance, String, String) + 'a;

fn announce(instance: &mut PluginInstance, log: &mut Log<'_>) {
    let m = instance.meta().clone();
    log(instance, "info".into(), format!("{} {} ({}, recast:plugins@{})", m.name, m.version, m.kind, m.wit_version));
    log(instance, "configure".into(), "accepted".into());
}

fn round_trip_state(instance: &mut PluginInstance, log: &mut Log<'_>) -> Result<(), PluginError> {
    let state = instance.save_state()?;
    log(instance, "save-state".into(), format!("{} bytes", state.len()));
    instance.load_state(&state)?;
    log(instance, "load-state".into(), "accepted its own state".into());
    Ok(())
}

fn check_router(p: &mut RouterPlugin, log: &mut Log<'_>) -> Result<(), PluginError> {
    let layers = synthetic_layers();
    let mut specs = Vec::new();
    for layer in &layers {
        let spec = p.spec(layer)?;
        log(p.instance(), format!("spec(layer {}, {} experts)", layer.layer, layer.num_experts), describe_spec(&spec));
        specs.push(spec);
    }
    let ids: Vec<u32> = layers.iter().map(|l| l.layer).collect();
    for (step, skewed) in [(1, false), (2, true)] {
        let mut stats = synthetic_stats(&ids, 0, skewed);
        for (s, l) in stats.iter_mut().zip(&layers) {
            s.expert_load = loads(l.num_experts, s.tokens * 2, skewed);
        }
        let updates = p.on_step(step, &stats, &layers)?;
        log(p.instance(), format!("on-step(step {step}, {} loads)", if skewed { "skewed" } else { "balanced" }), format!("{} updates", updates.len()));
    }
    p.instance().set_step(None);
    for (layer, spec) in layers.iter().zip(&specs) {
        if spec.per_token_route {
            let logits = synthetic_logits(64, layer.num_experts);
            let a = p.route(layer, &logits)?;
            log(p.instance(), format!("route(layer {}, 64 tokens)", layer.layer), format!("top-{} assignment", a.top_k));
        }
    }
    Ok(())
}

/// A one-line summary of a spec, e.g. `softmax top-2, renormalised, dropless`.
pub fn describe_spec(s: &RouterSpec) -> String {
    use super::router::{LogitNorm, RoutingMode, ScoreFunction};
    let score = match s.score {
        ScoreFunction::Softmax => "softmax",
        ScoreFunction::Sigmoid => "sigmoid",
    };
    let mut parts = vec![match s.mode {
        RoutingMode::TokenChoice => format!("{score} top-{}", s.top_k),
        RoutingMode::ExpertChoice => format!("{score} expert-choice"),
    }];
    if let LogitNorm::Skywork(l) = s.logit_norm {
        parts.push(format!("skywork-norm λ={l}"));
    }
    parts.push(if s.renormalize { "renormalised".into() } else { "not renormalised".into() });
    parts.push(match &s.capacity {
        Some(c) => format!("capacity {} ({:?})", c.factor, c.drop_policy),
        None => "dropless".into(),
    });
    if s.shared_experts > 0 {
        parts.push(format!("{} shared", s.shared_experts));
    }
    if s.per_token_route {
        parts.push("per-token route".into());
    }
    parts.join(", ")
}

fn synthetic_layers() -> Vec<LayerInfo> {
    vec![
        LayerInfo { layer: 0, num_layers: 4, hidden: 64, num_experts: 8, expert_intermediate: vec![256; 8], shared_experts: 0, tokens_per_batch: 512 },
        LayerInfo { layer: 2, num_layers: 4, hidden: 64, num_experts: 64, expert_intermediate: vec![32; 64], shared_experts: 1, tokens_per_batch: 512 },
    ]
}

fn loads(experts: u32, assignments: u32, skewed: bool) -> Vec<u32> {
    if skewed {
        let mut v = vec![assignments / (2 * experts); experts as usize];
        v[0] += assignments - v.iter().sum::<u32>();
        v
    } else {
        let mut v = vec![assignments / experts; experts as usize];
        v[0] += assignments % experts;
        v
    }
}

fn synthetic_stats(layers: &[u32], experts: u32, skewed: bool) -> Vec<LayerStats> {
    layers
        .iter()
        .map(|&layer| LayerStats {
            layer,
            tokens: 512,
            top_k: 2,
            expert_load: loads(experts.max(1), 1024, skewed),
            dropped: if skewed { 96 } else { 0 },
            overflow_rate: if skewed { 0.09 } else { 0.0 },
            gate_entropy: if skewed { 1.2 } else { 2.0 },
            max1_over_max2: 1.3,
            load_balance_loss: if skewed { 1.6 } else { 1.0 },
            z_loss: 4.2,
        })
        .collect()
}

fn synthetic_logits(tokens: u32, experts: u32) -> TokenLogits {
    // A fixed, irregular pattern: no ties, varied winners.
    let values = (0..tokens * experts).map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 4.0).collect();
    TokenLogits { tokens, experts, values }
}

fn synthetic_request(step: u64) -> SampleRequest {
    let names = ["arithmetic", "code", "prose"];
    let domains = names
        .iter()
        .enumerate()
        .map(|(i, name)| DomainStats {
            domain: i as u32,
            name: name.to_string(),
            tokens_available: 1_000_000 * (i as u64 + 1),
            tokens_seen: step * 4096,
            train_loss: (step > 0).then_some(2.0 + i as f32 * 0.3),
            valid_loss: (step >= 50).then_some(2.1 + i as f32 * 0.3),
            reference_loss: Some(2.0),
        })
        .collect();
    SampleRequest { step, batch_sequences: 16, domains }
}

fn synthetic_source() -> SourceModel {
    let (layers, hidden, inter, heads, kv, hd, vocab) = (2u32, 64u64, 256u64, 4u64, 2u64, 16u64, 512u64);
    let mut tensors = vec![
        TensorInfo { name: "model.embed_tokens.weight".into(), shape: vec![vocab, hidden] },
        TensorInfo { name: "model.norm.weight".into(), shape: vec![hidden] },
        TensorInfo { name: "lm_head.weight".into(), shape: vec![vocab, hidden] },
    ];
    for l in 0..layers {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("input_layernorm.weight", vec![hidden]),
            ("post_attention_layernorm.weight", vec![hidden]),
            ("self_attn.q_proj.weight", vec![heads * hd, hidden]),
            ("self_attn.k_proj.weight", vec![kv * hd, hidden]),
            ("self_attn.v_proj.weight", vec![kv * hd, hidden]),
            ("self_attn.o_proj.weight", vec![hidden, heads * hd]),
            ("mlp.gate_proj.weight", vec![inter, hidden]),
            ("mlp.up_proj.weight", vec![inter, hidden]),
            ("mlp.down_proj.weight", vec![hidden, inter]),
        ] {
            tensors.push(TensorInfo { name: format!("{p}.{name}"), shape });
        }
    }
    SourceModel {
        index: 0,
        architecture: "llama".into(),
        shape: ModelShape { layers, hidden: hidden as u32, intermediate: inter as u32, heads: heads as u32, kv_heads: kv as u32, head_dim: hd as u32, vocab: vocab as u32, tied_embeddings: false },
        tensors,
    }
}

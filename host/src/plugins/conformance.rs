//! Conformance calls for `recast plugin check`: the lifecycle every kind shares, and the
//! synthetic but realistic inputs each kind's `Kind::conformance` calls its functions
//! with, every output validated exactly as in a run.

use super::component::PluginComponent;
use super::engine::PluginEngine;
use super::error::PluginError;
use super::init_scheme::{ModelShape, SourceModel, TensorInfo};
use super::instance::{PluginInstance, PluginMeta};
use super::kind::{Kind, KindVisitor, Plugin};
use super::limits::PluginLimits;
use super::router::{LayerInfo, LayerStats, RouterSpec, TokenLogits};
use super::sampler::{DomainStats, SampleRequest};

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
    let mut log = |instance: &mut PluginInstance, call: String, detail: String| {
        // `info` and `configure` ran inside instantiation; later calls report their fuel.
        let fuel = if call == "info" || call == "configure" { None } else { instance.fuel_used_by_last_call() };
        report(&CheckedCall { call, detail, fuel });
    };
    component.kind().visit(Check { engine, component, params, limits, log: &mut log })
}

/// The calls every kind gets (instantiate, `info`, `configure`, the kind's own calls,
/// a state round trip), for whichever kind the component is.
struct Check<'a, 'l> {
    engine: &'a PluginEngine,
    component: &'a PluginComponent,
    params: &'a str,
    limits: PluginLimits,
    log: &'a mut Log<'l>,
}

impl KindVisitor for Check<'_, '_> {
    type Output = Result<PluginMeta, PluginError>;

    fn visit<K: Kind>(self) -> Self::Output {
        let log = self.log;
        let mut p = Plugin::<K>::new(self.engine, self.component, self.params, 0x5EED, self.limits)?;
        announce(p.instance(), log);
        K::conformance(&mut p, log)?;
        round_trip_state(p.instance(), log)?;
        K::after_state_round_trip(&mut p, log)?;
        Ok(p.instance().meta().clone())
    }
}

/// Where conformance calls report: the instance (for its fuel), the call, what it
/// returned.
pub type Log<'a> = dyn FnMut(&mut PluginInstance, String, String) + 'a;

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

pub(super) fn synthetic_layers() -> Vec<LayerInfo> {
    vec![
        LayerInfo { layer: 0, num_layers: 4, hidden: 64, num_experts: 8, expert_intermediate: vec![256; 8], shared_experts: 0, tokens_per_batch: 512 },
        LayerInfo { layer: 2, num_layers: 4, hidden: 64, num_experts: 64, expert_intermediate: vec![32; 64], shared_experts: 1, tokens_per_batch: 512 },
    ]
}

pub(super) fn loads(experts: u32, assignments: u32, skewed: bool) -> Vec<u32> {
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

pub(super) fn synthetic_stats(layers: &[u32], experts: u32, skewed: bool) -> Vec<LayerStats> {
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

pub(super) fn synthetic_logits(tokens: u32, experts: u32) -> TokenLogits {
    // A fixed, irregular pattern: no ties, varied winners.
    let values = (0..tokens * experts).map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * 4.0).collect();
    TokenLogits { tokens, experts, values }
}

pub(super) fn synthetic_request(step: u64) -> SampleRequest {
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

pub(super) fn synthetic_source() -> SourceModel {
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

//! JSON for the WIT records a checkpoint keeps (routing specs and layer statistics):
//! the bindings generated from WIT carry no serde, so the mapping is spelled out here.

use serde_json::{Value, json};

use crate::moe::spec::{Capacity, DropPolicy, LayerStats, LogitNorm, RouterSpec, RoutingMode, ScoreFunction, SelectionBias, TopkOrder};

/// A routing spec as JSON.
pub fn spec_to_json(s: &RouterSpec) -> Value {
    json!({
        "score": match s.score { ScoreFunction::Softmax => "softmax", ScoreFunction::Sigmoid => "sigmoid" },
        "skywork_lambda": match s.logit_norm { LogitNorm::None => None, LogitNorm::Skywork(l) => Some(l) },
        "top_k": s.top_k,
        "order": match s.order { TopkOrder::SoftmaxThenTopk => "softmax-then-topk", TopkOrder::TopkThenSoftmax => "topk-then-softmax" },
        "renormalize": s.renormalize,
        "scaling": s.scaling,
        "mode": match s.mode { RoutingMode::TokenChoice => "token-choice", RoutingMode::ExpertChoice => "expert-choice" },
        "capacity": s.capacity.map(|c| json!({ "factor": c.factor, "drop_policy": match c.drop_policy { DropPolicy::Probs => "probs", DropPolicy::Position => "position" } })),
        "shared_experts": s.shared_experts,
        "shared_expert_gate": s.shared_expert_gate,
        "selection_bias": match s.selection_bias { SelectionBias::None => "none", SelectionBias::Learned => "learned", SelectionBias::Plugin => "plugin" },
        "per_token_route": s.per_token_route,
    })
}

/// A routing spec from [`spec_to_json`]'s output.
pub fn spec_from_json(v: &Value) -> Result<RouterSpec, String> {
    let s = |k: &str| v.get(k).and_then(Value::as_str).ok_or_else(|| format!("routing spec: `{k}` missing"));
    let n = |k: &str| v.get(k).and_then(Value::as_f64).ok_or_else(|| format!("routing spec: `{k}` missing"));
    let b = |k: &str| v.get(k).and_then(Value::as_bool).ok_or_else(|| format!("routing spec: `{k}` missing"));
    let bad = |k: &str, x: &str| format!("routing spec: `{k}` = {x:?} is not known");
    Ok(RouterSpec {
        score: match s("score")? {
            "softmax" => ScoreFunction::Softmax,
            "sigmoid" => ScoreFunction::Sigmoid,
            x => return Err(bad("score", x)),
        },
        logit_norm: match v.get("skywork_lambda").and_then(Value::as_f64) {
            Some(l) => LogitNorm::Skywork(l as f32),
            None => LogitNorm::None,
        },
        top_k: n("top_k")? as u32,
        order: match s("order")? {
            "softmax-then-topk" => TopkOrder::SoftmaxThenTopk,
            "topk-then-softmax" => TopkOrder::TopkThenSoftmax,
            x => return Err(bad("order", x)),
        },
        renormalize: b("renormalize")?,
        scaling: n("scaling")? as f32,
        mode: match s("mode")? {
            "token-choice" => RoutingMode::TokenChoice,
            "expert-choice" => RoutingMode::ExpertChoice,
            x => return Err(bad("mode", x)),
        },
        capacity: match v.get("capacity") {
            Some(c) if !c.is_null() => Some(Capacity {
                factor: c.get("factor").and_then(Value::as_f64).ok_or("routing spec: capacity.factor missing")? as f32,
                drop_policy: match c.get("drop_policy").and_then(Value::as_str) {
                    Some("probs") => DropPolicy::Probs,
                    Some("position") => DropPolicy::Position,
                    x => return Err(format!("routing spec: capacity.drop_policy {x:?} is not known")),
                },
            }),
            _ => None,
        },
        shared_experts: n("shared_experts")? as u32,
        shared_expert_gate: b("shared_expert_gate")?,
        selection_bias: match s("selection_bias")? {
            "none" => SelectionBias::None,
            "learned" => SelectionBias::Learned,
            "plugin" => SelectionBias::Plugin,
            x => return Err(bad("selection_bias", x)),
        },
        per_token_route: b("per_token_route")?,
    })
}

/// Layer statistics as JSON (also the per-layer part of `metrics.jsonl`).
pub fn stats_to_json(s: &LayerStats) -> Value {
    json!({
        "layer": s.layer, "tokens": s.tokens, "top_k": s.top_k, "expert_load": s.expert_load, "dropped": s.dropped,
        "overflow_rate": s.overflow_rate, "gate_entropy": s.gate_entropy, "max1_over_max2": s.max1_over_max2,
        "load_balance_loss": s.load_balance_loss, "z_loss": s.z_loss,
    })
}

/// Layer statistics from [`stats_to_json`]'s output.
pub fn stats_from_json(v: &Value) -> Result<LayerStats, String> {
    let n = |k: &str| v.get(k).and_then(Value::as_f64).ok_or_else(|| format!("layer stats: `{k}` missing"));
    Ok(LayerStats {
        layer: n("layer")? as u32,
        tokens: n("tokens")? as u32,
        top_k: n("top_k")? as u32,
        expert_load: v.get("expert_load").and_then(Value::as_array).ok_or("layer stats: `expert_load` missing")?.iter().map(|x| x.as_u64().unwrap_or(0) as u32).collect(),
        dropped: n("dropped")? as u32,
        overflow_rate: n("overflow_rate")? as f32,
        gate_entropy: n("gate_entropy")? as f32,
        max1_over_max2: n("max1_over_max2")? as f32,
        load_balance_loss: n("load_balance_loss")? as f32,
        z_loss: n("z_loss")? as f32,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip() {
        let mut s = RouterSpec::softmax_topk(3);
        s.logit_norm = LogitNorm::Skywork(1.5);
        s.capacity = Some(Capacity { factor: 1.25, drop_policy: DropPolicy::Position });
        s.selection_bias = SelectionBias::Plugin;
        let back = spec_from_json(&spec_to_json(&s)).expect("parses");
        assert_eq!(spec_to_json(&back), spec_to_json(&s));
        assert!(matches!(back.logit_norm, LogitNorm::Skywork(l) if l == 1.5));
    }
}

//! The model a plan builds: its [`ModelConfig`] (the plan's shapes plus everything the
//! first source's config says that a plan does not: RoPE, norm epsilon, biases), and
//! the check that the plan writes exactly the tensors that model needs.

use std::collections::BTreeMap;

use candle_core::{DType, Device, Tensor};

use crate::contract::{PlannedTensors, TargetModel};
use crate::model::config::{Architecture, ModelConfig, MoeConfig};
use crate::model::error::ModelError;
use crate::model::params::ParamSource;
use crate::model::transformer::Transformer;

/// The target's config. `planned` decides details a shape cannot (a shared-expert gate
/// exists when the plan writes one).
pub fn target_config(target: &TargetModel, base: &ModelConfig, planned: &PlannedTensors) -> Result<ModelConfig, String> {
    let s = &target.shape;
    let layers = s.layers as usize;
    let moe = match target.moe_layers.first() {
        None => None,
        Some(first) => {
            if let Some(other) = target.moe_layers.iter().find(|m| {
                (m.experts, m.expert_intermediate, m.top_k, m.shared_experts, m.shared_intermediate)
                    != (first.experts, first.expert_intermediate, first.top_k, first.shared_experts, first.shared_intermediate)
            }) {
                return Err(format!("MoE layers {} and {} differ in experts, widths, top-k or shared experts; Recast models use one MoE layout for all MoE layers", first.layer, other.layer));
            }
            let mut moe_layers = vec![false; layers];
            for m in &target.moe_layers {
                moe_layers[m.layer as usize] = true;
            }
            let gate = (0..layers).any(|l| planned.contains_key(&format!("model.layers.{l}.mlp.shared_expert_gate.weight")));
            Some(MoeConfig {
                num_experts: first.experts as usize,
                top_k: first.top_k as usize,
                expert_intermediate: vec![first.expert_intermediate as usize; first.experts as usize],
                shared_expert_intermediate: vec![first.shared_intermediate as usize; first.shared_experts as usize],
                shared_expert_gate: gate,
                normalize_top_k: true,
                moe_layers,
                router_aux_loss_coef: base.moe.as_ref().map_or(0.01, |m| m.router_aux_loss_coef),
            })
        }
    };
    let architecture = match &moe {
        Some(m) if base.qkv_bias || !m.shared_expert_intermediate.is_empty() || m.moe_layers.iter().any(|x| !x) => Architecture::Qwen2Moe,
        Some(_) => Architecture::Mixtral,
        None if base.architecture.is_moe() => {
            if base.qkv_bias {
                Architecture::Qwen2
            } else {
                Architecture::Llama
            }
        }
        None => base.architecture,
    };
    let window = base.attention_window.iter().flatten().next().copied();
    let config = ModelConfig {
        architecture,
        vocab_size: s.vocab as usize,
        hidden_size: s.hidden as usize,
        intermediate_size: s.intermediate as usize,
        num_layers: layers,
        num_heads: s.heads as usize,
        num_kv_heads: s.kv_heads as usize,
        head_dim: s.head_dim as usize,
        rms_norm_eps: base.rms_norm_eps,
        rope: base.rope.clone(),
        max_position_embeddings: base.max_position_embeddings,
        tie_word_embeddings: s.tied_embeddings,
        qkv_bias: base.qkv_bias,
        o_bias: base.o_bias,
        attention_window: if base.attention_window.len() == layers { base.attention_window.clone() } else { vec![window; layers] },
        moe,
        passthrough: base.passthrough.clone(),
    };
    config.validate()?;
    Ok(config)
}

/// Names and shapes of every tensor `config`'s model needs.
pub fn required_tensors(config: &ModelConfig) -> Result<BTreeMap<String, Vec<usize>>, ModelError> {
    struct Recorder(BTreeMap<String, Vec<usize>>);
    impl ParamSource for Recorder {
        fn tensor(&mut self, name: &str, dims: &[usize]) -> Result<Tensor, ModelError> {
            self.0.insert(name.to_string(), dims.to_vec());
            // A broadcast scalar: the right shape without allocating it.
            Ok(Tensor::zeros((), DType::F32, &Device::Cpu)?.broadcast_as(dims)?)
        }
    }
    let mut recorder = Recorder(BTreeMap::new());
    Transformer::build(config, &mut recorder)?;
    Ok(recorder.0)
}

/// Compare what a plan writes with what the target model needs; the first difference,
/// as a sentence.
pub fn check_planned(config: &ModelConfig, planned: &PlannedTensors) -> Result<(), String> {
    let required = required_tensors(config).map_err(|e| e.to_string())?;
    for (name, shape) in &required {
        match planned.get(name) {
            None => return Err(format!("the plan does not write `{name}`, which the {} target needs", config.architecture.hf_class())),
            Some(p) if p.iter().map(|&d| d as usize).collect::<Vec<_>>() != *shape => {
                return Err(format!("the plan writes `{name}` with shape {p:?}; the target needs {shape:?}"));
            }
            _ => {}
        }
    }
    if let Some(extra) = planned.keys().find(|n| !required.contains_key(*n)) {
        return Err(format!("the plan writes `{extra}`, which is not a tensor of the {} target", config.architecture.hf_class()));
    }
    Ok(())
}

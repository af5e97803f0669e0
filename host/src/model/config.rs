//! The model's shape, independent of the file format it came from. Hugging Face configs
//! are translated into this (see [`super::hf_config`]); everything that builds or runs a
//! model reads only this.

use serde::{Deserialize, Serialize};

/// The checkpoint families Recast reads and writes. The family fixes tensor names and
/// the details the config does not spell out (qkv bias, how experts are combined).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Architecture {
    /// `LlamaForCausalLM`.
    Llama,
    /// `Qwen2ForCausalLM`: Llama with a bias on the q, k and v projections.
    Qwen2,
    /// `MistralForCausalLM`: Llama with sliding-window attention.
    Mistral,
    /// `MixtralForCausalLM`: Mistral whose MLPs are top-k MoE layers.
    Mixtral,
    /// `Qwen2MoeForCausalLM`: Qwen2 with MoE layers, a gated shared expert and
    /// optionally dense layers in between.
    Qwen2Moe,
}

impl Architecture {
    /// The `architectures[0]` string of a Hugging Face `config.json`.
    pub fn hf_class(self) -> &'static str {
        match self {
            Architecture::Llama => "LlamaForCausalLM",
            Architecture::Qwen2 => "Qwen2ForCausalLM",
            Architecture::Mistral => "MistralForCausalLM",
            Architecture::Mixtral => "MixtralForCausalLM",
            Architecture::Qwen2Moe => "Qwen2MoeForCausalLM",
        }
    }

    /// The `model_type` string of a Hugging Face `config.json`.
    pub fn hf_model_type(self) -> &'static str {
        match self {
            Architecture::Llama => "llama",
            Architecture::Qwen2 => "qwen2",
            Architecture::Mistral => "mistral",
            Architecture::Mixtral => "mixtral",
            Architecture::Qwen2Moe => "qwen2_moe",
        }
    }

    /// Every supported family, for error messages and lookups.
    pub const ALL: [Architecture; 5] = [Architecture::Llama, Architecture::Qwen2, Architecture::Mistral, Architecture::Mixtral, Architecture::Qwen2Moe];

    /// Whether the family's MLPs can be MoE layers.
    pub fn is_moe(self) -> bool {
        matches!(self, Architecture::Mixtral | Architecture::Qwen2Moe)
    }
}

/// How rotary position frequencies are stretched for long contexts (Hugging Face
/// `rope_type`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum RopeScaling {
    /// Plain RoPE.
    None,
    /// Positions divided by `factor` (Position Interpolation).
    Linear { factor: f64 },
    /// Llama 3.1's frequency-dependent interpolation.
    Llama3 { factor: f64, low_freq_factor: f64, high_freq_factor: f64, original_max_position_embeddings: f64 },
    /// NTK-aware scaling that raises theta once a sequence outgrows the trained length.
    Dynamic { factor: f64, original_max_position_embeddings: f64 },
}

/// Rotary embedding parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RopeConfig {
    /// Base of the frequency ladder.
    pub theta: f64,
    /// Long-context stretching.
    pub scaling: RopeScaling,
}

/// Where a layer's MLP is an MoE layer, and what its experts look like.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MoeConfig {
    /// Routed experts E per MoE layer.
    pub num_experts: usize,
    /// Experts per token k the checkpoint was trained with (the default routing).
    pub top_k: usize,
    /// Intermediate width of each routed expert; experts may differ (fine-grained).
    pub expert_intermediate: Vec<usize>,
    /// Intermediate width of each shared expert (always-on); empty for none.
    pub shared_expert_intermediate: Vec<usize>,
    /// Shared experts' output scaled by a learned sigmoid gate (Qwen2-MoE).
    pub shared_expert_gate: bool,
    /// Default routing renormalises the top-k gates (Mixtral: yes; Qwen2-MoE:
    /// `norm_topk_prob`).
    pub normalize_top_k: bool,
    /// Which layers have an MoE MLP (the others are dense).
    pub moe_layers: Vec<bool>,
    /// The checkpoint's own load-balancing coefficient, kept for writing it back.
    pub router_aux_loss_coef: f64,
}

/// The whole decoder's shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ModelConfig {
    /// Checkpoint family (tensor names, defaults).
    pub architecture: Architecture,
    pub vocab_size: usize,
    /// Model width d.
    pub hidden_size: usize,
    /// Width of the dense SwiGLU MLPs.
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    /// Key/value heads (grouped-query attention); divides `num_heads`.
    pub num_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope: RopeConfig,
    pub max_position_embeddings: usize,
    /// Output head shares the token embedding.
    pub tie_word_embeddings: bool,
    /// Bias on the q, k and v projections (Qwen2, Llama's `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on the output projection (Llama's `attention_bias`).
    pub o_bias: bool,
    /// Attention window per layer: `Some(w)` lets a query see the `w` most recent
    /// positions including itself; `None` is full causal attention.
    pub attention_window: Vec<Option<usize>>,
    /// MoE layout, for MoE families.
    pub moe: Option<MoeConfig>,
    /// Extra `config.json` keys kept verbatim for writing the checkpoint back
    /// (token ids, initializer range, …).
    #[serde(default)]
    pub passthrough: serde_json::Map<String, serde_json::Value>,
}

impl ModelConfig {
    /// Whether layer `layer`'s MLP is an MoE layer.
    pub fn is_moe_layer(&self, layer: usize) -> bool {
        self.moe.as_ref().is_some_and(|m| m.moe_layers.get(layer).copied().unwrap_or(false))
    }

    /// Check the numbers fit together, so model building can index without fear.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_layers),
            ("num_attention_heads", self.num_heads),
            ("num_key_value_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be positive"));
            }
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(format!("num_attention_heads ({}) is not a multiple of num_key_value_heads ({})", self.num_heads, self.num_kv_heads));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(format!("head_dim ({}) must be even for rotary embeddings", self.head_dim));
        }
        if self.attention_window.len() != self.num_layers {
            return Err(format!("{} attention windows for {} layers", self.attention_window.len(), self.num_layers));
        }
        if let Some(moe) = &self.moe {
            if moe.num_experts == 0 || moe.top_k == 0 || moe.top_k > moe.num_experts {
                return Err(format!("MoE with {} experts and top-k {} (need 1 <= k <= E)", moe.num_experts, moe.top_k));
            }
            if moe.expert_intermediate.len() != moe.num_experts || moe.expert_intermediate.contains(&0) {
                return Err(format!("{} expert widths for {} experts (each must be positive)", moe.expert_intermediate.len(), moe.num_experts));
            }
            if moe.moe_layers.len() != self.num_layers {
                return Err(format!("MoE layer map has {} entries for {} layers", moe.moe_layers.len(), self.num_layers));
            }
            if moe.shared_expert_gate && moe.shared_expert_intermediate.is_empty() {
                return Err("a shared-expert gate without shared experts".into());
            }
        }
        Ok(())
    }
}

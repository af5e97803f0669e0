//! The model's shape, independent of the file format it came from. Hugging Face configs
//! are translated into this (see [`super::hf_config`]); everything that builds or runs a
//! model reads only this.

use serde::{Deserialize, Serialize};

/// Upper bounds on a model's sizes: beyond any model Recast can train in memory, low
/// enough that a typo or a hostile config fails before anything is allocated instead of
/// asking for terabytes. Run configs' `[model.init]` and checkpoints' `config.json` are
/// both held to them.
pub mod size_limits {
    /// Vocabulary (the largest released models have about 260,000 tokens).
    pub const VOCAB: usize = 1 << 22;
    /// Model width d.
    pub const HIDDEN: usize = 1 << 16;
    /// Decoder layers.
    pub const LAYERS: usize = 1024;
    /// Attention heads (query and key/value).
    pub const HEADS: usize = 1024;
    /// Width of one attention head.
    pub const HEAD_DIM: usize = 1024;
    /// Width of a dense MLP or of one expert.
    pub const INTERMEDIATE: usize = 1 << 20;
    /// Routed experts per MoE layer.
    pub const EXPERTS: usize = 1024;
    /// Positions a model may be asked to attend over.
    pub const POSITIONS: usize = 1 << 24;
}

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

impl RopeConfig {
    /// Theta and every scaling number finite and positive: a theta <= 0 or a factor of 0
    /// turns every rotary angle into NaN.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, v: f64| if v.is_finite() && v > 0.0 { Ok(()) } else { Err(format!("`{name}` = {v} must be a finite number > 0")) };
        positive("rope_theta", self.theta)?;
        match self.scaling {
            RopeScaling::None => Ok(()),
            RopeScaling::Linear { factor } => positive("rope_scaling.factor", factor),
            RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
                positive("rope_scaling.factor", factor)?;
                positive("rope_scaling.low_freq_factor", low_freq_factor)?;
                positive("rope_scaling.high_freq_factor", high_freq_factor)?;
                positive("rope_scaling.original_max_position_embeddings", original_max_position_embeddings)?;
                if high_freq_factor <= low_freq_factor {
                    return Err(format!("`rope_scaling.high_freq_factor` ({high_freq_factor}) must exceed `low_freq_factor` ({low_freq_factor})"));
                }
                Ok(())
            }
            RopeScaling::Dynamic { factor, original_max_position_embeddings } => {
                positive("rope_scaling.factor", factor)?;
                positive("rope_scaling.original_max_position_embeddings", original_max_position_embeddings)
            }
        }
    }
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

    /// Number of weights, counted from the shape alone (nothing allocated), so a run can
    /// refuse a model that cannot fit in memory before it builds one.
    pub fn parameter_count(&self) -> u128 {
        let d = self.hidden_size as u128;
        let attention = d * (self.num_heads as u128 + 2 * self.num_kv_heads as u128) * self.head_dim as u128 + self.num_heads as u128 * self.head_dim as u128 * d;
        let mlp = |width: usize| 3 * d * width as u128;
        let layers: u128 = (0..self.num_layers)
            .map(|l| {
                let ffn = match &self.moe {
                    Some(moe) if self.is_moe_layer(l) => {
                        d * moe.num_experts as u128 + moe.expert_intermediate.iter().chain(&moe.shared_expert_intermediate).map(|&w| mlp(w)).sum::<u128>() + if moe.shared_expert_gate { d } else { 0 }
                    }
                    _ => mlp(self.intermediate_size),
                };
                attention + ffn + 2 * d
            })
            .sum();
        let embeddings = self.vocab_size as u128 * d * if self.tie_word_embeddings { 1 } else { 2 };
        embeddings + layers + d
    }

    /// Check the numbers fit together and lie in their ranges (see [`size_limits`]), so
    /// model building can index and allocate without fear and `forward` stays finite.
    pub fn validate(&self) -> Result<(), String> {
        use size_limits as max;
        let sizes = [
            ("vocab_size", self.vocab_size, max::VOCAB),
            ("hidden_size", self.hidden_size, max::HIDDEN),
            ("intermediate_size", self.intermediate_size, max::INTERMEDIATE),
            ("num_hidden_layers", self.num_layers, max::LAYERS),
            ("num_attention_heads", self.num_heads, max::HEADS),
            ("num_key_value_heads", self.num_kv_heads, max::HEADS),
            ("head_dim", self.head_dim, max::HEAD_DIM),
            ("max_position_embeddings", self.max_position_embeddings, max::POSITIONS),
        ];
        for (name, value, limit) in sizes {
            if value == 0 || value > limit {
                return Err(format!("`{name}` = {value} is out of range (1 ..= {limit})"));
            }
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps > 0.0 && self.rms_norm_eps <= 1.0) {
            return Err(format!("`rms_norm_eps` = {} is out of range (0 < eps <= 1)", self.rms_norm_eps));
        }
        self.rope.validate()?;
        if let Some(w) = self.attention_window.iter().flatten().find(|&&w| w == 0) {
            return Err(format!("an attention window of {w} positions (must be at least 1)"));
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
            if moe.num_experts == 0 || moe.num_experts > max::EXPERTS || moe.top_k == 0 || moe.top_k > moe.num_experts {
                return Err(format!("MoE with {} experts and top-k {} (need 1 <= k <= E <= {})", moe.num_experts, moe.top_k, max::EXPERTS));
            }
            let widths = moe.expert_intermediate.iter().chain(&moe.shared_expert_intermediate);
            if moe.expert_intermediate.len() != moe.num_experts || widths.clone().any(|&w| w == 0 || w > max::INTERMEDIATE) {
                return Err(format!("{} expert widths for {} experts (each must be 1 ..= {})", moe.expert_intermediate.len(), moe.num_experts, max::INTERMEDIATE));
            }
            if !(moe.router_aux_loss_coef.is_finite() && moe.router_aux_loss_coef >= 0.0) {
                return Err(format!("`router_aux_loss_coef` = {} must be a finite number >= 0", moe.router_aux_loss_coef));
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

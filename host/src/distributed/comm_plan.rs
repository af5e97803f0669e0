//! How many bytes a training step moves between ranks for a model and a layout, before
//! any run: what `recast bench comm-plan` prints, to size expert parallelism against a
//! node's links. Routing is taken as balanced (each expert gets `tokens·k/E` rows), the
//! all-reduces as rings (each rank sends `2·(n−1)/n` of the buffer).

use crate::model::config::ModelConfig;

/// The traffic of one optimizer step, per rank, in bytes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CommPlan {
    /// MoE layers in the model.
    pub moe_layers: usize,
    /// All-to-all bytes one MoE layer sends from one rank in a step: dispatch and combine
    /// in the forward pass and their gradients in the backward pass.
    pub all_to_all_per_layer: f64,
    /// [`Self::all_to_all_per_layer`] over all MoE layers.
    pub all_to_all: f64,
    /// Bytes of gradients of the parameters every replica holds (attention, norms,
    /// embeddings, routers, dense MLPs, shared experts) a rank sends in their all-reduce
    /// over the data-parallel replicas.
    pub dense_all_reduce: f64,
    /// Bytes of expert gradients a rank sends in their all-reduce over the
    /// expert-data-parallel group (the replicas holding the same experts).
    pub expert_all_reduce: f64,
}

impl CommPlan {
    /// The plan for `model` trained by `data_parallel × expert_parallel` ranks, each
    /// routing `tokens_per_rank` tokens a step with activations of `activation_bytes`
    /// each and gradients of `gradient_bytes`.
    pub fn new(model: &ModelConfig, data_parallel: usize, expert_parallel: usize, tokens_per_rank: usize, activation_bytes: usize, gradient_bytes: usize) -> Self {
        let d = model.hidden_size as f64;
        let (dp, ep) = (data_parallel.max(1) as f64, expert_parallel.max(1) as f64);
        let ring = |n: f64| 2.0 * (n - 1.0) / n;
        let (moe_layers, k, expert_params) = match &model.moe {
            Some(moe) => {
                let layers = (0..model.num_layers).filter(|&l| model.is_moe_layer(l)).count();
                let per_layer: f64 = moe.expert_intermediate.iter().map(|&w| 3.0 * d * w as f64).sum();
                (layers, moe.top_k as f64, per_layer * layers as f64)
            }
            None => (0, 0.0, 0.0),
        };
        // Rows leaving the rank: all routed rows but the share its own experts take.
        let rows_out = tokens_per_rank as f64 * k * (ep - 1.0) / ep;
        let all_to_all_per_layer = 4.0 * rows_out * d * activation_bytes as f64;
        let dense_params = model.parameter_count() as f64 - expert_params;
        CommPlan {
            moe_layers,
            all_to_all_per_layer,
            all_to_all: all_to_all_per_layer * moe_layers as f64,
            dense_all_reduce: ring(dp) * dense_params * gradient_bytes as f64,
            expert_all_reduce: ring(dp) * expert_params / ep * gradient_bytes as f64,
        }
    }
}

/// Mixtral-8x7B's shape (32 layers, 8 experts of 14336, top-2, hidden 4096), the layout
/// the design notes size multi-node runs with.
pub fn mixtral_8x7b() -> ModelConfig {
    let json = serde_json::json!({
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral", "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "num_local_experts": 8,
        "num_experts_per_tok": 2, "vocab_size": 32000, "max_position_embeddings": 32768, "rms_norm_eps": 1e-5,
        "rope_theta": 1e6, "tie_word_embeddings": false, "hidden_act": "silu"
    });
    // A fixed, valid config: reading it cannot fail.
    crate::model::hf_config::from_json(&json).unwrap_or_else(|e| unreachable!("the Mixtral-8x7B preset is valid: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mixtral_traffic_matches_a_hand_count() {
        let model = mixtral_8x7b();
        // 8 ranks: expert parallel 8 inside a node, one replica; 4096 tokens per rank, bf16.
        let plan = CommPlan::new(&model, 1, 8, 4096, 2, 4);
        assert_eq!(plan.moe_layers, 32);
        // 4 passes × 4096 tokens × 2 experts × 7/8 leaving × 4096 wide × 2 bytes.
        let per_layer = 4.0 * 4096.0 * 2.0 * 7.0 / 8.0 * 4096.0 * 2.0;
        assert_eq!(plan.all_to_all_per_layer, per_layer);
        assert_eq!(plan.all_to_all, per_layer * 32.0);
        assert_eq!((plan.dense_all_reduce, plan.expert_all_reduce), (0.0, 0.0), "one replica reduces nothing");
        // Two replicas: every rank sends its whole gradient once (2·(2−1)/2 = 1).
        let two = CommPlan::new(&model, 2, 8, 4096, 2, 4);
        let experts = 32.0 * 8.0 * 3.0 * 4096.0 * 14336.0;
        assert_eq!(two.expert_all_reduce, experts / 8.0 * 4.0);
        assert_eq!(two.dense_all_reduce, (model.parameter_count() as f64 - experts) * 4.0);
        // Mixtral-8x7B has about 46.7B parameters, 45.1B of them in experts.
        assert!((model.parameter_count() as f64 / 1e9 - 46.7).abs() < 0.1, "{}", model.parameter_count());
    }
}

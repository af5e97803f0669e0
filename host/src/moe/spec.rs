//! The routing spec the MoE layer executes: the router plugin's `router-spec` (the WIT
//! record is the one definition), and the routing a checkpoint was trained with, used
//! when no router plugin is given.

pub use crate::contract::{Capacity, DropPolicy, LayerStats, LogitNorm, RouterSpec, RoutingMode, ScoreFunction, SelectionBias, TopkOrder};

use crate::model::config::MoeConfig;

/// Mixtral/Qwen2-MoE routing as the checkpoint's config describes it: softmax, top-k,
/// renormalised if the config says so, dropless, shared experts on and gated as stored.
pub fn checkpoint_default(moe: &MoeConfig) -> RouterSpec {
    RouterSpec {
        renormalize: moe.normalize_top_k,
        shared_experts: moe.shared_expert_intermediate.len() as u32,
        shared_expert_gate: moe.shared_expert_gate,
        ..RouterSpec::softmax_topk(moe.top_k as u32)
    }
}

/// Weights of the auxiliary losses for one layer and step (from the aux-schedule plugin).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AuxCoefficients {
    /// Load-balancing loss weight α.
    pub load_balance: f32,
    /// Router z-loss weight β_z.
    pub z_loss: f32,
}

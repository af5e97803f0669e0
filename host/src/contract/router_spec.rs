//! Constructors of the routing spec the host uses when no plugin gives one.

use super::{LogitNorm, RouterSpec, RoutingMode, ScoreFunction, SelectionBias, TopkOrder};

impl RouterSpec {
    /// Plain token-choice routing: softmax, top-`k`, renormalised, dropless (Mixtral's).
    pub fn softmax_topk(k: u32) -> Self {
        RouterSpec {
            score: ScoreFunction::Softmax,
            logit_norm: LogitNorm::None,
            top_k: k,
            order: TopkOrder::SoftmaxThenTopk,
            renormalize: true,
            scaling: 1.0,
            mode: RoutingMode::TokenChoice,
            capacity: None,
            shared_experts: 0,
            shared_expert_gate: false,
            selection_bias: SelectionBias::None,
            per_token_route: false,
        }
    }
}

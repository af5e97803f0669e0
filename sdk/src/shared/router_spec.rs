// The constructors of `RouterSpec` that the SDK and the host share. Both generate
// `RouterSpec` from the same WIT (wit-bindgen here, wasmtime's bindgen in the host), so
// each includes this file with `include!` where the generated types are in scope: the
// default routing exists once.

impl RouterSpec {
    /// Mixtral-style routing: softmax scores, top-k, renormalised, dropless, no shared
    /// experts, no bias. Change fields from here; the host also runs it when no router
    /// plugin gives a spec.
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

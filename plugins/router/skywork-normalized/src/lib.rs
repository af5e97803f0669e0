//! Skywork-MoE's gating-logit normalisation (METHODS.md §1.2): per token, the router
//! logits are standardised over experts and multiplied by λ before the softmax, so the
//! gate stays sharp instead of drifting toward a plain average of experts.

use recast_sdk::router::*;
use serde::Deserialize;

/// Parameters; see README.md.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    lambda: f32,
    top_k: u32,
    capacity_factor: Option<f32>,
    drop_policy: String,
}

impl Default for Params {
    fn default() -> Self {
        Params { lambda: 1.0, top_k: 2, capacity_factor: Some(1.25), drop_policy: "probs".into() }
    }
}

struct SkyworkNormalized {
    spec: RouterSpec,
}

impl Plugin for SkyworkNormalized {
    type Config = Params;

    fn new(p: Params, _: &Context) -> Result<Self, String> {
        if !(p.lambda.is_finite() && p.lambda > 0.0) {
            return Err(format!("lambda must be > 0, not {}", p.lambda));
        }
        let spec = RouterSpec { logit_norm: LogitNorm::Skywork(p.lambda), capacity: capacity(p.capacity_factor, &p.drop_policy)?, ..RouterSpec::softmax_topk(p.top_k) };
        Ok(SkyworkNormalized { spec })
    }
}

impl Router for SkyworkNormalized {
    fn spec(&mut self, layer: &LayerInfo) -> Result<RouterSpec, String> {
        check_top_k(self.spec.top_k, layer)?;
        Ok(self.spec)
    }
}

recast_sdk::export_router!(SkyworkNormalized);

//! Token-choice top-k over sigmoid scores (METHODS.md §1.1): each expert's score is
//! `sigmoid(z_e)` independently, the chosen scores are renormalised and multiplied by the
//! routed scaling factor ρ (DeepSeek-V3: ρ = 2.5).

use recast_sdk::router::*;
use serde::Deserialize;

/// Parameters; see README.md.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    top_k: u32,
    renormalize: bool,
    scaling: f32,
    capacity_factor: Option<f32>,
    drop_policy: String,
}

impl Default for Params {
    fn default() -> Self {
        Params { top_k: 2, renormalize: true, scaling: 1.0, capacity_factor: None, drop_policy: "probs".into() }
    }
}

struct SigmoidTopK {
    spec: RouterSpec,
}

impl Plugin for SigmoidTopK {
    type Config = Params;

    fn new(p: Params, _: &Context) -> Result<Self, String> {
        if !(p.scaling.is_finite() && p.scaling > 0.0) {
            return Err(format!("scaling must be > 0, not {}", p.scaling));
        }
        let spec =
            RouterSpec { score: ScoreFunction::Sigmoid, renormalize: p.renormalize, scaling: p.scaling, capacity: capacity(p.capacity_factor, &p.drop_policy)?, ..RouterSpec::softmax_topk(p.top_k) };
        Ok(SigmoidTopK { spec })
    }
}

impl Router for SigmoidTopK {
    fn spec(&mut self, layer: &LayerInfo) -> Result<RouterSpec, String> {
        check_top_k(self.spec.top_k, layer)?;
        Ok(self.spec)
    }
}

recast_sdk::export_router!(SigmoidTopK);

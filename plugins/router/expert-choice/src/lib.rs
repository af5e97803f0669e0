//! Expert-choice routing (Zhou et al. 2022; METHODS.md §1.3): instead of tokens picking
//! experts, each expert takes the `C = ⌊T·c/E⌋` tokens that score it highest — perfect
//! balance by construction, a variable number of experts per token. It looks at the
//! whole micro-batch, so it is non-causal: for training and encoders.

use recast_sdk::router::*;
use serde::Deserialize;

/// Parameters; see README.md.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    capacity_factor: f32,
}

impl Default for Params {
    fn default() -> Self {
        Params { capacity_factor: 2.0 }
    }
}

struct ExpertChoice {
    spec: RouterSpec,
}

impl Plugin for ExpertChoice {
    type Config = Params;

    fn new(p: Params, _: &Context) -> Result<Self, String> {
        let capacity = capacity(Some(p.capacity_factor), "probs")?;
        Ok(ExpertChoice { spec: RouterSpec { mode: RoutingMode::ExpertChoice, capacity, renormalize: false, ..RouterSpec::softmax_topk(1) } })
    }
}

impl Router for ExpertChoice {
    fn spec(&mut self, _layer: &LayerInfo) -> Result<RouterSpec, String> {
        Ok(self.spec)
    }
}

recast_sdk::export_router!(ExpertChoice);

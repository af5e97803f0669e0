//! AquilaMoE's Scale-Out (METHODS.md §3.6): after Scale-Up, every MLP layer is upcycled
//! into `experts` exact copies with a router drawn from N(0, 0.02²); the recipe then
//! trains with top-2 routing, load-balancing weight 1e-3 and z-loss weight 1e-2.

use recast_sdk::init_scheme::build::{router_init, sparse_upcycle};
use recast_sdk::init_scheme::*;
use serde::Deserialize;

/// Parameters; see README.md.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    experts: u32,
    top_k: u32,
    router_std: f32,
}

impl Default for Params {
    fn default() -> Self {
        Params { experts: 8, top_k: 2, router_std: 0.02 }
    }
}

struct ScaleOut {
    p: Params,
    router: RouterInit,
    seed: u64,
}

impl Plugin for ScaleOut {
    type Config = Params;

    fn new(p: Params, ctx: &Context) -> Result<Self, String> {
        if p.experts == 0 || p.top_k == 0 || p.top_k > p.experts {
            return Err(format!("need 1 <= top_k <= experts, got top_k = {} and experts = {}", p.top_k, p.experts));
        }
        let router = router_init("normal", p.router_std)?;
        Ok(ScaleOut { p, router, seed: ctx.seed })
    }
}

impl InitScheme for ScaleOut {
    fn plan(&mut self, sources: &[SourceModel]) -> Result<InitPlan, String> {
        let [src] = sources else {
            return Err(format!("Scale-Out takes exactly one dense source (the Scale-Up result), got {}", sources.len()));
        };
        let (ops, moe_layers) = sparse_upcycle(src, self.p.experts, self.p.top_k, |_| true, self.router, self.seed)?;
        Ok(InitPlan { target: TargetModel { shape: src.shape, moe_layers }, ops })
    }
}

recast_sdk::export_init_scheme!(ScaleOut);

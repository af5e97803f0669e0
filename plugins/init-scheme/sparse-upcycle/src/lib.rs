//! Sparse upcycling (Komatsuzaki et al. 2023; METHODS.md §3.1): copy every dense tensor;
//! in each upcycled layer every expert is an exact copy of the dense SwiGLU FFN and the
//! router is new. With renormalised top-k the upcycled model reproduces the dense one.

use recast_sdk::init_scheme::build::{router_init, sparse_upcycle};
use recast_sdk::init_scheme::*;
use serde::Deserialize;

/// Parameters; see README.md.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    experts: u32,
    top_k: u32,
    every: u32,
    router_init: String,
    router_std: f32,
}

impl Default for Params {
    fn default() -> Self {
        Params { experts: 8, top_k: 2, every: 1, router_init: "normal".into(), router_std: 0.02 }
    }
}

struct SparseUpcycle {
    p: Params,
    router: RouterInit,
    seed: u64,
}

impl Plugin for SparseUpcycle {
    type Config = Params;

    fn new(p: Params, ctx: &Context) -> Result<Self, String> {
        if p.experts == 0 || p.top_k == 0 || p.top_k > p.experts {
            return Err(format!("need 1 <= top_k <= experts, got top_k = {} and experts = {}", p.top_k, p.experts));
        }
        if p.every == 0 {
            return Err("every must be >= 1".into());
        }
        let router = router_init(&p.router_init, p.router_std)?;
        Ok(SparseUpcycle { p, router, seed: ctx.seed })
    }
}

impl InitScheme for SparseUpcycle {
    fn plan(&mut self, sources: &[SourceModel]) -> Result<InitPlan, String> {
        let [src] = sources else {
            return Err(format!("sparse upcycling takes exactly one dense source, got {}", sources.len()));
        };
        let every = self.p.every;
        let (ops, moe_layers) = sparse_upcycle(src, self.p.experts, self.p.top_k, |l| (l + 1).is_multiple_of(every), self.router, self.seed)?;
        Ok(InitPlan { target: TargetModel { shape: src.shape, moe_layers }, ops })
    }
}

recast_sdk::export_init_scheme!(SparseUpcycle);

//! Token-level fusion of specialists (UltraFuser, Ding et al. 2024; METHODS.md §3.7), as
//! one MoE: N dense specialists of one architecture become one model whose layer-`l`
//! experts are the specialists' layer-`l` FFNs, with a token-level router over them.
//! Everything else (embeddings, attention, norms, head) comes from one base specialist.

use recast_sdk::Rng;
use recast_sdk::init_scheme::build::{PROJECTIONS, copy, dense_ffn, expert_ffn, init_router, require_dense_ffn, router_init};
use recast_sdk::init_scheme::*;
use serde::Deserialize;

/// Parameters; see README.md.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    base: u32,
    top_k: Option<u32>,
    router_init: String,
    router_std: f32,
}

impl Default for Params {
    fn default() -> Self {
        Params { base: 0, top_k: None, router_init: "normal".into(), router_std: 0.02 }
    }
}

struct FuseSpecialists {
    p: Params,
    router: RouterInit,
    rng: Rng,
}

impl Plugin for FuseSpecialists {
    type Config = Params;

    fn new(p: Params, ctx: &Context) -> Result<Self, String> {
        let router = router_init(&p.router_init, p.router_std)?;
        Ok(FuseSpecialists { p, router, rng: Rng::new(ctx.seed) })
    }
}

impl InitScheme for FuseSpecialists {
    fn plan(&mut self, sources: &[SourceModel]) -> Result<InitPlan, String> {
        if sources.len() < 2 {
            return Err(format!("fusion needs at least two specialists (--source twice or more), got {}", sources.len()));
        }
        let n = sources.len() as u32;
        let base = sources.get(self.p.base as usize).ok_or_else(|| format!("base = {} but there are only {n} sources", self.p.base))?;
        let key = |m: &ModelShape| (m.layers, m.hidden, m.intermediate, m.heads, m.kv_heads, m.head_dim, m.vocab, m.tied_embeddings);
        for s in sources {
            if key(&s.shape) != key(&base.shape) || s.architecture != base.architecture {
                return Err(format!("source {} ({}, {:?}) differs from the base ({}, {:?}); specialists must share one architecture", s.index, s.architecture, s.shape, base.architecture, base.shape));
            }
        }
        let k = self.p.top_k.unwrap_or(n);
        if k == 0 || k > n {
            return Err(format!("top_k must be in 1..={n}, not {k}"));
        }
        let is_mlp = |name: &str| (0..base.shape.layers).any(|l| PROJECTIONS.iter().any(|q| name == dense_ffn(l, q)));
        let mut ops: Vec<InitOp> = base.tensors.iter().filter(|t| !is_mlp(&t.name)).map(|t| copy(base.index, &t.name, t.name.clone())).collect();
        let mut moe_layers = Vec::new();
        for layer in 0..base.shape.layers {
            for s in sources {
                require_dense_ffn(s, layer)?;
                for proj in PROJECTIONS {
                    ops.push(copy(s.index, &dense_ffn(layer, proj), expert_ffn(layer, s.index, proj)));
                }
            }
            ops.push(init_router(layer, n, base.shape.hidden, self.router, self.rng.fork(layer as u64).next_u64()));
            moe_layers.push(MoeLayerShape { layer, experts: n, expert_intermediate: base.shape.intermediate, top_k: k, shared_experts: 0, shared_intermediate: 0 });
        }
        Ok(InitPlan { target: TargetModel { shape: base.shape, moe_layers }, ops })
    }
}

recast_sdk::export_init_scheme!(FuseSpecialists);

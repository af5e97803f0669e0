//! Drop-Upcycling (Nakamura et al., ICLR 2025; METHODS.md §3.2): sparse upcycling, then
//! in every expert a random `⌊r·d_ff⌋` of the intermediate neurons — columns of `W_gate`
//! and `W_up`, rows of `W_down` in the paper's notation; rows of `gate_proj`/`up_proj` and
//! columns of `down_proj` in Hugging Face's layout — are redrawn from N(μ, σ²) with μ, σ
//! of the whole dense matrix. Everything else stays bit-identical.

use recast_sdk::Rng;
use recast_sdk::init_scheme::build::{PROJECTIONS, dense_ffn, expert_ffn, neuron_axis, router_init, sparse_upcycle};
use recast_sdk::init_scheme::*;
use serde::Deserialize;

/// Parameters; see README.md.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    experts: u32,
    top_k: u32,
    ratio: f64,
    every: u32,
    index_sets: String,
    router_init: String,
    router_std: f32,
}

impl Default for Params {
    fn default() -> Self {
        Params { experts: 8, top_k: 2, ratio: 0.5, every: 1, index_sets: "shared".into(), router_init: "uniform_centred".into(), router_std: 0.02 }
    }
}

struct DropUpcycle {
    p: Params,
    router: RouterInit,
    rng: Rng,
    seed: u64,
}

impl Plugin for DropUpcycle {
    type Config = Params;

    fn new(p: Params, ctx: &Context) -> Result<Self, String> {
        if p.experts == 0 || p.top_k == 0 || p.top_k > p.experts {
            return Err(format!("need 1 <= top_k <= experts, got top_k = {} and experts = {}", p.top_k, p.experts));
        }
        if !(0.0..=1.0).contains(&p.ratio) {
            return Err(format!("ratio must be in [0, 1], not {}", p.ratio));
        }
        if p.every == 0 {
            return Err("every must be >= 1".into());
        }
        if !matches!(p.index_sets.as_str(), "shared" | "per-matrix") {
            return Err(format!("index_sets must be \"shared\" or \"per-matrix\", not {:?}", p.index_sets));
        }
        let router = router_init(&p.router_init, p.router_std)?;
        Ok(DropUpcycle { p, router, rng: Rng::new(ctx.seed), seed: ctx.seed })
    }
}

impl InitScheme for DropUpcycle {
    fn plan(&mut self, sources: &[SourceModel]) -> Result<InitPlan, String> {
        let [src] = sources else {
            return Err(format!("Drop-Upcycling takes exactly one dense source, got {}", sources.len()));
        };
        let every = self.p.every;
        let (mut ops, moe_layers) = sparse_upcycle(src, self.p.experts, self.p.top_k, |l| (l + 1).is_multiple_of(every), self.router, self.seed)?;
        let d_ff = src.shape.intermediate;
        let dropped = (self.p.ratio * d_ff as f64).floor() as u32;
        if dropped == 0 {
            return Ok(InitPlan { target: TargetModel { shape: src.shape, moe_layers }, ops });
        }
        for layer in moe_layers.iter().map(|m| m.layer) {
            for e in 0..self.p.experts {
                // Each (layer, expert) has its own stream, so a plan does not depend on
                // the order layers are visited in.
                let mut rng = self.rng.fork(((layer as u64) << 32) | e as u64);
                let shared = rng.sample_indices(d_ff, dropped);
                for (m, proj) in PROJECTIONS.iter().enumerate() {
                    let indices = if self.p.index_sets == "shared" { shared.clone() } else { rng.fork(m as u64 + 1).sample_indices(d_ff, dropped) };
                    ops.push(InitOp::Reinit(ReinitOp {
                        tensor: expert_ffn(layer, e, proj),
                        axis: neuron_axis(proj),
                        indices,
                        distribution: Distribution::Matching(TensorRef::source(src.index, dense_ffn(layer, proj))),
                        seed: rng.next_u64(),
                    }));
                }
            }
        }
        Ok(InitPlan { target: TargetModel { shape: src.shape, moe_layers }, ops })
    }
}

recast_sdk::export_init_scheme!(DropUpcycle);

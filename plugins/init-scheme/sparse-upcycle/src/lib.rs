//! Sparse upcycling (Komatsuzaki et al. 2023; METHODS.md §3.1): copy every dense tensor;
//! in each upcycled layer every expert is an exact copy of the dense SwiGLU FFN and the
//! router is new. With renormalised top-k the upcycled model reproduces the dense one.

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
        if !matches!(p.router_init.as_str(), "normal" | "uniform_centred" | "zeros") {
            return Err(format!("router_init must be \"normal\", \"uniform_centred\" or \"zeros\", not {:?}", p.router_init));
        }
        if !(p.router_std.is_finite() && p.router_std >= 0.0) {
            return Err(format!("router_std must be finite and >= 0, not {}", p.router_std));
        }
        Ok(SparseUpcycle { p, seed: ctx.seed })
    }
}

const PROJECTIONS: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

impl InitScheme for SparseUpcycle {
    fn plan(&mut self, sources: &[SourceModel]) -> Result<InitPlan, String> {
        let [src] = sources else {
            return Err(format!("sparse upcycling takes exactly one dense source, got {}", sources.len()));
        };
        let upcycled = |layer: u32| (layer + 1) % self.p.every == 0;
        let is_upcycled_mlp = |name: &str| {
            (0..src.shape.layers).any(|l| upcycled(l) && name.starts_with(&format!("model.layers.{l}.mlp.")))
        };
        let mut ops: Vec<InitOp> = src
            .tensors
            .iter()
            .filter(|t| !is_upcycled_mlp(&t.name))
            .map(|t| InitOp::Copy(CopyOp { src: TensorRef::source(0, &t.name), dst: t.name.clone() }))
            .collect();
        let mut moe_layers = Vec::new();
        for layer in (0..src.shape.layers).filter(|&l| upcycled(l)) {
            let prefix = format!("model.layers.{layer}.mlp");
            for proj in PROJECTIONS {
                let name = format!("{prefix}.{proj}.weight");
                if !src.tensors.iter().any(|t| t.name == name) {
                    return Err(format!("source has no `{name}`: not a SwiGLU (Llama/Qwen2-style) model"));
                }
            }
            for e in 0..self.p.experts {
                for proj in PROJECTIONS {
                    let src_name = format!("{prefix}.{proj}.weight");
                    ops.push(InitOp::Copy(CopyOp { src: TensorRef::source(0, src_name), dst: format!("{prefix}.experts.{e}.{proj}.weight") }));
                }
            }
            let method = match self.p.router_init.as_str() {
                "uniform_centred" => RouterInit::UniformCentred(self.p.router_std),
                "zeros" => RouterInit::Zeros,
                _ => RouterInit::Normal(self.p.router_std),
            };
            ops.push(InitOp::InitRouter(RouterInitOp {
                dst: format!("{prefix}.gate.weight"),
                layer,
                experts: self.p.experts,
                hidden: src.shape.hidden,
                method,
                seed: recast_sdk::Rng::new(self.seed).fork(layer as u64).next_u64(),
            }));
            moe_layers.push(MoeLayerShape {
                layer,
                experts: self.p.experts,
                expert_intermediate: src.shape.intermediate,
                top_k: self.p.top_k,
                shared_experts: 0,
                shared_intermediate: 0,
            });
        }
        Ok(InitPlan { target: TargetModel { shape: src.shape, moe_layers }, ops })
    }
}

recast_sdk::export_init_scheme!(SparseUpcycle);

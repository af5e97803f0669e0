//! Fine-grained expert splitting (METHODS.md §3.3, §3.4): each upcycled layer's dense FFN
//! is partitioned into `granularity` disjoint neuron slices (LLaMA-MoE's split; `copies`
//! of them for Megatron's granular upcycling), optionally beside a shared expert that is
//! the whole dense FFN (Innovator's general expert). Routers start as virtual groups
//! (every copy's slices score alike) or, for Innovator's routing warm-up, as group
//! centroids of calibration text (one text per group), and `down_proj`s are scaled so
//! that, when routing picks one copy's whole group with renormalised top-k, the layer
//! computes exactly the dense FFN.

use recast_sdk::Rng;
use recast_sdk::init_scheme::build::{PROJECTIONS, copy, dense_ffn, expert_ffn, gather, init_router, neuron_axis, require_dense_ffn, router_init, scale_all, shared_ffn, shared_gate};
use recast_sdk::init_scheme::*;
use serde::Deserialize;

/// Parameters; see README.md.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    granularity: u32,
    copies: u32,
    top_k: Option<u32>,
    partition: String,
    shared_expert: bool,
    shared_weight: f32,
    router_init: String,
    router_std: f32,
    every: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params { granularity: 8, copies: 1, top_k: None, partition: "random".into(), shared_expert: false, shared_weight: 0.5, router_init: "virtual_group".into(), router_std: 0.02, every: 1 }
    }
}

/// How each layer's router starts: per group (known once the sources say how many
/// groups there are) or by one of the per-expert methods the schemes share.
enum RouterStart {
    /// R random rows, each repeated for the G slices of its group.
    VirtualGroup,
    /// Row of group r = unit-norm mean MoE-input hidden state of calibration text r,
    /// plus N(0, router_std²) noise (Innovator's warm-up start, METHODS.md §3.4 step 4).
    GroupCentroid,
    PerExpert(RouterInit),
}

struct FineGrainedSplit {
    p: Params,
    router: RouterStart,
    rng: Rng,
}

impl Plugin for FineGrainedSplit {
    type Config = Params;

    fn new(p: Params, ctx: &Context) -> Result<Self, String> {
        if p.granularity == 0 || p.copies == 0 || p.every == 0 {
            return Err("granularity, copies and every must be >= 1".into());
        }
        let experts = p.granularity * p.copies;
        let k = p.top_k.unwrap_or(p.granularity);
        if k == 0 || k > experts {
            return Err(format!("top_k must be in 1..={experts}, not {k}"));
        }
        if !matches!(p.partition.as_str(), "random" | "contiguous") {
            return Err(format!("partition must be \"random\" or \"contiguous\", not {:?}", p.partition));
        }
        if !(0.0..1.0).contains(&p.shared_weight) {
            return Err(format!("shared_weight must be in [0, 1), not {}", p.shared_weight));
        }
        if !(p.router_std.is_finite() && p.router_std >= 0.0) {
            return Err(format!("router_std must be finite and >= 0, not {}", p.router_std));
        }
        let router = match p.router_init.as_str() {
            "virtual_group" => RouterStart::VirtualGroup,
            "group_centroid" => RouterStart::GroupCentroid,
            other => RouterStart::PerExpert(router_init(other, p.router_std).map_err(|e| format!("{e}; or \"virtual_group\", \"group_centroid\""))?),
        };
        Ok(FineGrainedSplit { p, router, rng: Rng::new(ctx.seed) })
    }
}

impl InitScheme for FineGrainedSplit {
    fn plan(&mut self, sources: &[SourceModel]) -> Result<InitPlan, String> {
        let p = &self.p;
        // One source: its FFN split `copies` times. Several (Innovator): the first is the
        // base (attention, embeddings, the shared expert), each other one a discipline
        // specialist whose FFN is split into its own group of experts.
        let (src, specialists): (&SourceModel, Vec<&SourceModel>) = match sources {
            [] => return Err("fine-grained splitting needs a dense source".into()),
            [one] => (one, vec![one; p.copies as usize]),
            [base, rest @ ..] => {
                if p.copies != 1 {
                    return Err("with several sources each specialist is one group; leave copies at 1".into());
                }
                for s in rest {
                    if (s.shape.layers, s.shape.hidden, s.shape.intermediate) != (base.shape.layers, base.shape.hidden, base.shape.intermediate) {
                        return Err(format!("specialist source {} does not have the base's layers, hidden and FFN sizes", s.index));
                    }
                }
                (base, rest.iter().collect())
            }
        };
        let (g, d_ff) = (p.granularity, src.shape.intermediate);
        if d_ff % g != 0 {
            return Err(format!("granularity {g} does not divide the FFN width {d_ff}"));
        }
        let width = d_ff / g;
        let experts = g * specialists.len() as u32;
        let upcycled = |l: u32| (l + 1).is_multiple_of(p.every);
        let is_upcycled_mlp = |name: &str| (0..src.shape.layers).any(|l| upcycled(l) && PROJECTIONS.iter().any(|q| name == dense_ffn(l, q)));
        let mut ops: Vec<InitOp> = src.tensors.iter().filter(|t| !is_upcycled_mlp(&t.name)).map(|t| copy(src.index, &t.name, t.name.clone())).collect();
        // With the group picked whole and renormalised, each slice's gate is 1/G: scale
        // by G (times the routed share when a shared expert takes the rest).
        let routed_scale = g as f32 * if p.shared_expert { 1.0 - p.shared_weight } else { 1.0 };
        let mut moe_layers = Vec::new();
        for layer in (0..src.shape.layers).filter(|&l| upcycled(l)) {
            require_dense_ffn(src, layer)?;
            let mut order: Vec<u32> = (0..d_ff).collect();
            if p.partition == "random" {
                self.rng.fork(layer as u64).shuffle(&mut order);
            }
            for (group, specialist) in specialists.iter().enumerate() {
                require_dense_ffn(specialist, layer)?;
                for slice in 0..g {
                    let e = group as u32 * g + slice;
                    let mut indices = order[(slice * width) as usize..((slice + 1) * width) as usize].to_vec();
                    indices.sort_unstable();
                    for proj in PROJECTIONS {
                        ops.push(gather(TensorRef::source(specialist.index, dense_ffn(layer, proj)), expert_ffn(layer, e, proj), neuron_axis(proj), indices.clone()));
                    }
                    ops.push(scale_all(expert_ffn(layer, e, "down_proj"), routed_scale));
                }
            }
            if p.shared_expert {
                for proj in PROJECTIONS {
                    ops.push(copy(src.index, &dense_ffn(layer, proj), shared_ffn(layer, 0, proj)));
                }
                // The gate starts at zero weights: sigmoid(0) = 1/2, so the shared expert's
                // down projection carries 2·a to contribute a·FFN(x).
                ops.push(InitOp::Fill(FillOp { dst: shared_gate(layer), shape: vec![1, src.shape.hidden as u64], distribution: Distribution::Zeros, seed: 0 }));
                ops.push(scale_all(shared_ffn(layer, 0, "down_proj"), 2.0 * p.shared_weight));
            }
            let method = match &self.router {
                RouterStart::VirtualGroup => RouterInit::VirtualGroup(g),
                RouterStart::GroupCentroid => RouterInit::GroupCentroid(GroupCentroidParams { groups: specialists.len() as u32, noise_std: p.router_std }),
                RouterStart::PerExpert(method) => *method,
            };
            ops.push(init_router(layer, experts, src.shape.hidden, method, self.rng.fork(1 << 32 | layer as u64).next_u64()));
            moe_layers.push(MoeLayerShape {
                layer,
                experts,
                expert_intermediate: width,
                top_k: p.top_k.unwrap_or(g),
                shared_experts: p.shared_expert as u32,
                shared_intermediate: if p.shared_expert { d_ff } else { 0 },
            });
        }
        Ok(InitPlan { target: TargetModel { shape: src.shape, moe_layers }, ops })
    }
}

recast_sdk::export_init_scheme!(FineGrainedSplit);

//! Building blocks for plans, shared by the reference schemes: Recast's tensor names, op
//! constructors, router-initialisation parameters, and sparse upcycling itself (the
//! starting point most schemes modify).

use super::{CopyOp, GatherOp, InitOp, MoeLayerShape, RouterInit, RouterInitOp, ScaleOp, SourceModel, TensorRef};

/// The three SwiGLU projections, in Recast's (and Hugging Face's) names.
pub const PROJECTIONS: [&str; 3] = ["gate_proj", "up_proj", "down_proj"];

/// Axis of the intermediate (neuron) dimension in a projection's `[out, in]` weight:
/// rows of `gate_proj`/`up_proj`, columns of `down_proj`.
pub fn neuron_axis(proj: &str) -> u32 {
    if proj == "down_proj" { 1 } else { 0 }
}

/// `model.layers.{layer}.mlp.{proj}.weight`: a dense MLP's projection.
pub fn dense_ffn(layer: u32, proj: &str) -> String {
    format!("model.layers.{layer}.mlp.{proj}.weight")
}

/// `model.layers.{layer}.mlp.experts.{expert}.{proj}.weight`: a routed expert's projection.
pub fn expert_ffn(layer: u32, expert: u32, proj: &str) -> String {
    format!("model.layers.{layer}.mlp.experts.{expert}.{proj}.weight")
}

/// `model.layers.{layer}.mlp.shared_experts.{index}.{proj}.weight`.
pub fn shared_ffn(layer: u32, index: u32, proj: &str) -> String {
    format!("model.layers.{layer}.mlp.shared_experts.{index}.{proj}.weight")
}

/// `model.layers.{layer}.mlp.gate.weight`: the router, `[experts, hidden]`.
pub fn router(layer: u32) -> String {
    format!("model.layers.{layer}.mlp.gate.weight")
}

/// `model.layers.{layer}.mlp.shared_expert_gate.weight`: the shared experts' gate, `[1, hidden]`.
pub fn shared_gate(layer: u32) -> String {
    format!("model.layers.{layer}.mlp.shared_expert_gate.weight")
}

/// Copy a source tensor to a target name.
pub fn copy(source: u32, src: &str, dst: impl Into<String>) -> InitOp {
    InitOp::Copy(CopyOp { src: TensorRef::source(source, src), dst: dst.into() })
}

/// Gather slices `indices` along `axis` of `src` into `dst`.
pub fn gather(src: TensorRef, dst: impl Into<String>, axis: u32, indices: Vec<u32>) -> InitOp {
    InitOp::Gather(GatherOp { src, dst: dst.into(), axis, indices })
}

/// Multiply every slice of a target tensor by `factor`.
pub fn scale_all(tensor: impl Into<String>, factor: f32) -> InitOp {
    InitOp::Scale(ScaleOp { tensor: tensor.into(), axis: 0, indices: vec![], factors: vec![factor] })
}

/// Whether a source has every projection of layer `layer`'s dense MLP.
pub fn require_dense_ffn(src: &SourceModel, layer: u32) -> Result<(), String> {
    for proj in PROJECTIONS {
        let name = dense_ffn(layer, proj);
        if !src.tensors.iter().any(|t| t.name == name) {
            return Err(format!("source {} has no `{name}`: not a dense SwiGLU (Llama/Qwen2-style) layer", src.index));
        }
    }
    Ok(())
}

/// Router initialisation from the `router_init` / `router_std` parameters the schemes
/// share: `"normal"`, `"uniform_centred"` or `"zeros"` (drawn by the host), or
/// `"hidden_centroid"` / `"embed_centroid"` (METHODS.md §3.8, mergekit-moe's `hidden`
/// and `cheap_embed`): row `e` is the unit-norm mean MoE-input hidden state or token
/// embedding of the calibration text given for expert `e` (`recast upcycle
/// --calibration`), which only the host can compute.
pub fn router_init(method: &str, std: f32) -> Result<RouterInit, String> {
    if !(std.is_finite() && std >= 0.0) {
        return Err(format!("router_std must be finite and >= 0, not {std}"));
    }
    match method {
        "normal" => Ok(RouterInit::Normal(std)),
        "uniform_centred" => Ok(RouterInit::UniformCentred(std)),
        "zeros" => Ok(RouterInit::Zeros),
        "hidden_centroid" => Ok(RouterInit::HiddenCentroid),
        "embed_centroid" => Ok(RouterInit::EmbedCentroid),
        other => Err(format!("router_init must be \"normal\", \"uniform_centred\", \"zeros\", \"hidden_centroid\" or \"embed_centroid\", not {other:?}")),
    }
}

/// Initialise layer `layer`'s router.
pub fn init_router(layer: u32, experts: u32, hidden: u32, method: RouterInit, seed: u64) -> InitOp {
    InitOp::InitRouter(RouterInitOp { dst: router(layer), layer, experts, hidden, method, seed })
}

/// Sparse upcycling of source 0 (METHODS.md §3.1): every tensor copied, except that in
/// each layer `upcycled(layer)` accepts the dense MLP becomes `experts` exact copies and
/// a router initialised with `router` (seeded per layer from `seed`). Returns the ops
/// and the MoE layers' shapes; schemes that modify experts append ops.
pub fn sparse_upcycle(src: &SourceModel, experts: u32, top_k: u32, upcycled: impl Fn(u32) -> bool, router: RouterInit, seed: u64) -> Result<(Vec<InitOp>, Vec<MoeLayerShape>), String> {
    let is_upcycled_mlp = |name: &str| (0..src.shape.layers).any(|l| upcycled(l) && PROJECTIONS.iter().any(|p| name == dense_ffn(l, p)));
    let mut ops: Vec<InitOp> = src.tensors.iter().filter(|t| !is_upcycled_mlp(&t.name)).map(|t| copy(src.index, &t.name, t.name.clone())).collect();
    let mut layers = Vec::new();
    for layer in (0..src.shape.layers).filter(|&l| upcycled(l)) {
        require_dense_ffn(src, layer)?;
        for e in 0..experts {
            for proj in PROJECTIONS {
                ops.push(copy(src.index, &dense_ffn(layer, proj), expert_ffn(layer, e, proj)));
            }
        }
        ops.push(init_router(layer, experts, src.shape.hidden, router, crate::Rng::new(seed).fork(layer as u64).next_u64()));
        layers.push(MoeLayerShape { layer, experts, expert_intermediate: src.shape.intermediate, top_k, shared_experts: 0, shared_intermediate: 0 });
    }
    Ok((ops, layers))
}

"""Building init-scheme plans in Python: the Rust SDK's `recast_sdk::init_scheme` and
its `build` helpers, with the same names and the same plans.

An init scheme returns an `init-plan`: the target's shape and a list of ops on named
tensors that the host executes on real weights (wit/init-scheme.wit). This module makes
the WIT records and variants (as componentize-py generates them) with short calls, so a
scheme is a few lines. Import it only from an init-scheme plugin: it uses the
`init_scheme_types` bindings that only that world has.

    from wit_world import exports
    from recast_sdk import INIT_SCHEME, Params, fail, info, one_instance
    from recast_init_scheme import plan, router_init, sparse_upcycle

    @one_instance
    class InitScheme(exports.InitScheme):
        def configure(self, params, context):
            self.p, self.seed = Params.parse(params, experts=8, top_k=2), context.seed
        def plan(self, sources):
            ops, layers = sparse_upcycle(sources[0], self.p.experts, self.p.top_k, lambda l: True, router_init("normal", 0.02), self.seed)
            return plan(sources[0].shape, layers, ops)
"""

import math
from typing import Callable, List, Sequence, Tuple

from wit_world.imports import init_scheme_types as t

from recast_sdk import Rng, f32, fail

# The three SwiGLU projections, in Recast's (and Hugging Face's) names.
PROJECTIONS = ("gate_proj", "up_proj", "down_proj")


# --- Recast's tensor names -------------------------------------------------------------


def neuron_axis(proj: str) -> int:
    """Axis of the intermediate (neuron) dimension in a projection's `[out, in]` weight:
    rows of `gate_proj`/`up_proj`, columns of `down_proj`."""
    return 1 if proj == "down_proj" else 0


def dense_ffn(layer: int, proj: str) -> str:
    """`model.layers.{layer}.mlp.{proj}.weight`: a dense MLP's projection."""
    return f"model.layers.{layer}.mlp.{proj}.weight"


def expert_ffn(layer: int, expert: int, proj: str) -> str:
    """`model.layers.{layer}.mlp.experts.{expert}.{proj}.weight`: a routed expert's projection."""
    return f"model.layers.{layer}.mlp.experts.{expert}.{proj}.weight"


def shared_ffn(layer: int, index: int, proj: str) -> str:
    """`model.layers.{layer}.mlp.shared_experts.{index}.{proj}.weight`."""
    return f"model.layers.{layer}.mlp.shared_experts.{index}.{proj}.weight"


def router(layer: int) -> str:
    """`model.layers.{layer}.mlp.gate.weight`: the router, `[experts, hidden]`."""
    return f"model.layers.{layer}.mlp.gate.weight"


def shared_gate(layer: int) -> str:
    """`model.layers.{layer}.mlp.shared_expert_gate.weight`: the shared experts' gate, `[1, hidden]`."""
    return f"model.layers.{layer}.mlp.shared_expert_gate.weight"


# --- Tensor references ----------------------------------------------------------------


def source_ref(source: int, name: str) -> t.TensorRef:
    """Tensor `name` of source checkpoint `source` (its position among `--source`)."""
    return t.TensorRef(source=source, name=name)


def target_ref(name: str) -> t.TensorRef:
    """A target tensor an earlier op of the plan wrote."""
    return t.TensorRef(source=None, name=name)


# --- Distributions (fill, reinit) -----------------------------------------------------


def zeros() -> t.Distribution:
    """All zeros."""
    return t.Distribution_Zeros()


def constant(value: float) -> t.Distribution:
    """Every element `value`."""
    return t.Distribution_Constant(f32(value))


def normal(std: float, mean: float = 0.0) -> t.Distribution:
    """N(mean, std^2)."""
    return t.Distribution_Normal(t.NormalParams(mean=f32(mean), std=f32(std)))


def uniform_centred(std: float) -> t.Distribution:
    """Centred uniform with standard deviation `std`: (U(0,1) - 0.5) * std * sqrt(12)."""
    return t.Distribution_UniformCentred(f32(std))


def matching(tensor: t.TensorRef) -> t.Distribution:
    """N(mean, std^2) with the mean and std of the whole referenced tensor, computed by
    the host (Drop-Upcycling)."""
    return t.Distribution_Matching(tensor)


# --- Router initialisations -----------------------------------------------------------


def router_init(method: str, std: float = 0.0) -> t.RouterInit:
    """Router initialisation from the `router_init` / `router_std` parameters the schemes
    share: `"normal"`, `"uniform_centred"` or `"zeros"` (drawn by the host), or
    `"hidden_centroid"` / `"embed_centroid"` (computed by the host from calibration
    text). Refuses (as the plugin's error) anything else, or a std that is negative or
    not finite: the Rust SDK's `build::router_init`."""
    std = f32(std)
    if not (math.isfinite(std) and std >= 0.0):
        fail(f"router_std must be finite and >= 0, not {std}")
    if method == "normal":
        return t.RouterInit_Normal(std)
    if method == "uniform_centred":
        return t.RouterInit_UniformCentred(std)
    if method == "zeros":
        return t.RouterInit_Zeros()
    if method == "hidden_centroid":
        return t.RouterInit_HiddenCentroid()
    if method == "embed_centroid":
        return t.RouterInit_EmbedCentroid()
    fail(f'router_init must be "normal", "uniform_centred", "zeros", "hidden_centroid" or "embed_centroid", not "{method}"')


def virtual_group(groups: int) -> t.RouterInit:
    """R = experts / G random rows, each repeated G times (granular upcycling)."""
    return t.RouterInit_VirtualGroup(groups)


def hidden_centroid() -> t.RouterInit:
    """Row e = unit-norm mean MoE-input hidden state of calibration domain e."""
    return t.RouterInit_HiddenCentroid()


def embed_centroid() -> t.RouterInit:
    """Row e = unit-norm mean token embedding of calibration domain e."""
    return t.RouterInit_EmbedCentroid()


def group_centroid(groups: int, noise_std: float) -> t.RouterInit:
    """Rows of group g = centroid of calibration domain g plus N(0, noise_std^2) noise."""
    return t.RouterInit_GroupCentroid(t.GroupCentroidParams(groups=groups, noise_std=f32(noise_std)))


# --- Ops ------------------------------------------------------------------------------


def copy(src: t.TensorRef, dst: str) -> t.InitOp:
    """Whole-tensor copy: `dst = src`."""
    return t.InitOp_Copy(t.CopyOp(src=src, dst=dst))


def gather(src: t.TensorRef, dst: str, axis: int, indices: Sequence[int]) -> t.InitOp:
    """`dst = index_select(src, axis, indices)`: a row or column range into an expert, an
    FFN split, a dimension widened by repeating units."""
    return t.InitOp_Gather(t.GatherOp(src=src, dst=dst, axis=axis, indices=list(indices)))


def fill(dst: str, shape: Sequence[int], distribution: t.Distribution, seed: int) -> t.InitOp:
    """A fresh tensor of `shape` drawn from `distribution`."""
    return t.InitOp_Fill(t.FillOp(dst=dst, shape=list(shape), distribution=distribution, seed=seed))


def scale(tensor: str, factors: Sequence[float], axis: int = 0, indices: Sequence[int] = ()) -> t.InitOp:
    """Multiply slice `indices[i]` along `axis` of a target tensor by `factors[i]` (or all
    of them by `factors[0]` when one factor is given); no `indices` means every slice."""
    return t.InitOp_Scale(t.ScaleOp(tensor=tensor, axis=axis, indices=list(indices), factors=[f32(x) for x in factors]))


def scale_all(tensor: str, factor: float) -> t.InitOp:
    """Multiply every element of a target tensor by `factor`."""
    return scale(tensor, [factor])


def reinit(tensor: str, axis: int, indices: Sequence[int], distribution: t.Distribution, seed: int) -> t.InitOp:
    """Overwrite slices `indices` along `axis` with fresh draws (Drop-Upcycling)."""
    return t.InitOp_Reinit(t.ReinitOp(tensor=tensor, axis=axis, indices=list(indices), distribution=distribution, seed=seed))


def permute(tensor: str, axis: int, order: Sequence[int]) -> t.InitOp:
    """Reorder slices along `axis`: new slice i = old slice `order[i]`."""
    return t.InitOp_Permute(t.PermuteOp(tensor=tensor, axis=axis, order=list(order)))


def noise(tensor: str, std: float, seed: int, relative: bool = False) -> t.InitOp:
    """Add N(0, std^2) noise; with `relative`, std is a multiple of the tensor's own std."""
    return t.InitOp_Noise(t.NoiseOp(tensor=tensor, std=f32(std), relative=relative, seed=seed))


def init_router(layer: int, experts: int, hidden: int, method: t.RouterInit, seed: int) -> t.InitOp:
    """Create layer `layer`'s router weight `[experts, hidden]`."""
    return t.InitOp_InitRouter(t.RouterInitOp(dst=router(layer), layer=layer, experts=experts, hidden=hidden, method=method, seed=seed))


# --- The target and the plan ----------------------------------------------------------


def moe_layer(layer: int, experts: int, expert_intermediate: int, top_k: int, shared_experts: int = 0, shared_intermediate: int = 0) -> t.MoeLayerShape:
    """The MoE structure of one target layer."""
    return t.MoeLayerShape(layer=layer, experts=experts, expert_intermediate=expert_intermediate, top_k=top_k, shared_experts=shared_experts, shared_intermediate=shared_intermediate)


def plan(shape: t.ModelShape, moe_layers: List[t.MoeLayerShape], ops: List[t.InitOp]) -> t.InitPlan:
    """What `plan` returns: the target (the dense `shape` with `moe_layers`) and its ops."""
    return t.InitPlan(target=t.TargetModel(shape=shape, moe_layers=moe_layers), ops=ops)


# --- Sparse upcycling, the starting point most schemes modify -------------------------


def require_dense_ffn(src: t.SourceModel, layer: int):
    """Refuse a source whose layer `layer` lacks a projection of a dense SwiGLU MLP."""
    names = {x.name for x in src.tensors}
    for proj in PROJECTIONS:
        name = dense_ffn(layer, proj)
        if name not in names:
            fail(f"source {src.index} has no `{name}`: not a dense SwiGLU (Llama/Qwen2-style) layer")


def layer_seed(seed: int, layer: int) -> int:
    """The seed of layer `layer`'s router: `Rng(seed).fork(layer).next_u64()`, as the
    Rust SDK's `sparse_upcycle` derives it."""
    return Rng(seed).fork(layer).next_u64()


def sparse_upcycle(
    src: t.SourceModel, experts: int, top_k: int, upcycled: Callable[[int], bool], router_method: t.RouterInit, seed: int
) -> Tuple[List[t.InitOp], List[t.MoeLayerShape]]:
    """Sparse upcycling of `src` (METHODS.md §3.1): every tensor copied, except that in
    each layer `upcycled(layer)` accepts the dense MLP becomes `experts` exact copies and
    a router initialised with `router_method` (seeded per layer from `seed`). Returns the
    ops and the MoE layers' shapes; schemes that modify experts append ops. The same ops,
    in the same order, as the Rust SDK's `build::sparse_upcycle`."""
    chosen = [layer for layer in range(src.shape.layers) if upcycled(layer)]
    replaced = {dense_ffn(layer, p) for layer in chosen for p in PROJECTIONS}
    ops = [copy(source_ref(src.index, x.name), x.name) for x in src.tensors if x.name not in replaced]
    layers = []
    for layer in chosen:
        require_dense_ffn(src, layer)
        for e in range(experts):
            for proj in PROJECTIONS:
                ops.append(copy(source_ref(src.index, dense_ffn(layer, proj)), expert_ffn(layer, e, proj)))
        ops.append(init_router(layer, experts, src.shape.hidden, router_method, layer_seed(seed, layer)))
        layers.append(moe_layer(layer, experts, src.shape.intermediate, top_k))
    return ops, layers


// Building init-scheme plans in JavaScript: the Rust SDK's `recast_sdk::init_scheme` and
// its `build` helpers, with the same plans (names in camelCase).
//
// An init scheme returns an `init-plan`: the target's shape and a list of ops on named
// tensors that the host executes on real weights (wit/init-scheme.wit). componentize-js
// takes WIT records as plain objects with camelCase fields, variants as
// `{ tag: "kebab-name", val }`, `option` none as `undefined` and `u64` as a BigInt; the
// functions here build those objects, so a scheme is a few lines. Seeds may be given as
// BigInts or safe integers.
//
//   import { info, parseParams } from "./recast-sdk.js";
//   import { plan, routerInit, sparseUpcycle } from "./recast-init-scheme.js";
//   let p, seed;
//   export const initScheme = {
//     configure(params, context) { p = parseParams(params, { experts: 8, top_k: 2 }); seed = context.seed; },
//     plan(sources) {
//       const { ops, moeLayers } = sparseUpcycle(sources[0], p.experts, p.top_k, () => true, routerInit("normal", 0.02), seed);
//       return plan(sources[0].shape, moeLayers, ops);
//     },
//     ...
//   };

import { Rng, f32, fail } from "./recast-sdk.js";

/** The three SwiGLU projections, in Recast's (and Hugging Face's) names. */
export const PROJECTIONS = ["gate_proj", "up_proj", "down_proj"];

// --- Recast's tensor names -------------------------------------------------------------

/** Axis of the intermediate (neuron) dimension in a projection's `[out, in]` weight:
 *  rows of `gate_proj`/`up_proj`, columns of `down_proj`. */
export function neuronAxis(proj) {
  return proj === "down_proj" ? 1 : 0;
}

/** `model.layers.{layer}.mlp.{proj}.weight`: a dense MLP's projection. */
export function denseFfn(layer, proj) {
  return `model.layers.${layer}.mlp.${proj}.weight`;
}

/** `model.layers.{layer}.mlp.experts.{expert}.{proj}.weight`: a routed expert's projection. */
export function expertFfn(layer, expert, proj) {
  return `model.layers.${layer}.mlp.experts.${expert}.${proj}.weight`;
}

/** `model.layers.{layer}.mlp.shared_experts.{index}.{proj}.weight`. */
export function sharedFfn(layer, index, proj) {
  return `model.layers.${layer}.mlp.shared_experts.${index}.${proj}.weight`;
}

/** `model.layers.{layer}.mlp.gate.weight`: the router, `[experts, hidden]`. */
export function router(layer) {
  return `model.layers.${layer}.mlp.gate.weight`;
}

/** `model.layers.{layer}.mlp.shared_expert_gate.weight`: the shared experts' gate, `[1, hidden]`. */
export function sharedGate(layer) {
  return `model.layers.${layer}.mlp.shared_expert_gate.weight`;
}

// --- Tensor references ----------------------------------------------------------------

/** Tensor `name` of source checkpoint `source` (its position among `--source`). */
export function sourceRef(source, name) {
  return { source, name };
}

/** A target tensor an earlier op of the plan wrote. */
export function targetRef(name) {
  return { source: undefined, name };
}

// --- Distributions (fill, reinit) -----------------------------------------------------

/** All zeros. */
export function zeros() {
  return { tag: "zeros" };
}

/** Every element `value`. */
export function constant(value) {
  return { tag: "constant", val: f32(value) };
}

/** N(mean, std^2). */
export function normal(std, mean = 0) {
  return { tag: "normal", val: { mean: f32(mean), std: f32(std) } };
}

/** Centred uniform with standard deviation `std`: (U(0,1) - 0.5) * std * sqrt(12). */
export function uniformCentred(std) {
  return { tag: "uniform-centred", val: f32(std) };
}

/** N(mean, std^2) with the mean and std of the whole referenced tensor, computed by the
 *  host (Drop-Upcycling). */
export function matching(tensor) {
  return { tag: "matching", val: tensor };
}

// --- Router initialisations -----------------------------------------------------------

/** Router initialisation from the `router_init` / `router_std` parameters the schemes
 *  share: "normal", "uniform_centred" or "zeros" (drawn by the host), or
 *  "hidden_centroid" / "embed_centroid" (computed by the host from calibration text).
 *  Refuses (as the plugin's error) anything else, or a std that is negative or not
 *  finite: the Rust SDK's `build::router_init`. */
export function routerInit(method, std = 0) {
  const s = f32(std);
  if (!(Number.isFinite(s) && s >= 0)) fail(`router_std must be finite and >= 0, not ${s}`);
  if (method === "normal") return { tag: "normal", val: s };
  if (method === "uniform_centred") return { tag: "uniform-centred", val: s };
  if (method === "zeros") return { tag: "zeros" };
  if (method === "hidden_centroid") return { tag: "hidden-centroid" };
  if (method === "embed_centroid") return { tag: "embed-centroid" };
  fail(`router_init must be "normal", "uniform_centred", "zeros", "hidden_centroid" or "embed_centroid", not ${JSON.stringify(method)}`);
}

/** R = experts / G random rows, each repeated G times (granular upcycling). */
export function virtualGroup(groups) {
  return { tag: "virtual-group", val: groups };
}

/** Row e = unit-norm mean MoE-input hidden state of calibration domain e. */
export function hiddenCentroid() {
  return { tag: "hidden-centroid" };
}

/** Row e = unit-norm mean token embedding of calibration domain e. */
export function embedCentroid() {
  return { tag: "embed-centroid" };
}

/** Rows of group g = centroid of calibration domain g plus N(0, noiseStd^2) noise. */
export function groupCentroid(groups, noiseStd) {
  return { tag: "group-centroid", val: { groups, noiseStd: f32(noiseStd) } };
}

// --- Ops ------------------------------------------------------------------------------

/** Whole-tensor copy: `dst = src`. */
export function copy(src, dst) {
  return { tag: "copy", val: { src, dst } };
}

/** `dst = index_select(src, axis, indices)`: a row or column range into an expert, an FFN
 *  split, a dimension widened by repeating units. */
export function gather(src, dst, axis, indices) {
  return { tag: "gather", val: { src, dst, axis, indices: Array.from(indices) } };
}

/** A fresh tensor of `shape` drawn from `distribution`. */
export function fill(dst, shape, distribution, seed) {
  return { tag: "fill", val: { dst, shape: Array.from(shape, BigInt), distribution, seed: BigInt(seed) } };
}

/** Multiply slice `indices[i]` along `axis` of a target tensor by `factors[i]` (or all of
 *  them by `factors[0]` when one factor is given); no `indices` means every slice. */
export function scale(tensor, factors, axis = 0, indices = []) {
  return { tag: "scale", val: { tensor, axis, indices: Array.from(indices), factors: Array.from(factors, f32) } };
}

/** Multiply every element of a target tensor by `factor`. */
export function scaleAll(tensor, factor) {
  return scale(tensor, [factor]);
}

/** Overwrite slices `indices` along `axis` with fresh draws (Drop-Upcycling). */
export function reinit(tensor, axis, indices, distribution, seed) {
  return { tag: "reinit", val: { tensor, axis, indices: Array.from(indices), distribution, seed: BigInt(seed) } };
}

/** Reorder slices along `axis`: new slice i = old slice `order[i]`. */
export function permute(tensor, axis, order) {
  return { tag: "permute", val: { tensor, axis, order: Array.from(order) } };
}

/** Add N(0, std^2) noise; with `relative`, std is a multiple of the tensor's own std. */
export function noise(tensor, std, seed, relative = false) {
  return { tag: "noise", val: { tensor, std: f32(std), relative, seed: BigInt(seed) } };
}

/** Create layer `layer`'s router weight `[experts, hidden]`. */
export function initRouter(layer, experts, hidden, method, seed) {
  return { tag: "init-router", val: { dst: router(layer), layer, experts, hidden, method, seed: BigInt(seed) } };
}

// --- The target and the plan ----------------------------------------------------------

/** The MoE structure of one target layer. */
export function moeLayer(layer, experts, expertIntermediate, topK, sharedExperts = 0, sharedIntermediate = 0) {
  return { layer, experts, expertIntermediate, topK, sharedExperts, sharedIntermediate };
}

/** What `plan` returns: the target (the dense `shape` with `moeLayers`) and its ops. */
export function plan(shape, moeLayers, ops) {
  return { target: { shape, moeLayers }, ops };
}

// --- Sparse upcycling, the starting point most schemes modify -------------------------

/** Refuse a source whose layer `layer` lacks a projection of a dense SwiGLU MLP. */
export function requireDenseFfn(src, layer) {
  const names = new Set(Array.from(src.tensors, (t) => t.name));
  for (const proj of PROJECTIONS) {
    const name = denseFfn(layer, proj);
    if (!names.has(name)) fail(`source ${src.index} has no \`${name}\`: not a dense SwiGLU (Llama/Qwen2-style) layer`);
  }
}

/** The seed of layer `layer`'s router: `new Rng(seed).fork(layer).nextU64()`, as the Rust
 *  SDK's `sparse_upcycle` derives it. */
export function layerSeed(seed, layer) {
  return new Rng(seed).fork(layer).nextU64();
}

/**
 * Sparse upcycling of `src` (METHODS.md §3.1): every tensor copied, except that in each
 * layer `upcycled(layer)` accepts the dense MLP becomes `experts` exact copies and a
 * router initialised with `routerMethod` (seeded per layer from `seed`). Returns
 * `{ ops, moeLayers }`; schemes that modify experts append ops. The same ops, in the same
 * order, as the Rust SDK's `build::sparse_upcycle`.
 */
export function sparseUpcycle(src, experts, topK, upcycled, routerMethod, seed) {
  const chosen = Array.from({ length: src.shape.layers }, (_, l) => l).filter((l) => upcycled(l));
  const replaced = new Set(chosen.flatMap((l) => PROJECTIONS.map((p) => denseFfn(l, p))));
  const ops = Array.from(src.tensors).filter((t) => !replaced.has(t.name)).map((t) => copy(sourceRef(src.index, t.name), t.name));
  const moeLayers = [];
  for (const layer of chosen) {
    requireDenseFfn(src, layer);
    for (let e = 0; e < experts; e++) {
      for (const proj of PROJECTIONS) ops.push(copy(sourceRef(src.index, denseFfn(layer, proj)), expertFfn(layer, e, proj)));
    }
    ops.push(initRouter(layer, experts, src.shape.hidden, routerMethod, layerSeed(seed, layer)));
    moeLayers.push(moeLayer(layer, experts, src.shape.intermediate, topK));
  }
  return { ops, moeLayers };
}

//! The experts computation: every routed expert's FFN over the rows the dispatcher
//! grouped for it (Megatron-Core's `experts.py`). Which implementation runs is chosen
//! once, with the layer's [`super::backend::MoeBackend`], from the device, the dtype and
//! the process's matmul path:
//!
//! - [`CpuGrouped`]: f32 on the CPU with a BLAS, the grouped linear ops of
//!   [`crate::cpu::grouped_experts`];
//! - [`CpuFusedBf16`]: mixed precision on the CPU with a BLAS, the chunked op of
//!   [`crate::cpu::fused_experts`];
//! - [`OneByOne`]: each expert's FFN on its block of rows through candle's ops (and the
//!   model's matmul path); the fallback, and what CUDA tensors use for the experts;
//! - the CUDA backend (`crate::cuda`), which also fuses routing, permutation and
//!   combine into its own kernels where the routing fits them
//!   ([`ExpertCompute::route_and_run`]).

use std::fmt;
use std::sync::Arc;

use candle_core::{Result, Tensor};

use super::spec::RouterSpec;
use crate::cpu::fused_experts::fused_experts;
use crate::cpu::grouped_experts::grouped_experts;
use crate::cpu::matmul::BlasLibrary;
use crate::cpu::op_io::is_f32_cpu;
use crate::cpu::released_weights::WeightParts;
use crate::model::ffn::Ffn;

/// How a layer's routed experts compute; one per layer's backend, shared by its calls.
pub trait ExpertCompute: Send + Sync + fmt::Debug {
    /// A short name for logs and benchmarks.
    fn name(&self) -> &'static str;

    /// `FFN_e(rows_e)` for every expert's block of `rows` (`counts[e]` rows each, in
    /// order; at least one row in all), as `[N, d]` in the same order.
    fn forward(&self, rows: &Tensor, counts: &[usize], experts: &[Ffn]) -> Result<Tensor>;

    /// Routing, dispatch, experts and combine in one go, for a backend whose kernels
    /// fuse them: `None` where this backend has no such path or the layer's routing
    /// does not fit it (the layer then routes on the host, dispatches and calls
    /// [`Self::forward`]). `z` are the raw router logits `[T, E]`.
    fn route_and_run(&self, layer: &RoutedLayer<'_>, x: &Tensor, z: &Tensor) -> Result<Option<FusedRouted>> {
        let _ = (layer, x, z);
        Ok(None)
    }
}

/// What a fused routing path needs of a layer: its routing and its routed experts
/// (not the layer itself, so backends do not depend on the layer's wiring).
#[derive(Clone, Copy)]
pub struct RoutedLayer<'a> {
    /// Index of the transformer layer, for errors.
    pub layer: usize,
    /// The routing the layer executes.
    pub spec: &'a RouterSpec,
    /// The routed experts.
    pub experts: &'a [Ffn],
    /// The per-expert selection bias, applied when the spec's `selection-bias` is not
    /// `none`.
    pub selection_bias: &'a [f32],
}

/// What a fused routing path produced for one layer's routed experts.
pub struct FusedRouted {
    /// `Σ_j g · FFN_j(x)`, `[T, d]`.
    pub output: Tensor,
    /// Probability rows `p`, `[T, E]` (differentiable: the load-balance loss uses them).
    pub probs: Tensor,
    /// Assignments per expert.
    pub load: Vec<u32>,
    /// Experts per token.
    pub k: usize,
}

/// Each expert's FFN on its block of rows, one after another, through candle's ops:
/// runs on any device and dtype.
#[derive(Clone, Copy, Debug, Default)]
pub struct OneByOne;

impl ExpertCompute for OneByOne {
    fn name(&self) -> &'static str {
        "one-by-one"
    }

    fn forward(&self, rows: &Tensor, counts: &[usize], experts: &[Ffn]) -> Result<Tensor> {
        one_by_one(rows, counts, experts)
    }
}

/// [`OneByOne`]'s computation, for backends that fall back to it.
pub fn one_by_one(rows: &Tensor, counts: &[usize], experts: &[Ffn]) -> Result<Tensor> {
    let mut outputs = Vec::with_capacity(experts.len());
    let mut start = 0;
    for (expert, &n) in experts.iter().zip(counts) {
        if n > 0 {
            outputs.push(expert.forward(&rows.narrow(0, start, n)?)?);
        }
        start += n;
    }
    Tensor::cat(&outputs, 0)
}

/// All experts at once in f32 on the CPU's BLAS: grouped linear ops over the grouped
/// rows. Experts of different widths, or tensors that are not f32 on the CPU, run
/// [`OneByOne`].
#[derive(Clone, Debug)]
pub struct CpuGrouped {
    /// The BLAS the grouped ops multiply with.
    pub library: Arc<BlasLibrary>,
}

impl ExpertCompute for CpuGrouped {
    fn name(&self) -> &'static str {
        "cpu-grouped-f32"
    }

    fn forward(&self, rows: &Tensor, counts: &[usize], experts: &[Ffn]) -> Result<Tensor> {
        match concatenated_weights(rows, counts, experts)? {
            Some((gate_up, down)) => grouped_experts(self.library.clone(), rows, counts, gate_up, down),
            None => one_by_one(rows, counts, experts),
        }
    }
}

/// All experts at once in mixed precision on the CPU's BLAS (bf16 products, f32
/// accumulation, activations kept in bf16), chunk by chunk in one op. Experts of
/// different widths, or tensors that are not f32 on the CPU, run [`OneByOne`].
#[derive(Clone, Debug)]
pub struct CpuFusedBf16 {
    /// The BLAS the op multiplies with (it has a bf16 GEMM).
    pub library: Arc<BlasLibrary>,
}

impl ExpertCompute for CpuFusedBf16 {
    fn name(&self) -> &'static str {
        "cpu-fused-bf16"
    }

    fn forward(&self, rows: &Tensor, counts: &[usize], experts: &[Ffn]) -> Result<Tensor> {
        match concatenated_weights(rows, counts, experts)? {
            Some((gate_up, down)) => fused_experts(self.library.clone(), rows, counts, gate_up, down),
            None => one_by_one(rows, counts, experts),
        }
    }
}

/// The parts of the experts' `[gate | up]` weights (`[E·2f, d]`) and down weights
/// (`[E·d, f]`), each expert's one above the other, when the CPU ops can take them:
/// experts of one width, every tensor f32 on the CPU, one count per expert covering the
/// rows; `None` otherwise.
fn concatenated_weights(rows: &Tensor, counts: &[usize], experts: &[Ffn]) -> Result<Option<(WeightParts, WeightParts)>> {
    let Some(first) = experts.first() else { return Ok(None) };
    let width = first.width();
    let uniform = experts.iter().all(|e| e.width() == width && is_f32_cpu(&e.gate) && is_f32_cpu(&e.up) && is_f32_cpu(&e.down));
    if !uniform || !is_f32_cpu(rows) || counts.len() != experts.len() || counts.iter().sum::<usize>() != rows.dim(0)? {
        return Ok(None);
    }
    // Concatenated rather than stacked: candle accumulates a gradient into a fresh zero
    // tensor at every level of the graph, and `stack` adds a reshape level per weight.
    let gate_up = WeightParts::new(experts.iter().flat_map(|e| [e.gate.clone(), e.up.clone()]).collect());
    let down = WeightParts::new(experts.iter().map(|e| e.down.clone()).collect());
    Ok(Some((gate_up, down)))
}

#[cfg(test)]
mod tests {
    use candle_core::{Tensor, Var};

    use super::{CpuFusedBf16, CpuGrouped, ExpertCompute, concatenated_weights};
    use crate::cpu::matmul::{ActiveMatmul, Precision, library};
    use crate::model::ffn::Ffn;
    use crate::model::init::SplitMix64;
    use crate::model::test_tensors::{randn_var, relative_gap};

    /// Grouped experts against each expert run alone (candle's matmul), forward and every
    /// gradient, with an expert that gets no rows; few experts (each product split over
    /// the threads) and many (experts in parallel); experts of several chunks of rows
    /// (the mixed-precision op cuts them at 256).
    #[test]
    fn grouped_experts_match_the_experts_one_by_one() {
        check_against_one_by_one(&[7, 0, 65, 3]);
        check_against_one_by_one(&[7, 0, 65, 3, 9, 1, 12, 4, 30, 2, 5, 8, 11, 6, 3, 1]);
        check_against_one_by_one(&[300, 0, 777, 1]);
    }

    fn check_against_one_by_one(counts: &[usize]) {
        let lib = match library().expect("RECAST_BLAS loads") {
            Some(lib) => lib,
            None => {
                assert!(std::env::var("RECAST_REQUIRE_BLAS").as_deref() != Ok("1"), "RECAST_REQUIRE_BLAS=1 but no BLAS library loads");
                eprintln!("no BLAS library: skipped");
                return;
            }
        };
        let (d, f) = (24, 40);
        let rows: usize = counts.iter().sum();
        let mut rng = SplitMix64(17);
        let weights: Vec<[Var; 3]> = counts.iter().map(|_| [randn_var(&mut rng, &[f, d], 0.3), randn_var(&mut rng, &[f, d], 0.3), randn_var(&mut rng, &[d, f], 0.3)]).collect();
        let experts: Vec<Ffn> = weights.iter().map(|[g, u, w]| Ffn { gate: g.as_tensor().clone(), up: u.as_tensor().clone(), down: w.as_tensor().clone() }).collect();
        let x = randn_var(&mut rng, &[rows, d], 1.0);
        let r = randn_var(&mut rng, &[rows, d], 1.0);
        let run = |out: Tensor| {
            let grads = (out.clone() * r.as_tensor()).expect("mul").sum_all().expect("sum").backward().expect("backward");
            let mut all = vec![out, grads.get(&x).expect("dx").clone()];
            for (e, w) in weights.iter().enumerate() {
                for v in w {
                    all.push(grads.get(v).cloned().unwrap_or_else(|| v.as_tensor().zeros_like().expect("zeros")).detach());
                    assert!(counts[e] == 0 || grads.get(v).is_some());
                }
            }
            all
        };
        let mut start = 0;
        let mut pieces = Vec::new();
        for (expert, &n) in experts.iter().zip(counts) {
            if n > 0 {
                let rows = x.as_tensor().narrow(0, start, n).expect("narrow");
                pieces.push(
                    crate::cpu::matmul::linear_on(
                        &ActiveMatmul { precision: Precision::F32, blas: None },
                        &(rows.matmul(&expert.gate.t().expect("t")).expect("g").silu().expect("silu") * rows.matmul(&expert.up.t().expect("t")).expect("u")).expect("mul"),
                        &expert.down,
                    )
                    .expect("down"),
                );
            }
            start += n;
        }
        let reference = run(Tensor::cat(&pieces, 0).expect("cat"));
        assert!(concatenated_weights(x.as_tensor(), counts, &experts).expect("weights").is_some(), "the BLAS path applies");
        let backends: [(Box<dyn ExpertCompute>, f64); 2] = [(Box::new(CpuGrouped { library: lib.clone() }), 1e-5), (Box::new(CpuFusedBf16 { library: lib.clone() }), 3e-2)];
        for (backend, tolerance) in backends {
            let precision = backend.name();
            let grouped = run(backend.forward(x.as_tensor(), counts, &experts).expect("grouped"));
            for (i, (a, b)) in grouped.iter().zip(&reference).enumerate() {
                let g = relative_gap(a, b);
                assert!(g < tolerance, "{} experts, {precision}: output {i} (0 = forward, 1 = dx, then gate/up/down per expert) is {g} from the reference", counts.len());
            }
        }
    }
}

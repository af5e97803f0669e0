//! A layer's routed experts on CUDA: fused router → placement → permute → each expert on
//! its contiguous block of rows (cuBLAS through candle's matmul, one GEMM per expert and
//! projection) → weighted combine. Integers stay on the device except the `E` counts
//! that size the expert GEMMs.

use candle_core::{DType, Result, Tensor};

use super::kernels::cuda_device;
use super::router::{self, RouterArgs};
use super::{combine, permute};
use crate::moe::layer::MoeLayer;
use crate::moe::spec::{RoutingMode, SelectionBias};

/// What the CUDA path produced for one layer's routed experts.
pub struct CudaRouted {
    /// `Σ_j g · FFN_j(x)`, `[T, d]`.
    pub output: Tensor,
    /// Probability rows `p`, `[T, E]` (differentiable: the load-balance loss uses them).
    pub probs: Tensor,
    /// Assignments per expert.
    pub load: Vec<u32>,
    /// Experts per token.
    pub k: usize,
}

/// Whether `layer`'s spec runs on the CUDA kernels: dropless token choice with top-k.
/// Expert choice, capacity limits and per-token plugin routing take the general path,
/// which also runs on CUDA tensors (through candle's ops, with host-side selection).
pub fn applies(layer: &MoeLayer, x: &Tensor, z: &Tensor, per_token_route: bool) -> bool {
    x.device().is_cuda() && z.dtype() == DType::F32 && layer.spec.mode == RoutingMode::TokenChoice && layer.spec.capacity.is_none() && !per_token_route
}

/// Route `x` (`[T, d]`) by the raw router logits `z` (`[T, E]`, f32) and run the routed
/// experts; `None` where the kernels' limits do not fit this layer.
pub fn routed_experts(layer: &MoeLayer, x: &Tensor, z: &Tensor) -> Result<Option<CudaRouted>> {
    let (tokens, experts) = z.dims2()?;
    let Some(args) = RouterArgs::new(&layer.spec, tokens, experts) else { return Ok(None) };
    if layer.experts.len() != experts {
        candle_core::bail!("layer {}: router has {experts} experts, the layer {}", layer.layer, layer.experts.len());
    }
    let k = args.k();
    let bias = if layer.spec.selection_bias != SelectionBias::None { layer.selection_bias.clone() } else { vec![0.0; experts] };
    let (packed, routed) = router::route(&z.contiguous()?, args, &bias)?;
    let probs = packed.narrow(1, 0, experts)?;
    let gates = packed.narrow(1, experts, k)?;
    let placement = permute::place(&cuda_device(x, "moe layer")?, &routed, tokens, k, experts)?;
    let rows = permute::permute(&x.contiguous()?, &placement)?;
    let mut outputs = Vec::with_capacity(experts);
    let mut start = 0;
    for (expert, &n) in layer.experts.iter().zip(&placement.counts) {
        if n > 0 {
            outputs.push(expert.forward(&rows.narrow(0, start, n)?)?);
        }
        start += n;
    }
    let expert_rows = if outputs.is_empty() { rows.zeros_like()? } else { Tensor::cat(&outputs, 0)? };
    let output = combine::combine(&expert_rows, &gates, &placement)?;
    let load = placement.counts.iter().map(|&c| c as u32).collect();
    Ok(Some(CudaRouted { output, probs, load, k }))
}

//! A layer's routed experts on CUDA: fused router → placement → permute → each expert on
//! its contiguous block of rows (cuBLAS through candle's matmul, one GEMM per expert and
//! projection) → weighted combine. Integers stay on the device except the `E` counts
//! that size the expert GEMMs.

use candle_core::{DType, Result, Tensor};

use super::kernels::cuda_device;
use super::router::{self, RouterArgs};
use super::{combine, permute};
use crate::moe::experts::{FusedRouted, RoutedLayer};
use crate::moe::spec::{RouterSpec, RoutingMode, SelectionBias};

/// Whether `spec` runs on the CUDA kernels: dropless token choice with top-k. Expert
/// choice and capacity limits take the general path, which also runs on CUDA tensors
/// (through candle's ops, with host-side selection); so does per-token plugin routing,
/// which the MoE layer never sends here.
pub fn applies(spec: &RouterSpec, x: &Tensor, z: &Tensor) -> bool {
    x.device().is_cuda() && z.dtype() == DType::F32 && spec.mode == RoutingMode::TokenChoice && spec.capacity.is_none()
}

/// Route `x` (`[T, d]`) by the raw router logits `z` (`[T, E]`, f32) and run the routed
/// experts; `None` where the kernels' limits do not fit this layer.
pub fn routed_experts(layer: &RoutedLayer<'_>, x: &Tensor, z: &Tensor) -> Result<Option<FusedRouted>> {
    let (tokens, experts) = z.dims2()?;
    let Some(args) = RouterArgs::new(layer.spec, tokens, experts) else { return Ok(None) };
    if layer.experts.len() != experts {
        candle_core::bail!("layer {}: router has {experts} experts, the layer {}", layer.layer, layer.experts.len());
    }
    let k = args.k();
    let bias = if layer.spec.selection_bias != SelectionBias::None { layer.selection_bias.to_vec() } else { vec![0.0; experts] };
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
    Ok(Some(FusedRouted { output, probs, load, k }))
}

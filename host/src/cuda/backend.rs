//! The CUDA build's entry points: opening a device, and the experts backend the MoE
//! layer's registry picks for CUDA tensors.

use std::sync::Arc;

use candle_core::{Device, Result, Tensor};

use super::layer;
use crate::model::ffn::Ffn;
use crate::moe::experts::{ExpertCompute, FusedRouted, RoutedLayer, one_by_one};

/// This build has CUDA.
pub const BUILT: bool = true;

/// The CUDA device with this ordinal (initialises the driver); `None` only in a build
/// without CUDA.
pub fn open_device(ordinal: usize) -> Option<Result<Device>> {
    Some(Device::new_cuda(ordinal))
}

/// The experts backend for CUDA tensors; `None` only in a build without CUDA.
pub fn experts_backend() -> Option<Arc<dyn ExpertCompute>> {
    Some(Arc::new(CudaExperts))
}

/// Routed experts on CUDA: the fused router, permute and combine kernels where the
/// layer's routing fits them ([`layer::applies`]); otherwise, after host-side routing,
/// each expert on its rows through candle's CUDA ops (cuBLAS).
#[derive(Clone, Copy, Debug, Default)]
pub struct CudaExperts;

impl ExpertCompute for CudaExperts {
    fn name(&self) -> &'static str {
        "cuda"
    }

    fn forward(&self, rows: &Tensor, counts: &[usize], experts: &[Ffn]) -> Result<Tensor> {
        one_by_one(rows, counts, experts)
    }

    fn route_and_run(&self, routed: &RoutedLayer<'_>, x: &Tensor, z: &Tensor) -> Result<Option<FusedRouted>> {
        if !layer::applies(routed.spec, x, z) {
            return Ok(None);
        }
        layer::routed_experts(routed, x, z)
    }
}

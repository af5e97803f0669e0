//! The backend registry: which dispatcher and which experts computation a layer's
//! forward runs, chosen once from the facts they depend on (device, dtype, the
//! process's matmul path), not re-decided inside the layer.

use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::dispatcher::{LocalDispatcher, TokenDispatcher};
use super::experts::{CpuFusedBf16, CpuGrouped, ExpertCompute, OneByOne};
use crate::cpu::matmul::{self, ActiveMatmul, Precision};

/// A layer's dispatcher and experts computation.
#[derive(Clone, Debug)]
pub struct MoeBackend {
    /// Moves routed rows to the experts and back.
    pub dispatcher: Arc<dyn TokenDispatcher>,
    /// Runs the experts on their rows (and, on CUDA, whole routed blocks).
    pub experts: Arc<dyn ExpertCompute>,
}

impl MoeBackend {
    /// The backend for tensors of `dtype` on `device` under the matmul path `active`:
    /// the CUDA backend for CUDA tensors, the BLAS ops (grouped in f32, fused in mixed
    /// precision) for f32 on the CPU with a BLAS, experts one by one otherwise; rows
    /// stay local.
    pub fn select(device: &Device, dtype: DType, active: &ActiveMatmul) -> Self {
        let experts: Arc<dyn ExpertCompute> = match &active.blas {
            _ if device.is_cuda() => crate::cuda::experts_backend().unwrap_or_else(|| Arc::new(OneByOne)),
            Some(library) if device.is_cpu() && dtype == DType::F32 => match active.precision {
                Precision::F32 => Arc::new(CpuGrouped { library: library.clone() }),
                Precision::Bf16 => Arc::new(CpuFusedBf16 { library: library.clone() }),
            },
            _ => Arc::new(OneByOne),
        };
        MoeBackend { dispatcher: Arc::new(LocalDispatcher), experts }
    }

    /// [`Self::select`] for tensors like `x` on the process's current matmul path: what
    /// a layer run on its own (without a model that chose for it) uses.
    pub fn for_input(x: &Tensor) -> Self {
        Self::select(x.device(), x.dtype(), &matmul::active())
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device};

    use super::MoeBackend;
    use crate::cpu::matmul::{ActiveMatmul, Precision, library};

    /// The registry's choices: the BLAS ops only for f32 on the CPU with a BLAS (grouped
    /// in f32, fused in mixed precision), one by one for anything else; rows stay local.
    #[test]
    fn the_backend_follows_dtype_and_matmul_path() {
        let names = |dtype: DType, active: &ActiveMatmul| {
            let b = MoeBackend::select(&Device::Cpu, dtype, active);
            (b.dispatcher.name(), b.experts.name())
        };
        for precision in [Precision::F32, Precision::Bf16] {
            let candle = ActiveMatmul { precision, blas: None };
            assert_eq!(names(DType::F32, &candle), ("local", "one-by-one"));
        }
        let Some(lib) = library().expect("RECAST_BLAS loads") else { return };
        let blas = |precision| ActiveMatmul { precision, blas: Some(lib.clone()) };
        assert_eq!(names(DType::F32, &blas(Precision::F32)), ("local", "cpu-grouped-f32"));
        assert_eq!(names(DType::F32, &blas(Precision::Bf16)), ("local", "cpu-fused-bf16"));
        assert_eq!(names(DType::F64, &blas(Precision::F32)), ("local", "one-by-one"));
        assert_eq!(names(DType::BF16, &blas(Precision::Bf16)), ("local", "one-by-one"));
    }
}

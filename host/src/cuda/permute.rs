//! Permute and its backward: each token's row copied once per chosen expert into a
//! `[T·k, d]` block sorted by expert (each expert's rows contiguous, in token order), so
//! the expert GEMMs read plain row blocks; the backward sums each token's `k` row
//! gradients back without atomics. [`place`] computes where every slot goes.

use std::sync::Arc;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, PushKernelArg};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};

use super::kernels::{self, BLOCK, PERMUTE, output, suffix, view};
use super::router::Routed;

/// Where every routed slot sits in the expert-sorted rows, and the group sizes.
#[derive(Clone)]
pub struct Placement {
    /// Row of slot `t*k + j` in the sorted block.
    pub row_of_slot: Arc<CudaSlice<u32>>,
    /// Slot of each sorted row (the inverse).
    pub slot_of_row: Arc<CudaSlice<u32>>,
    /// Rows per expert (copied to the host: the expert GEMMs' sizes).
    pub counts: Vec<usize>,
    /// Tokens.
    pub tokens: usize,
    /// Experts per token.
    pub k: usize,
}

/// The placement of `routed` (`tokens × k` slots over `experts`).
pub fn place(dev: &candle_core::cuda_backend::CudaDevice, routed: &Routed, tokens: usize, k: usize, experts: usize) -> Result<Placement> {
    let slots = tokens * k;
    let mut row_of_slot = output::<u32>(dev, slots)?;
    let mut slot_of_row = output::<u32>(dev, slots)?;
    let f = kernels::function(dev, &PERMUTE, "moe_positions")?;
    let mut b = f.builder();
    let slots_arg = slots as i32;
    b.arg(routed.chosen.as_ref()).arg(routed.counts.as_ref()).arg(&mut row_of_slot).arg(&mut slot_of_row).arg(&slots_arg);
    // SAFETY: argument types and lengths match `moe_positions`; one block per expert,
    // 1024 threads (a multiple of 32, as it needs).
    unsafe { b.launch(kernels::per_item(experts, 1024)) }.w()?;
    let counts = dev.clone_dtoh(routed.counts.as_ref())?.into_iter().map(|c| c as usize).collect();
    Ok(Placement { row_of_slot: Arc::new(row_of_slot), slot_of_row: Arc::new(slot_of_row), counts, tokens, k })
}

/// `x` (`[T, d]`) gathered into the expert-sorted `[T·k, d]` rows.
pub fn permute(x: &Tensor, placement: &Placement) -> Result<Tensor> {
    x.apply_op1(Permute(placement.clone()))
}

struct Permute(Placement);

impl CustomOp1 for Permute {
    fn name(&self) -> &'static str {
        "moe-permute"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("moe permute: CUDA only (the CPU path is moe::dispatcher)")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let p = &self.0;
        let &[tokens, d] = l.dims() else { candle_core::bail!("moe permute: input {:?} is not [tokens, hidden]", l.dims()) };
        if tokens != p.tokens {
            candle_core::bail!("moe permute: {tokens} rows for a placement of {} tokens", p.tokens);
        }
        let rows = tokens * p.k;
        launch_rows(s, l, "moe permute", "moe_permute", &p.slot_of_row, rows, d, p.k, Shape::from((rows, d)))
    }

    fn bwd(&self, _x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&PermuteBackward(self.0.clone()))?))
    }
}

/// `dx[t] = Σ_j drows[row_of_slot[t*k + j]]`.
struct PermuteBackward(Placement);

impl CustomOp1 for PermuteBackward {
    fn name(&self) -> &'static str {
        "moe-permute-backward"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("moe permute backward: CUDA only")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let p = &self.0;
        let &[rows, d] = l.dims() else { candle_core::bail!("moe permute backward: gradient {:?}", l.dims()) };
        if rows != p.tokens * p.k {
            candle_core::bail!("moe permute backward: {rows} rows for {} tokens × {}", p.tokens, p.k);
        }
        launch_rows(s, l, "moe permute backward", "moe_permute_backward", &p.row_of_slot, p.tokens, d, p.k, Shape::from((p.tokens, d)))
    }
}

/// Launch a `(input, index, output, d, k)` kernel with one block per output row.
#[allow(clippy::too_many_arguments)]
fn launch_rows(s: &CudaStorage, l: &Layout, op: &str, kernel: &str, index: &CudaSlice<u32>, out_rows: usize, d: usize, k: usize, shape: Shape) -> Result<(CudaStorage, Shape)> {
    let dev = &s.device;
    let name = format!("{kernel}_{}", suffix(s.dtype(), op)?);
    let f = kernels::function(dev, &PERMUTE, &name)?;
    let (d_arg, k_arg) = (d as i32, k as i32);
    let cfg = kernels::per_item(out_rows, BLOCK);
    macro_rules! run {
        ($t:ty) => {{
            let input = view::<$t>(s, l, op, "input")?;
            let mut out = output::<$t>(dev, out_rows * d)?;
            let mut b = f.builder();
            b.arg(&input).arg(index).arg(&mut out).arg(&d_arg).arg(&k_arg);
            if out_rows > 0 {
                // SAFETY: argument types and lengths match the kernel's signature.
                unsafe { b.launch(cfg) }.w()?;
            }
            CudaStorage::wrap_cuda_slice(out, dev.clone())
        }};
    }
    let out = match s.dtype() {
        DType::F32 => run!(f32),
        _ => run!(half::bf16),
    };
    Ok((out, shape))
}

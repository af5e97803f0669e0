//! The weighted combine (unpermute) as one op with a backward: expert-sorted rows `y`
//! (`[T·k, d]`) and gates (`[T, k]`, f32) in, `out[t] = Σ_j g[t, j] · y[row of (t, j)]`
//! out. Its backward gives the rows' gradient (each row: its gate times its token's
//! output gradient) and the gates' (a dot product per slot).

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::PushKernelArg;
use candle_core::{CpuStorage, CudaStorage, CustomOp2, DType, Layout, Result, Shape, Tensor};

use super::kernels::{self, BLOCK, COMBINE, output, suffix, view};
use super::permute::Placement;

/// `Σ_j g[t, j] · y[row of (t, j)]` for every token, as `[T, d]` in `y`'s type.
pub fn combine(rows: &Tensor, gates: &Tensor, placement: &Placement) -> Result<Tensor> {
    rows.apply_op2(&gates.contiguous()?, Combine(placement.clone()))
}

struct Combine(Placement);

/// Warps per block of the gate-gradient kernel.
const GATE_WARPS: usize = 8;

impl CustomOp2 for Combine {
    fn name(&self) -> &'static str {
        "moe-combine"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("moe combine: CUDA only (the CPU path is moe::dispatcher)")
    }

    fn cuda_fwd(&self, ys: &CudaStorage, yl: &Layout, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let p = &self.0;
        let &[rows, d] = yl.dims() else { candle_core::bail!("moe combine: rows {:?}", yl.dims()) };
        if rows != p.tokens * p.k || gl.dims() != [p.tokens, p.k] {
            candle_core::bail!("moe combine: rows {:?} and gates {:?} for {} tokens × {}", yl.dims(), gl.dims(), p.tokens, p.k);
        }
        let dev = &ys.device;
        let gates = view::<f32>(gs, gl, "moe combine", "gates")?;
        let f = kernels::function(dev, &COMBINE, &format!("moe_combine_{}", suffix(ys.dtype(), "moe combine")?))?;
        let (d_arg, k_arg) = (d as i32, p.k as i32);
        macro_rules! run {
            ($t:ty) => {{
                let y = view::<$t>(ys, yl, "moe combine", "rows")?;
                let mut out = output::<$t>(dev, p.tokens * d)?;
                if p.tokens > 0 {
                    let mut b = f.builder();
                    b.arg(&y).arg(&gates).arg(p.row_of_slot.as_ref()).arg(&mut out).arg(&d_arg).arg(&k_arg);
                    // SAFETY: argument types and lengths match `moe_combine_*`.
                    unsafe { b.launch(kernels::per_item(p.tokens, BLOCK)) }.w()?;
                }
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let out = if ys.dtype() == DType::F32 { run!(f32) } else { run!(half::bf16) };
        Ok((out, Shape::from((p.tokens, d))))
    }

    fn bwd(&self, rows: &Tensor, gates: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let grad = grad.contiguous()?;
        let d_rows = grad.apply_op2_no_bwd(&gates.contiguous()?, &RowsBackward(self.0.clone()))?;
        let d_gates = grad.apply_op2_no_bwd(&rows.contiguous()?, &GatesBackward(self.0.clone()))?;
        Ok((Some(d_rows), Some(d_gates)))
    }
}

/// `dy[r] = g[s] · dout[t(s)]` for the slot `s` of every row.
struct RowsBackward(Placement);

impl CustomOp2 for RowsBackward {
    fn name(&self) -> &'static str {
        "moe-combine-backward-rows"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("moe combine backward: CUDA only")
    }

    fn cuda_fwd(&self, os: &CudaStorage, ol: &Layout, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let p = &self.0;
        let &[_, d] = ol.dims() else { candle_core::bail!("moe combine backward: gradient {:?}", ol.dims()) };
        let rows = p.tokens * p.k;
        let dev = &os.device;
        let gates = view::<f32>(gs, gl, "moe combine backward", "gates")?;
        let f = kernels::function(dev, &COMBINE, &format!("moe_combine_backward_rows_{}", suffix(os.dtype(), "moe combine backward")?))?;
        let (d_arg, k_arg) = (d as i32, p.k as i32);
        macro_rules! run {
            ($t:ty) => {{
                let grad = view::<$t>(os, ol, "moe combine backward", "gradient")?;
                let mut out = output::<$t>(dev, rows * d)?;
                if rows > 0 {
                    let mut b = f.builder();
                    b.arg(&grad).arg(&gates).arg(p.slot_of_row.as_ref()).arg(&mut out).arg(&d_arg).arg(&k_arg);
                    // SAFETY: argument types and lengths match `moe_combine_backward_rows_*`.
                    unsafe { b.launch(kernels::per_item(rows, BLOCK)) }.w()?;
                }
                CudaStorage::wrap_cuda_slice(out, dev.clone())
            }};
        }
        let out = if os.dtype() == DType::F32 { run!(f32) } else { run!(half::bf16) };
        Ok((out, Shape::from((rows, d))))
    }
}

/// `dg[t, j] = dout[t] · y[row of (t, j)]`, f32.
struct GatesBackward(Placement);

impl CustomOp2 for GatesBackward {
    fn name(&self) -> &'static str {
        "moe-combine-backward-gates"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("moe combine backward: CUDA only")
    }

    fn cuda_fwd(&self, os: &CudaStorage, ol: &Layout, ys: &CudaStorage, yl: &Layout) -> Result<(CudaStorage, Shape)> {
        let p = &self.0;
        let &[_, d] = ol.dims() else { candle_core::bail!("moe combine backward: gradient {:?}", ol.dims()) };
        let slots = p.tokens * p.k;
        let dev = &os.device;
        let f = kernels::function(dev, &COMBINE, &format!("moe_combine_backward_gates_{}", suffix(os.dtype(), "moe combine backward")?))?;
        let (slots_arg, d_arg, k_arg) = (slots as i32, d as i32, p.k as i32);
        let mut out = output::<f32>(dev, slots)?;
        macro_rules! run {
            ($t:ty) => {{
                let grad = view::<$t>(os, ol, "moe combine backward", "gradient")?;
                let y = view::<$t>(ys, yl, "moe combine backward", "rows")?;
                if slots > 0 {
                    let mut b = f.builder();
                    b.arg(&grad).arg(&y).arg(p.row_of_slot.as_ref()).arg(&mut out).arg(&slots_arg).arg(&d_arg).arg(&k_arg);
                    // SAFETY: argument types and lengths match `moe_combine_backward_gates_*`;
                    // one warp per slot.
                    unsafe { b.launch(kernels::per_item(slots.div_ceil(GATE_WARPS), 32 * GATE_WARPS as u32)) }.w()?;
                }
            }};
        }
        if os.dtype() == DType::F32 {
            run!(f32)
        } else {
            run!(half::bf16)
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((p.tokens, p.k))))
    }
}

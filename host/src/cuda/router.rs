//! The fused router as one differentiable op: raw router logits `z` `[T, E]` (f32) in,
//! `[T, E + k]` out — the probability rows `p` in the first `E` columns, the combine
//! weights in the last `k` — plus, on the side, each token's chosen experts and the
//! per-expert counts (integers: no gradient). `kernels/router.cu` does normalisation,
//! scores, bias, top-k, gates and counts in one pass; its backward maps the gradient of
//! both outputs back to `z`. The CPU reference is `moe::gates` with `moe::selection`.

use std::sync::{Arc, Mutex};

use candle_core::cuda_backend::WrapErr;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, PushKernelArg};
use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};

use super::kernels::{self, ROUTER, output, view};
use crate::moe::spec::{LogitNorm, RouterSpec, ScoreFunction, TopkOrder};

/// The kernels' limits (`MAX_EXPERTS`, `MAX_TOP_K` in `kernels/router.cu`).
pub const MAX_EXPERTS: usize = 256;
/// See [`MAX_EXPERTS`].
pub const MAX_TOP_K: usize = 32;

/// The kernels' view of a router spec (`RouterArgs` in `kernels/router.cu`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RouterArgs {
    tokens: i32,
    experts: i32,
    k: i32,
    sigmoid_score: i32,
    normalise: i32,
    lambda: f32,
    topk_then_softmax: i32,
    renormalise: i32,
    scaling: f32,
}

// SAFETY: a `repr(C)` struct of plain 4-byte numbers, laid out as the kernel's struct.
unsafe impl DeviceRepr for RouterArgs {}

impl RouterArgs {
    /// The kernel arguments for `spec` over `tokens × experts` logits, or `None` where
    /// the fused router does not apply (beyond its limits, or k = 0).
    pub fn new(spec: &RouterSpec, tokens: usize, experts: usize) -> Option<Self> {
        let k = spec.top_k as usize;
        if k == 0 || k > experts || experts > MAX_EXPERTS || k > MAX_TOP_K || tokens > i32::MAX as usize {
            return None;
        }
        let (normalise, lambda) = match spec.logit_norm {
            LogitNorm::None => (0, 0.0),
            LogitNorm::Skywork(lambda) => (1, lambda),
        };
        Some(Self {
            tokens: tokens as i32,
            experts: experts as i32,
            k: k as i32,
            sigmoid_score: (spec.score == ScoreFunction::Sigmoid) as i32,
            normalise,
            lambda,
            topk_then_softmax: (spec.order == TopkOrder::TopkThenSoftmax) as i32,
            renormalise: spec.renormalize as i32,
            scaling: spec.scaling,
        })
    }

    /// Experts chosen per token.
    pub fn k(&self) -> usize {
        self.k as usize
    }
}

/// What routing chose, on the device.
#[derive(Clone)]
pub struct Routed {
    /// Token `t`'s `j`-th expert at `t*k + j`.
    pub chosen: Arc<CudaSlice<u32>>,
    /// Tokens per expert.
    pub counts: Arc<CudaSlice<u32>>,
}

/// Route `z` (`[T, E]`, f32, contiguous) as `args` says, with `bias` added for selection
/// only (`E` values). Returns the packed `[T, E + k]` tensor and the choices.
pub fn route(z: &Tensor, args: RouterArgs, bias: &[f32]) -> Result<(Tensor, Routed)> {
    let routed = Arc::new(Mutex::new(None));
    let op = FusedRouter { args, bias: bias.to_vec(), routed: routed.clone() };
    let packed = z.apply_op1_arc(Arc::new(Box::new(op)))?;
    let routed = routed.lock().map_err(poisoned)?.clone();
    let routed = routed.ok_or_else(|| candle_core::Error::Msg("fused router: the forward kernel did not run".into()))?;
    Ok((packed, routed))
}

/// The forward op; the choices it makes are read by [`route`] and by its backward.
struct FusedRouter {
    args: RouterArgs,
    bias: Vec<f32>,
    /// Set by the forward kernel.
    routed: Arc<Mutex<Option<Routed>>>,
}

fn poisoned<T>(_: T) -> candle_core::Error {
    candle_core::Error::Msg("fused router: state poisoned by an earlier panic".into())
}

impl CustomOp1 for FusedRouter {
    fn name(&self) -> &'static str {
        "fused-router"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("fused router: CUDA only (the CPU path is moe::gates)")
    }

    fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
        let a = self.args;
        let (tokens, experts, k) = (a.tokens as usize, a.experts as usize, a.k as usize);
        if l.dims() != [tokens, experts] || self.bias.len() != experts {
            candle_core::bail!("fused router: logits {:?} and {} bias values for {tokens} tokens × {experts} experts", l.dims(), self.bias.len());
        }
        let dev = &s.device;
        let z = view::<f32>(s, l, "fused router", "logits")?;
        let bias = dev.clone_htod(&self.bias)?;
        let mut packed = output::<f32>(dev, tokens * (experts + k))?;
        let mut chosen = output::<u32>(dev, tokens * k)?;
        let mut counts = dev.alloc_zeros::<u32>(experts)?;
        let f = kernels::function(dev, &ROUTER, "moe_router_forward")?;
        let mut b = f.builder();
        b.arg(&z).arg(&bias).arg(&mut packed).arg(&mut chosen).arg(&mut counts).arg(&a);
        // SAFETY: argument types and lengths match `moe_router_forward`'s signature.
        unsafe { b.launch(kernels::per_thread(tokens, 128)) }.w()?;
        *self.routed.lock().map_err(poisoned)? = Some(Routed { chosen: Arc::new(chosen), counts: Arc::new(counts) });
        Ok((CudaStorage::wrap_cuda_slice(packed, dev.clone()), Shape::from((tokens, experts + k))))
    }

    fn bwd(&self, z: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let chosen = self.routed.lock().map_err(poisoned)?.as_ref().map(|r| r.chosen.clone());
        let chosen = chosen.ok_or_else(|| candle_core::Error::Msg("fused router: backward before forward".into()))?;
        Ok(Some(z.apply_op2_no_bwd(&grad.contiguous()?, &RouterBackward { args: self.args, chosen })?))
    }
}

/// `dL/dz` from `z` and `dL/d(packed)`.
struct RouterBackward {
    args: RouterArgs,
    chosen: Arc<CudaSlice<u32>>,
}

impl CustomOp2 for RouterBackward {
    fn name(&self) -> &'static str {
        "fused-router-backward"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
        candle_core::bail!("fused router backward: CUDA only")
    }

    fn cuda_fwd(&self, zs: &CudaStorage, zl: &Layout, gs: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
        let a = self.args;
        let (tokens, experts, k) = (a.tokens as usize, a.experts as usize, a.k as usize);
        if gl.dims() != [tokens, experts + k] {
            candle_core::bail!("fused router backward: gradient {:?} for {tokens} tokens × ({experts} + {k})", gl.dims());
        }
        let dev = &zs.device;
        let z = view::<f32>(zs, zl, "fused router backward", "logits")?;
        let grad = view::<f32>(gs, gl, "fused router backward", "gradient")?;
        let mut grad_z = output::<f32>(dev, tokens * experts)?;
        let f = kernels::function(dev, &ROUTER, "moe_router_backward")?;
        let mut b = f.builder();
        b.arg(&z).arg(self.chosen.as_ref()).arg(&grad).arg(&mut grad_z).arg(&a);
        // SAFETY: argument types and lengths match `moe_router_backward`'s signature.
        unsafe { b.launch(kernels::per_thread(tokens, 128)) }.w()?;
        Ok((CudaStorage::wrap_cuda_slice(grad_z, dev.clone()), Shape::from((tokens, experts))))
    }
}

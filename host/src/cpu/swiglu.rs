//! `silu(g) ⊙ u`, the SwiGLU gate of every FFN, as one fused CPU op with a fused
//! backward: candle's composition makes a pass (and a tensor) per elementwise step,
//! several in the backward, over the widest activations of the model.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::exp::exp_approx;
use super::matmul::fully_written_by;
use super::op_io::with_f32;

/// Elements per parallel chunk: large enough that scheduling costs nothing.
const CHUNK: usize = 1 << 14;

/// `silu(gate) ⊙ up` for tensors of one shape; fused on the CPU in f32, candle's ops
/// elsewhere.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let fused = gate.dtype() == DType::F32 && up.dtype() == DType::F32 && matches!(gate.device(), Device::Cpu) && gate.shape() == up.shape();
    if fused { gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu) } else { gate.silu()?.mul(up) }
}

struct SwiGlu;

#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp_approx(-x))
}

#[inline(always)]
fn forward_body(g: &[f32], u: &[f32], out: &mut [MaybeUninit<f32>]) {
    for ((o, &g), &u) in out.iter_mut().zip(g).zip(u) {
        o.write(g * sigmoid(g) * u);
    }
}

#[inline(always)]
fn backward_body(g: &[f32], u: &[f32], d: &[f32], dg: &mut [MaybeUninit<f32>], du: &mut [MaybeUninit<f32>]) {
    for ((((dg, du), &g), &u), &d) in dg.iter_mut().zip(du.iter_mut()).zip(g).zip(u).zip(d) {
        // silu(g) = g·σ(g); silu'(g) = σ(g)·(1 + g·(1 − σ(g))).
        let s = sigmoid(g);
        du.write(d * g * s);
        dg.write(d * u * s * (1.0 + g * (1.0 - s)));
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn forward_avx512(g: &[f32], u: &[f32], out: &mut [MaybeUninit<f32>]) {
    forward_body(g, u, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn forward_avx2(g: &[f32], u: &[f32], out: &mut [MaybeUninit<f32>]) {
    forward_body(g, u, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn backward_avx512(g: &[f32], u: &[f32], d: &[f32], dg: &mut [MaybeUninit<f32>], du: &mut [MaybeUninit<f32>]) {
    backward_body(g, u, d, dg, du)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn backward_avx2(g: &[f32], u: &[f32], d: &[f32], dg: &mut [MaybeUninit<f32>], du: &mut [MaybeUninit<f32>]) {
    backward_body(g, u, d, dg, du)
}

/// `out = silu(g) ⊙ u` element-wise (equal lengths), on the widest vectors the CPU has.
pub fn forward_slice(g: &[f32], u: &[f32], out: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    {
        let cpu = crate::cpu::features::features();
        if cpu.avx512f {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { forward_avx512(g, u, out) };
        }
        if cpu.avx2_fma() {
            // SAFETY: as above.
            return unsafe { forward_avx2(g, u, out) };
        }
    }
    forward_body(g, u, out)
}

/// The gradients of `silu(g) ⊙ u` for the output gradient `d`.
pub fn backward_slice(g: &[f32], u: &[f32], d: &[f32], dg: &mut [MaybeUninit<f32>], du: &mut [MaybeUninit<f32>]) {
    #[cfg(target_arch = "x86_64")]
    {
        let cpu = crate::cpu::features::features();
        if cpu.avx512f {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { backward_avx512(g, u, d, dg, du) };
        }
        if cpu.avx2_fma() {
            // SAFETY: as above.
            return unsafe { backward_avx2(g, u, d, dg, du) };
        }
    }
    backward_body(g, u, d, dg, du)
}

/// Elements per parallel chunk of the packed gate.
const PACKED_CHUNK: usize = 1 << 14;

/// `[g | u]` rows (`2f` wide) → `silu(g) ⊙ u` rows (`f` wide), in parallel chunks of
/// rows: the experts' gate, whose `g` and `u` come out of one product side by side.
pub fn packed_forward(gu: &[f32], f: usize) -> Vec<f32> {
    let two_f = 2 * f;
    let rows = gu.len() / two_f.max(1);
    let rows_per_chunk = (PACKED_CHUNK / f.max(1)).max(1);
    written(rows * f, |out| {
        out.par_chunks_mut(rows_per_chunk * f).zip(gu.par_chunks(rows_per_chunk * two_f)).for_each(|(o, gu)| {
            for (o, gu) in o.chunks_exact_mut(f).zip(gu.chunks_exact(two_f)) {
                let (g, u) = gu.split_at(f);
                forward_slice(g, u, o);
            }
        });
    })
}

/// The `[dg | du]` rows of [`packed_forward`] for the output gradient rows `grad`.
pub fn packed_backward(gu: &[f32], grad: &[f32], f: usize) -> Vec<f32> {
    let two_f = 2 * f;
    let rows = gu.len() / two_f.max(1);
    let rows_per_chunk = (PACKED_CHUNK / f.max(1)).max(1);
    written(rows * two_f, |dgu| {
        dgu.par_chunks_mut(rows_per_chunk * two_f).zip(gu.par_chunks(rows_per_chunk * two_f).zip(grad.par_chunks(rows_per_chunk * f))).for_each(|(dgu, (gu, grad))| {
            for ((dgu, gu), d) in dgu.chunks_exact_mut(two_f).zip(gu.chunks_exact(two_f)).zip(grad.chunks_exact(f)) {
                let (dg, du) = dgu.split_at_mut(f);
                let (g, u) = gu.split_at(f);
                backward_slice(g, u, d, dg, du);
            }
        });
    })
}

/// A vector `fill` writes completely.
fn written(n: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    // SAFETY: every caller's `fill` writes all `n` elements (element by element, in
    // chunks that cover the output).
    unsafe { fully_written_by(n, fill) }
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(g), CpuStorage::F32(u)) = (s1, s2) else { candle_core::bail!("swiglu takes f32 tensors") };
        let (Some((g0, g1)), Some((u0, u1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else { candle_core::bail!("swiglu takes contiguous tensors") };
        let (g, u) = (&g[g0..g1], &u[u0..u1]);
        let out = written(g.len(), |out| out.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK))).for_each(|(o, (g, u))| forward_slice(g, u, o)));
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = gate.elem_count();
        let mut du = Vec::with_capacity(n);
        let dg = with_f32("swiglu", "the gate", gate, |g| {
            with_f32("swiglu", "the up projection", up, |u| {
                with_f32("swiglu", "the gradient", grad, |d| {
                    Ok(written(n, |dg| {
                        let du = &mut du.spare_capacity_mut()[..n];
                        dg.par_chunks_mut(CHUNK)
                            .zip(du.par_chunks_mut(CHUNK))
                            .zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)).zip(d.par_chunks(CHUNK)))
                            .for_each(|((dg, du), ((g, u), d))| backward_slice(g, u, d, dg, du))
                    }))
                })
            })
        })?;
        // SAFETY: `backward_slice` wrote every element of `du` alongside `dg`.
        unsafe { du.set_len(n) };
        let shape = gate.shape().clone();
        Ok((Some(Tensor::from_vec(dg, shape.clone(), gate.device())?), Some(Tensor::from_vec(du, shape, gate.device())?)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor, Var};

    use crate::model::init::SplitMix64;

    /// Forward and both gradients against candle's `silu` and `mul`.
    #[test]
    fn fused_swiglu_matches_the_composition_and_its_gradients() {
        let mut rng = SplitMix64(11);
        let mut randn = |n: usize| -> Tensor { Tensor::from_vec((0..n).map(|_| (rng.normal() * 2.0) as f32).collect::<Vec<_>>(), (n / 50, 50), &Device::Cpu).expect("tensor") };
        let (g, u, w) = (Var::from_tensor(&randn(40_000)).expect("var"), Var::from_tensor(&randn(40_000)).expect("var"), randn(40_000));
        let fused = super::swiglu(g.as_tensor(), u.as_tensor()).expect("fused");
        let plain = g.as_tensor().silu().expect("silu").mul(u.as_tensor()).expect("mul");
        let diff = |a: &Tensor, b: &Tensor| -> f32 { (a - b).expect("sub").abs().expect("abs").flatten_all().expect("flat").max(0).expect("max").to_scalar().expect("scalar") };
        assert!(diff(&fused, &plain) < 1e-4);
        let gf = (fused * &w).expect("mul").sum_all().expect("sum").backward().expect("bwd");
        let gp = (plain * &w).expect("mul").sum_all().expect("sum").backward().expect("bwd");
        for v in [&g, &u] {
            assert!(diff(gf.get(v).expect("grad"), gp.get(v).expect("grad")) < 1e-3);
        }
    }
}

//! `silu(g) ⊙ u`, the SwiGLU gate of every FFN, as one fused CPU op with a fused
//! backward: candle's composition makes a pass (and a tensor) per elementwise step,
//! several in the backward, over the widest activations of the model.

use candle_core::{CpuStorage, CustomOp2, DType, Device, Layout, Result, Shape, Storage, Tensor};
use rayon::prelude::*;

/// Elements per parallel chunk: large enough that scheduling costs nothing.
const CHUNK: usize = 1 << 14;

/// `silu(gate) ⊙ up` for tensors of one shape; fused on the CPU in f32, candle's ops
/// elsewhere.
pub fn swiglu(gate: &Tensor, up: &Tensor) -> Result<Tensor> {
    let fused = gate.dtype() == DType::F32 && up.dtype() == DType::F32 && matches!(gate.device(), Device::Cpu) && gate.shape() == up.shape();
    if fused { gate.contiguous()?.apply_op2(&up.contiguous()?, SwiGlu) } else { gate.silu()?.mul(up) }
}

struct SwiGlu;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// The f32 elements of a contiguous CPU tensor.
fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(v)), Some((a, b))) => Ok(f(&v[a..b])),
        _ => candle_core::bail!("swiglu: expected a contiguous f32 CPU tensor"),
    }
}

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(g), CpuStorage::F32(u)) = (s1, s2) else { candle_core::bail!("swiglu takes f32 tensors") };
        let (Some((g0, g1)), Some((u0, u1))) = (l1.contiguous_offsets(), l2.contiguous_offsets()) else { candle_core::bail!("swiglu takes contiguous tensors") };
        let (g, u) = (&g[g0..g1], &u[u0..u1]);
        let mut out = vec![0f32; g.len()];
        out.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK))).for_each(|(o, (g, u))| {
            for ((o, &g), &u) in o.iter_mut().zip(g).zip(u) {
                *o = g * sigmoid(g) * u;
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, gate: &Tensor, up: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let n = gate.elem_count();
        let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
        with_values(gate, |g| {
            with_values(up, |u| {
                with_values(grad, |d| {
                    dg.par_chunks_mut(CHUNK).zip(du.par_chunks_mut(CHUNK)).zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)).zip(d.par_chunks(CHUNK))).for_each(|((dg, du), ((g, u), d))| {
                        for i in 0..dg.len() {
                            // silu(g) = g·σ(g); silu'(g) = σ(g)·(1 + g·(1 − σ(g))).
                            let s = sigmoid(g[i]);
                            du[i] = d[i] * g[i] * s;
                            dg[i] = d[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
                        }
                    })
                })
            })
        })???;
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

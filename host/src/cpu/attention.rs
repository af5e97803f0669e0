//! `softmax(q kᵀ / √d + causal mask) v` for every batch row and head as one candle op
//! on the BLAS, with grouped-query heads read in place and a backward that computes each
//! head's probabilities again (one `s × s × d` product and a softmax) instead of keeping
//! them: kept, they were `[batch, heads, seq, seq]`, 9.4 MB a layer of a real-shape
//! model, the largest activation of its attention.
//!
//! candle's composition made a tensor of `[batch, heads, seq, seq]` for each of the
//! scale, the mask, the softmax's five steps and their backward, copied the repeated
//! key/value heads and the transposed keys, and multiplied with its own small-matrix
//! GEMM: a fifth of a small model's training step.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::exp::exp_approx;
use super::matmul::{self, Accumulate, BlasLibrary, GemmShape, Operand, fully_written, gemm_serial};
use super::op_io::{f32_slice, with_f32};

/// The op's name in errors.
const OP: &str = "attention";

/// The attention output as token rows `[b · s, heads · d]` (what the output projection
/// multiplies, so no transposed copy of it is made or kept) for `q [b, heads, s, d]` and
/// `k`, `v` `[b, kv_heads, s, d]` (each kv head serves `heads / kv_heads` query heads), or `None`
/// when the BLAS path does not apply (no BLAS, not f32 on the CPU): the caller then
/// composes candle's ops. `window`: a query sees only that many most recent positions.
pub fn causal_attention(q: &Tensor, k: &Tensor, v: &Tensor, window: Option<usize>) -> Result<Option<Tensor>> {
    let Some(library) = matmul::active().blas else { return Ok(None) };
    causal_attention_on(library, q, k, v, window)
}

/// [`causal_attention`] with a given BLAS.
pub fn causal_attention_on(library: Arc<BlasLibrary>, q: &Tensor, k: &Tensor, v: &Tensor, window: Option<usize>) -> Result<Option<Tensor>> {
    let f32_cpu = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu() && t.rank() == 4;
    if !(f32_cpu(q) && f32_cpu(k) && f32_cpu(v)) {
        return Ok(None);
    }
    let (_, heads, _, d) = q.dims4()?;
    let kv_heads = k.dim(1)?;
    if kv_heads == 0 || heads % kv_heads != 0 || k.dims() != v.dims() || k.dim(3)? != d || k.dim(2)? != q.dim(2)? {
        return Ok(None);
    }
    let op = AttentionCore { window, scale: 1.0 / (d as f32).sqrt(), library };
    Ok(Some(q.contiguous()?.apply_op3(&k.contiguous()?, &v.contiguous()?, op)?))
}

/// The op.
struct AttentionCore {
    window: Option<usize>,
    scale: f32,
    library: Arc<BlasLibrary>,
}

/// Sizes of one call.
#[derive(Clone, Copy)]
struct Dims {
    batch: usize,
    heads: usize,
    kv_heads: usize,
    seq: usize,
    d: usize,
}

impl Dims {
    fn group(&self) -> usize {
        self.heads / self.kv_heads
    }
}

fn err(e: matmul::MatmulError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl AttentionCore {
    /// The softmax of one head's scaled, masked scores, `[s, s]`, in `buffer` (reused
    /// across the heads a task handles).
    fn head_probs<'b>(&self, dims: Dims, q: &[f32], k: &[f32], buffer: &'b mut Vec<f32>) -> Result<&'b [f32]> {
        let (s, d) = (dims.seq, dims.d);
        buffer.clear();
        buffer.reserve(s * s);
        let shape = GemmShape { m: s, n: s, k: d, transpose_a: false, transpose_b: true };
        gemm_serial(&self.library, shape, Operand { data: q, ld: d }, Operand { data: k, ld: d }, Accumulate::Overwrite, &mut buffer.spare_capacity_mut()[..s * s], s).map_err(err)?;
        // SAFETY: the GEMM above wrote all `s · s` elements.
        unsafe { buffer.set_len(s * s) };
        for (i, row) in buffer.chunks_exact_mut(s).enumerate() {
            let first = self.window.map_or(0, |w| (i + 1).saturating_sub(w));
            softmax_visible(&mut row[first..=i], self.scale);
            row[..first].fill(0.0);
            row[i + 1..].fill(0.0);
        }
        Ok(buffer)
    }
}

/// `softmax(scale · x)` in place over the keys a query sees.
fn softmax_visible(x: &mut [f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::features::features().avx512f {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { softmax_avx512(x, scale) };
        }
    }
    softmax_body(x, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn softmax_avx512(x: &mut [f32], scale: f32) {
    softmax_body(x, scale)
}

#[inline(always)]
fn softmax_body(x: &mut [f32], scale: f32) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v)) * scale;
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = exp_approx(*v * scale - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// `dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale` in place over one row.
fn softmax_backward_row(ds: &mut [f32], p: &[f32], scale: f32) {
    #[cfg(target_arch = "x86_64")]
    {
        if crate::cpu::features::features().avx512f {
            // SAFETY: the CPU has the feature the function is compiled for.
            return unsafe { softmax_backward_avx512(ds, p, scale) };
        }
    }
    softmax_backward_body(ds, p, scale)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn softmax_backward_avx512(ds: &mut [f32], p: &[f32], scale: f32) {
    softmax_backward_body(ds, p, scale)
}

#[inline(always)]
fn softmax_backward_body(ds: &mut [f32], p: &[f32], scale: f32) {
    let dot: f32 = ds.iter().zip(p).map(|(a, b)| a * b).sum();
    ds.iter_mut().zip(p).for_each(|(x, &p)| *x = p * (*x - dot) * scale);
}

fn dims_of(q: &Layout, k: &Layout) -> Result<Dims> {
    match (q.dims(), k.dims()) {
        (&[batch, heads, seq, d], &[_, kv_heads, _, _]) => Ok(Dims { batch, heads, kv_heads, seq, d }),
        (a, b) => candle_core::bail!("attention: shapes {a:?} and {b:?}"),
    }
}

impl CustomOp3 for AttentionCore {
    fn name(&self) -> &'static str {
        "causal-attention"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = dims_of(l1, l2)?;
        let Dims { batch, heads, kv_heads, seq: s, d } = dims;
        let (q, k, v) = (f32_slice(OP, "queries", s1, l1)?, f32_slice(OP, "keys", s2, l2)?, f32_slice(OP, "values", s3, l3)?);
        let mut out = Vec::<f32>::with_capacity(batch * s * heads * d);
        // The tasks write disjoint parts of the capacity through this address.
        let rows = out.as_mut_ptr() as usize;
        (0..batch * heads).into_par_iter().try_for_each_init(
            || (Vec::with_capacity(s * s), vec![0f32; s * d]),
            |(probs, block): &mut (Vec<f32>, Vec<f32>), bh| {
                let kv = (bh / heads) * kv_heads + (bh % heads) / dims.group();
                let probs = self.head_probs(dims, &q[bh * s * d..(bh + 1) * s * d], &k[kv * s * d..(kv + 1) * s * d], probs)?;
                let shape = GemmShape { m: s, n: d, k: s, transpose_a: false, transpose_b: false };
                gemm_serial(&self.library, shape, Operand { data: probs, ld: s }, Operand { data: &v[kv * s * d..(kv + 1) * s * d], ld: d }, Accumulate::Overwrite, matmul::as_uninit(block), d)
                    .map_err(err)?;
                let (b, head) = (bh / heads, bh % heads);
                for (p, row) in block.chunks_exact(d).enumerate() {
                    // SAFETY: token row `b·s + p`, head `head`'s `d` columns: inside the
                    // buffer's capacity, and written by this task alone.
                    unsafe { std::ptr::copy_nonoverlapping(row.as_ptr(), (rows as *mut f32).add(((b * s + p) * heads + head) * d), d) };
                }
                Ok::<(), candle_core::Error>(())
            },
        )?;
        // SAFETY: the (batch, head) tasks above wrote every token row's every head.
        unsafe { out.set_len(batch * s * heads * d) };
        Ok((CpuStorage::F32(out), Shape::from((batch * s, heads * d))))
    }

    fn bwd(&self, q: &Tensor, k: &Tensor, v: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = dims_of(q.layout(), k.layout())?;
        let Dims { batch, heads, kv_heads, seq: s, d } = dims;
        let group = dims.group();
        let (dq, dk, dv) = with_f32(OP, "queries", q, |q| {
            with_f32(OP, "keys", k, |k| {
                with_f32(OP, "values", v, |v| {
                    with_f32(OP, "the gradient", grad, |grad| {
                        let (mut dk, mut dv) = (Vec::with_capacity(batch * kv_heads * s * d), Vec::with_capacity(batch * kv_heads * s * d));
                        // SAFETY: each (batch, kv head) task overwrites its query heads' dq
                        // blocks, and its dk and dv blocks (first head overwrites, the rest
                        // of its group add); the tasks cover every block.
                        let dq = unsafe {
                            fully_written(batch * heads * s * d, |dq| {
                                let dk = &mut dk.spare_capacity_mut()[..batch * kv_heads * s * d];
                                let dv = &mut dv.spare_capacity_mut()[..batch * kv_heads * s * d];
                                dq.par_chunks_mut(group * s * d).zip(dk.par_chunks_mut(s * d).zip(dv.par_chunks_mut(s * d))).enumerate().try_for_each(|(bkv, (dq, (dk, dv)))| {
                                    let (mut ds, mut probs) = (vec![0f32; s * s], Vec::with_capacity(s * s));
                                    let kv_rows = bkv * s * d..(bkv + 1) * s * d;
                                    for g in 0..group {
                                        let bh = (bkv / kv_heads) * heads + (bkv % kv_heads) * group + g;
                                        let rows = bh * s * d..(bh + 1) * s * d;
                                        let p = self.head_probs(dims, &q[rows.clone()], &k[kv_rows.clone()], &mut probs)?;
                                        let (b, head) = (bh / heads, bh % heads);
                                        let go = Operand { data: &grad[(b * s * heads + head) * d..], ld: heads * d };
                                        let accumulate = if g == 0 { Accumulate::Overwrite } else { Accumulate::Add };
                                        let lib = &self.library;
                                        // dV += Pᵀ dO.
                                        gemm_serial(lib, GemmShape { m: s, n: d, k: s, transpose_a: true, transpose_b: false }, Operand { data: p, ld: s }, go, accumulate, dv, d).map_err(err)?;
                                        // dP = dO Vᵀ, then dS = P ⊙ (dP − rowsum(dP ⊙ P)) · scale.
                                        gemm_serial(
                                            lib,
                                            GemmShape { m: s, n: s, k: d, transpose_a: false, transpose_b: true },
                                            go,
                                            Operand { data: &v[kv_rows.clone()], ld: d },
                                            Accumulate::Overwrite,
                                            matmul::as_uninit(&mut ds),
                                            s,
                                        )
                                        .map_err(err)?;
                                        for (ds, p) in ds.chunks_exact_mut(s).zip(p.chunks_exact(s)) {
                                            softmax_backward_row(ds, p, self.scale);
                                        }
                                        let ds_op = Operand { data: &ds[..], ld: s };
                                        // dQ = dS K; dK += dSᵀ Q.
                                        gemm_serial(
                                            lib,
                                            GemmShape { m: s, n: d, k: s, transpose_a: false, transpose_b: false },
                                            ds_op,
                                            Operand { data: &k[kv_rows.clone()], ld: d },
                                            Accumulate::Overwrite,
                                            &mut dq[g * s * d..(g + 1) * s * d],
                                            d,
                                        )
                                        .map_err(err)?;
                                        gemm_serial(lib, GemmShape { m: s, n: d, k: s, transpose_a: true, transpose_b: false }, ds_op, Operand { data: &q[rows], ld: d }, accumulate, dk, d)
                                            .map_err(err)?;
                                    }
                                    Ok::<(), candle_core::Error>(())
                                })
                            })?
                        };
                        // SAFETY: as above.
                        unsafe {
                            dk.set_len(batch * kv_heads * s * d);
                            dv.set_len(batch * kv_heads * s * d);
                        }
                        Ok((dq, dk, dv))
                    })
                })
            })
        })?;
        let dev = q.device();
        Ok((Some(Tensor::from_vec(dq, q.shape(), dev)?), Some(Tensor::from_vec(dk, k.shape(), dev)?), Some(Tensor::from_vec(dv, v.shape(), dev)?)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::causal_attention_on;
    use crate::cpu::matmul::library;
    use crate::model::attention::causal_mask;
    use crate::model::init::SplitMix64;
    use crate::model::ops::softmax_last_dim;
    use crate::model::test_tensors::{randn_var, relative_gap};

    /// Against candle's composition (repeat kv heads, scale, mask, softmax, matmul), the
    /// output and all three gradients, with grouped heads and a sliding window.
    #[test]
    fn fused_attention_matches_the_composition() {
        let Some(lib) = library().expect("RECAST_BLAS loads") else {
            assert!(std::env::var("RECAST_REQUIRE_BLAS").as_deref() != Ok("1"), "RECAST_REQUIRE_BLAS=1 but no BLAS library loads");
            eprintln!("no BLAS library: skipped");
            return;
        };
        let (b, h, kvh, s, d) = (2, 4, 2, 9, 8);
        for window in [None, Some(3)] {
            let mut rng = SplitMix64(21);
            let (q, k, v, r) =
                (randn_var(&mut rng, &[b, h, s, d], 1.0), randn_var(&mut rng, &[b, kvh, s, d], 1.0), randn_var(&mut rng, &[b, kvh, s, d], 1.0), randn_var(&mut rng, &[b * s, h * d], 1.0));
            let run = |out: Tensor| {
                let grads = (out.clone() * r.as_tensor()).expect("mul").sum_all().expect("sum").backward().expect("backward");
                let g = |v: &Var| grads.get(v).expect("grad").clone();
                vec![out, g(&q), g(&k), g(&v)]
            };
            let fused = run(causal_attention_on(lib.clone(), q.as_tensor(), k.as_tensor(), v.as_tensor(), window).expect("fused").expect("applies"));
            assert!(fused[1..].iter().all(|g| !g.track_op()), "gradients must not carry a graph");
            let repeat = |t: &Tensor| t.unsqueeze(2).expect("u").broadcast_as((b, kvh, h / kvh, s, d)).expect("b").contiguous().expect("c").reshape((b, h, s, d)).expect("r");
            let mask = causal_mask(s, window, DType::F32, &Device::Cpu).expect("mask");
            let scores = (q.as_tensor().matmul(&repeat(k.as_tensor()).t().expect("t")).expect("qk") * (1.0 / (d as f64).sqrt())).expect("scale").broadcast_add(&mask).expect("mask");
            let reference = run(softmax_last_dim(&scores).expect("softmax").matmul(&repeat(v.as_tensor())).expect("pv").transpose(1, 2).expect("t").reshape((b * s, h * d)).expect("rows"));
            for (i, (a, e)) in fused.iter().zip(&reference).enumerate() {
                let g = relative_gap(a, e);
                assert!(g < 1e-5, "window {window:?}: output {i} (0 = out, then dq, dk, dv) is {g} from candle's");
            }
        }
    }
}

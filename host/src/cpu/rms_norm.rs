//! RMSNorm as one CPU op with its backward, in f32: candle's composition was seven ops
//! (twice as many in the backward), every one a pass and an allocation over the
//! activations, nine norms per step of a small model.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::matmul::fully_written_by;
use super::op_io::{f32_slice, is_f32_cpu, with_f32};

/// Rows per parallel task.
const ROWS: usize = 64;

/// A vector `fill` writes completely.
fn written(n: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    // SAFETY: every caller's `fill` writes all `n` elements (element by element, in
    // chunks that cover the output).
    unsafe { fully_written_by(n, fill) }
}

/// `x / sqrt(mean(x²) + eps) ⊙ w` over the last dimension of `x`, fused when `x` and
/// `w` are f32 on the CPU; `None` otherwise (the caller composes candle's ops).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    if !(is_f32_cpu(x) && is_f32_cpu(weight)) || weight.rank() != 1 || x.dims().last() != Some(&weight.dim(0)?) {
        return Ok(None);
    }
    Ok(Some(x.contiguous()?.apply_op2(&weight.contiguous()?, RmsNorm { eps: eps as f32 })?))
}

struct RmsNorm {
    eps: f32,
}

impl RmsNorm {
    fn inverse_rms(&self, row: &[f32]) -> f32 {
        let mean = row.iter().map(|v| v * v).sum::<f32>() / row.len() as f32;
        1.0 / (mean + self.eps).sqrt()
    }
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (f32_slice("rms-norm", "x", s1, l1)?, f32_slice("rms-norm", "the weight", s2, l2)?);
        let d = w.len();
        let out = written(x.len(), |out| {
            out.par_chunks_mut(ROWS * d).zip(x.par_chunks(ROWS * d)).for_each(|(o, x)| {
                for (o, x) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)) {
                    let r = self.inverse_rms(x);
                    o.iter_mut().zip(x).zip(w).for_each(|((o, &x), &w)| {
                        o.write(x * r * w);
                    });
                }
            })
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, weight: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let d = weight.dim(0)?;
        let (dx, dw) = with_f32("rms-norm", "x", x, |x| {
            with_f32("rms-norm", "the weight", weight, |w| {
                with_f32("rms-norm", "the gradient", grad, |g| {
                    // y = x·r·w with r = (mean x² + eps)^-½; for u = g ⊙ w:
                    // dx = r·u − x·r³·(u·x)/d, dw = Σ_rows g ⊙ x·r.
                    let partial: Vec<Vec<f32>> = x
                        .par_chunks(ROWS * d)
                        .zip(g.par_chunks(ROWS * d))
                        .map(|(x, g)| {
                            let mut dw = vec![0f32; d];
                            for (x, g) in x.chunks_exact(d).zip(g.chunks_exact(d)) {
                                let r = self.inverse_rms(x);
                                dw.iter_mut().zip(x).zip(g).for_each(|((dw, &x), &g)| *dw += g * x * r);
                            }
                            dw
                        })
                        .collect();
                    let mut dw = vec![0f32; d];
                    for p in &partial {
                        dw.iter_mut().zip(p).for_each(|(a, b)| *a += b);
                    }
                    let dx = written(x.len(), |dx| {
                        dx.par_chunks_mut(ROWS * d).zip(x.par_chunks(ROWS * d).zip(g.par_chunks(ROWS * d))).for_each(|(dx, (x, g))| {
                            for ((dx, x), g) in dx.chunks_exact_mut(d).zip(x.chunks_exact(d)).zip(g.chunks_exact(d)) {
                                let r = self.inverse_rms(x);
                                let ux: f32 = g.iter().zip(w).zip(x).map(|((g, w), x)| g * w * x).sum();
                                let k = r * r * r * ux / d as f32;
                                dx.iter_mut().zip(g.iter().zip(w)).zip(x).for_each(|((dx, (&g, &w)), &x)| {
                                    dx.write(r * g * w - x * k);
                                });
                            }
                        })
                    });
                    Ok((dx, dw))
                })
            })
        })?;
        Ok((Some(Tensor::from_vec(dx, x.shape(), x.device())?), Some(Tensor::from_vec(dw, weight.shape(), weight.device())?)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Tensor};

    use crate::model::init::SplitMix64;
    use crate::model::test_tensors::{randn_var, relative_gap};

    /// Output and both gradients against the composition of candle ops.
    #[test]
    fn fused_rms_norm_matches_the_composition() {
        let mut rng = SplitMix64(2);
        let (x, w, r) = (randn_var(&mut rng, &[150, 24], 1.0), randn_var(&mut rng, &[24], 1.0), randn_var(&mut rng, &[150, 24], 1.0));
        let grads = |y: &Tensor| (y * r.as_tensor()).expect("mul").sum_all().expect("sum").backward().expect("backward");
        let fused = super::rms_norm(x.as_tensor(), w.as_tensor(), 1e-5).expect("fused").expect("applies");
        let scale = (x.as_tensor().sqr().expect("sqr").mean_keepdim(D::Minus1).expect("mean") + 1e-5).expect("eps").sqrt().expect("sqrt").recip().expect("recip");
        let plain = x.as_tensor().broadcast_mul(&scale).expect("mul").broadcast_mul(w.as_tensor()).expect("mul");
        assert!(relative_gap(&fused, &plain) < 1e-5);
        let (gf, gp) = (grads(&fused), grads(&plain));
        for v in [&x, &w] {
            let g = relative_gap(gf.get(v).expect("grad"), gp.get(v).expect("grad"));
            assert!(g < 1e-4, "gradient gap {g}");
        }
    }
}

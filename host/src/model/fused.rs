//! RMSNorm and rotary embeddings as single CPU ops with their backward, in f32: each was
//! a chain of candle ops (seven for the norm, six for the rotation, twice as many in the
//! backward), every one a pass and an allocation over the activations, nine norms and
//! eight rotations per step of a small model.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::matmul::fully_written_by;
use super::op_inputs::{f32_slice, with_f32};

/// Rows per parallel task.
const ROWS: usize = 64;

fn f32_cpu(t: &Tensor) -> bool {
    t.dtype() == DType::F32 && t.device().is_cpu()
}

/// A vector `fill` writes completely.
fn written(n: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    // SAFETY: every caller's `fill` writes all `n` elements (element by element, in
    // chunks that cover the output).
    unsafe { fully_written_by(n, fill) }
}

/// `x / sqrt(mean(x²) + eps) ⊙ w` over the last dimension of `x`, fused when `x` and
/// `w` are f32 on the CPU; `None` otherwise (the caller composes candle's ops).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Option<Tensor>> {
    if !(f32_cpu(x) && f32_cpu(weight)) || weight.rank() != 1 || x.dims().last() != Some(&weight.dim(0)?) {
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

/// Rotary embedding of `x` `[b, heads, s, d]` with tables `cos`, `sin` `[≥ s, d]` (each
/// half of a row repeats the angles), fused when all are f32 on the CPU; `None`
/// otherwise.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>> {
    if !(f32_cpu(x) && f32_cpu(cos) && f32_cpu(sin)) || x.rank() != 4 {
        return Ok(None);
    }
    let (_, _, s, d) = x.dims4()?;
    if d % 2 != 0 || cos.dims2()? != sin.dims2()? || cos.dim(0)? < s || cos.dim(1)? != d {
        return Ok(None);
    }
    let tables = |t: &Tensor| -> Result<Vec<f32>> { t.narrow(0, 0, s)?.contiguous()?.flatten_all()?.to_vec1::<f32>() };
    Ok(Some(x.contiguous()?.apply_op1(Rope { cos: tables(cos)?, sin: tables(sin)? })?))
}

struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl Rope {
    /// `sign = 1`: the rotation; `sign = -1`: its transpose (the backward).
    fn rotate(&self, x: &[f32], dims: (usize, usize), sign: f32) -> Vec<f32> {
        let (s, d) = dims;
        let half = d / 2;
        written(x.len(), |out| {
            out.par_chunks_mut(s * d).zip(x.par_chunks(s * d)).for_each(|(o, x)| {
                for (p, (o, x)) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
                    let (c, sn) = (&self.cos[p * d..(p + 1) * d], &self.sin[p * d..(p + 1) * d]);
                    let (x1, x2) = x.split_at(half);
                    let (o1, o2) = o.split_at_mut(half);
                    for i in 0..half {
                        // [x1, x2] → [x1·c − x2·s, x2·c + x1·s]; the transpose flips s's sign.
                        o1[i].write(x1[i] * c[i] - sign * x2[i] * sn[i]);
                        o2[i].write(x2[i] * c[half + i] + sign * x1[i] * sn[half + i]);
                    }
                }
            })
        })
    }
}

impl CustomOp1 for Rope {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[_, _, s, d] = layout.dims() else { candle_core::bail!("rope: shape {:?}", layout.dims()) };
        let out = self.rotate(f32_slice("rope", "x", storage, layout)?, (s, d), 1.0);
        Ok((CpuStorage::F32(out), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (_, _, s, d) = x.dims4()?;
        let dx = with_f32("rope", "the gradient", grad, |g| Ok(self.rotate(g, (s, d), -1.0)))?;
        Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{D, DType, Device, Tensor};

    use crate::model::config::{RopeConfig, RopeScaling};
    use crate::model::init::SplitMix64;
    use crate::model::rope::RopeTables;
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

    /// Output and gradient against `RopeTables::apply`'s composition.
    #[test]
    fn fused_rope_matches_the_composition() {
        let tables = RopeTables::new(&RopeConfig { theta: 10_000.0, scaling: RopeScaling::None }, 8, 12, DType::F32, &Device::Cpu).expect("tables");
        let mut rng = SplitMix64(4);
        let (x, r) = (randn_var(&mut rng, &[2, 3, 10, 8], 1.0), randn_var(&mut rng, &[2, 3, 10, 8], 1.0));
        let fused = tables.apply(x.as_tensor()).expect("fused");
        let plain = tables.apply_composed(x.as_tensor()).expect("plain");
        assert!(relative_gap(&fused, &plain) < 1e-6);
        let grad = |y: &Tensor| (y * r.as_tensor()).expect("mul").sum_all().expect("sum").backward().expect("backward").get(&x).expect("grad").clone();
        assert!(relative_gap(&grad(&fused), &grad(&plain)) < 1e-6);
    }
}

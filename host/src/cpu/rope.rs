//! Rotary embeddings as one CPU op with its backward, in f32: candle's composition was
//! six ops (twice as many in the backward), every one a pass and an allocation over the
//! activations, eight rotations per step of a small model.

use std::mem::MaybeUninit;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::matmul::fully_written_by;
use super::op_io::{f32_slice, is_f32_cpu, with_f32};

/// A vector `fill` writes completely.
fn written(n: usize, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> Vec<f32> {
    // SAFETY: every caller's `fill` writes all `n` elements (element by element, in
    // chunks that cover the output).
    unsafe { fully_written_by(n, fill) }
}

/// Rotary embedding of `x` `[b, heads, s, d]` with tables `cos`, `sin` `[≥ s, d]` (each
/// half of a row repeats the angles), fused when all are f32 on the CPU; `None`
/// otherwise.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>> {
    if !(is_f32_cpu(x) && is_f32_cpu(cos) && is_f32_cpu(sin)) || x.rank() != 4 {
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
    use candle_core::{DType, Device, Tensor};

    use crate::model::config::{RopeConfig, RopeScaling};
    use crate::model::init::SplitMix64;
    use crate::model::rope::RopeTables;
    use crate::model::test_tensors::{randn_var, relative_gap};

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

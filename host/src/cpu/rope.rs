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
    let Some((cos, sin)) = tables(cos, sin, s, d)? else { return Ok(None) };
    Ok(Some(x.contiguous()?.apply_op1(Rope { cos, sin, rows: None })?))
}

/// Rotary embedding of a projection's output `x` `[batch · seq, heads · d]` (rows are
/// tokens, as a linear layer leaves them), returned as `[batch, heads, seq, d]`: the
/// rotation and the move to head-major order in one pass, so attention gets its heads
/// without a transposed copy being made (and kept for the backward) first. `None` where
/// [`rope`] would be.
pub fn rope_to_heads(x: &Tensor, (batch, seq, heads): (usize, usize, usize), cos: &Tensor, sin: &Tensor) -> Result<Option<Tensor>> {
    if !(is_f32_cpu(x) && is_f32_cpu(cos) && is_f32_cpu(sin)) || x.rank() != 2 || heads == 0 || x.dim(0)? != batch * seq || !x.dim(1)?.is_multiple_of(heads) {
        return Ok(None);
    }
    let d = x.dim(1)? / heads;
    let Some((cos, sin)) = tables(cos, sin, seq, d)? else { return Ok(None) };
    Ok(Some(x.contiguous()?.apply_op1(Rope { cos, sin, rows: Some(TokenRows { batch, seq, heads }) })?))
}

/// The first `s` rows of the tables, flat, when they fit heads of width `d`.
fn tables(cos: &Tensor, sin: &Tensor, s: usize, d: usize) -> Result<Option<(Vec<f32>, Vec<f32>)>> {
    if !d.is_multiple_of(2) || cos.dims2()? != sin.dims2()? || cos.dim(0)? < s || cos.dim(1)? != d {
        return Ok(None);
    }
    let flat = |t: &Tensor| -> Result<Vec<f32>> { t.narrow(0, 0, s)?.contiguous()?.flatten_all()?.to_vec1::<f32>() };
    Ok(Some((flat(cos)?, flat(sin)?)))
}

/// The token-major input of [`rope_to_heads`].
#[derive(Clone, Copy)]
struct TokenRows {
    batch: usize,
    seq: usize,
    heads: usize,
}

struct Rope {
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// `Some`: the input is token rows and the output head-major.
    rows: Option<TokenRows>,
}

/// One head's vector at position `p` rotated into `o`; `sign = -1` rotates back.
#[inline(always)]
fn rotate_one(o: &mut [MaybeUninit<f32>], x: &[f32], c: &[f32], sn: &[f32], sign: f32) {
    let half = x.len() / 2;
    let (x1, x2) = x.split_at(half);
    let (o1, o2) = o.split_at_mut(half);
    for i in 0..half {
        // [x1, x2] → [x1·c − x2·s, x2·c + x1·s]; the transpose flips s's sign.
        o1[i].write(x1[i] * c[i] - sign * x2[i] * sn[i]);
        o2[i].write(x2[i] * c[half + i] + sign * x1[i] * sn[half + i]);
    }
}

impl Rope {
    fn angles(&self, p: usize, d: usize) -> (&[f32], &[f32]) {
        (&self.cos[p * d..(p + 1) * d], &self.sin[p * d..(p + 1) * d])
    }

    /// `sign = 1`: the rotation; `sign = -1`: its transpose (the backward).
    fn rotate(&self, x: &[f32], dims: (usize, usize), sign: f32) -> Vec<f32> {
        let (s, d) = dims;
        written(x.len(), |out| {
            out.par_chunks_mut(s * d).zip(x.par_chunks(s * d)).for_each(|(o, x)| {
                for (p, (o, x)) in o.chunks_exact_mut(d).zip(x.chunks_exact(d)).enumerate() {
                    let (c, sn) = self.angles(p, d);
                    rotate_one(o, x, c, sn, sign);
                }
            })
        })
    }

    /// Token rows `[b·s, h·d]` → rotated heads `[b, h, s, d]`.
    fn rows_to_heads(&self, x: &[f32], rows: TokenRows) -> Vec<f32> {
        let TokenRows { seq: s, heads: h, .. } = rows;
        let d = x.len() / (rows.batch * s * h).max(1);
        written(x.len(), |out| {
            out.par_chunks_mut(s * d).enumerate().for_each(|(bh, o)| {
                let (b, head) = (bh / h, bh % h);
                for (p, o) in o.chunks_exact_mut(d).enumerate() {
                    let start = ((b * s + p) * h + head) * d;
                    let (c, sn) = self.angles(p, d);
                    rotate_one(o, &x[start..start + d], c, sn, 1.0);
                }
            })
        })
    }

    /// The backward of [`Rope::rows_to_heads`]: head gradients `[b, h, s, d]` rotated
    /// back into token rows `[b·s, h·d]`.
    fn heads_to_rows(&self, g: &[f32], rows: TokenRows) -> Vec<f32> {
        let TokenRows { seq: s, heads: h, .. } = rows;
        let d = g.len() / (rows.batch * s * h).max(1);
        written(g.len(), |out| {
            out.par_chunks_mut(h * d).enumerate().for_each(|(row, o)| {
                let (b, p) = (row / s, row % s);
                let (c, sn) = self.angles(p, d);
                for (head, o) in o.chunks_exact_mut(d).enumerate() {
                    let start = ((b * h + head) * s + p) * d;
                    rotate_one(o, &g[start..start + d], c, sn, -1.0);
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
        let x = f32_slice("rope", "x", storage, layout)?;
        if let Some(rows) = self.rows {
            let d = layout.dims()[1] / rows.heads;
            return Ok((CpuStorage::F32(self.rows_to_heads(x, rows)), Shape::from((rows.batch, rows.heads, rows.seq, d))));
        }
        let &[_, _, s, d] = layout.dims() else { candle_core::bail!("rope: shape {:?}", layout.dims()) };
        Ok((CpuStorage::F32(self.rotate(x, (s, d), 1.0)), layout.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        if let Some(rows) = self.rows {
            let dx = with_f32("rope", "the gradient", grad, |g| Ok(self.heads_to_rows(g, rows)))?;
            return Ok(Some(Tensor::from_vec(dx, x.shape(), x.device())?));
        }
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

    /// From token rows `[b·s, h·d]` to rotated heads: the same values and gradient as
    /// moving to heads first (candle's transpose) and rotating.
    #[test]
    fn rope_to_heads_matches_transpose_then_rope() {
        let tables = RopeTables::new(&RopeConfig { theta: 10_000.0, scaling: RopeScaling::None }, 8, 12, DType::F32, &Device::Cpu).expect("tables");
        let mut rng = SplitMix64(6);
        let (b, s, h, d) = (2, 10, 3, 8);
        let (x, r) = (randn_var(&mut rng, &[b * s, h * d], 1.0), randn_var(&mut rng, &[b, h, s, d], 1.0));
        let fused = tables.apply_to_heads(x.as_tensor(), b, s, h).expect("fused");
        let heads = x.as_tensor().reshape((b, s, h, d)).expect("r").transpose(1, 2).expect("t").contiguous().expect("c");
        let plain = tables.apply_composed(&heads).expect("plain");
        assert_eq!(fused.dims(), &[b, h, s, d]);
        assert!(relative_gap(&fused, &plain) < 1e-6);
        let grad = |y: &Tensor| (y * r.as_tensor()).expect("mul").sum_all().expect("sum").backward().expect("backward").get(&x).expect("grad").clone();
        assert!(relative_gap(&grad(&fused), &grad(&plain)) < 1e-6);
    }
}

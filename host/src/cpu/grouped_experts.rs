//! All routed experts of a layer over the grouped rows, in f32 on the BLAS, as three
//! candle ops: the `[gate | up]` products and the down products as grouped linear ops
//! (one weight per expert's block of rows, `grouped_linear`) and the SwiGLU gate
//! between them. (Mixed precision runs the three chunk by chunk in one op,
//! [`super::fused_experts`].) The experts' weights enter concatenated (`[E·out, in]`);
//! the backward of the caller's `cat` hands each expert its rows of the gradient.

use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp1, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::matmul::{BlasLibrary, Precision, fully_written, grouped_linear};
use super::op_io::{f32_slice, with_f32};
use super::released_weights::WeightParts;
use super::swiglu;

/// The op's name in errors.
const OP: &str = "grouped experts";

/// Elements per parallel chunk of the element-wise gate.
const CHUNK: usize = 1 << 14;

/// `FFN_e(rows_e)` in f32 for every expert's block of `routed` (`counts[e]` rows
/// each, in order), with every expert of width `f`: `gate_up` holds each expert's gate
/// and up weights one above the other (`[E·2f, d]`), `down` the down weights
/// (`[E·d, f]`); f32 tensors on the CPU.
///
/// The weights come as their parts (`[g₀, u₀, g₁, u₁, …]` and `[down₀, down₁, …]`):
/// each concatenation is released after its product and rebuilt in the backward
/// ([`crate::cpu::released_weights`]), so the graph keeps no copy of the weights.
pub fn grouped_experts(library: Arc<BlasLibrary>, routed: &Tensor, counts: &[usize], gate_up: WeightParts, down: WeightParts) -> Result<Tensor> {
    let (gate_up_cat, down_cat) = (gate_up.concatenated()?, down.concatenated()?);
    let (e, d) = (counts.len(), gate_up_cat.dim(1)?);
    let width = gate_up_cat.dim(0)? / (2 * e).max(1);
    let gate_up = grouped_linear(routed, &gate_up_cat.reshape((e, 2 * width, d))?, counts, Precision::F32, library.clone(), Some(gate_up))?;
    let hidden = gate_up.apply_op1(PackedSwiGlu)?;
    grouped_linear(&hidden, &down_cat.reshape((e, d, width))?, counts, Precision::F32, library, Some(down))
}

/// `[g | u]` rows → `silu(g) ⊙ u`.
struct PackedSwiGlu;

impl CustomOp1 for PackedSwiGlu {
    fn name(&self) -> &'static str {
        "packed-swiglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[rows, two_f] = l.dims() else { candle_core::bail!("packed swiglu: shape {:?}", l.dims()) };
        let f = two_f / 2;
        let gu = f32_slice(OP, "gate-up rows", s, l)?;
        let rows_per_chunk = (CHUNK / f.max(1)).max(1);
        // SAFETY: every row of the output is written from its `[g | u]` row.
        let out = unsafe {
            fully_written::<candle_core::Error>(rows * f, |out| {
                out.par_chunks_mut(rows_per_chunk * f).zip(gu.par_chunks(rows_per_chunk * two_f)).for_each(|(o, gu)| {
                    for (o, gu) in o.chunks_exact_mut(f).zip(gu.chunks_exact(two_f)) {
                        let (g, u) = gu.split_at(f);
                        swiglu::forward_slice(g, u, o);
                    }
                });
                Ok(())
            })?
        };
        Ok((CpuStorage::F32(out), Shape::from((rows, f))))
    }

    fn bwd(&self, gu: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        let (rows, two_f) = gu.dims2()?;
        let f = two_f / 2;
        let rows_per_chunk = (CHUNK / f.max(1)).max(1);
        // SAFETY: every row's two halves are written by `backward_slice`.
        let dgu = with_f32(OP, "gate-up rows", gu, |gu| {
            with_f32(OP, "gradient", grad, |grad| unsafe {
                fully_written(rows * two_f, |dgu| {
                    dgu.par_chunks_mut(rows_per_chunk * two_f).zip(gu.par_chunks(rows_per_chunk * two_f).zip(grad.par_chunks(rows_per_chunk * f))).for_each(|(dgu, (gu, grad))| {
                        for ((dgu, gu), d) in dgu.chunks_exact_mut(two_f).zip(gu.chunks_exact(two_f)).zip(grad.chunks_exact(f)) {
                            let (dg, du) = dgu.split_at_mut(f);
                            let (g, u) = gu.split_at(f);
                            swiglu::backward_slice(g, u, d, dg, du);
                        }
                    });
                    Ok(())
                })
            })
        })?;
        Ok(Some(Tensor::from_vec(dgu, (rows, two_f), gu.device())?))
    }
}

//! `y = x W_eᵀ` for consecutive row blocks of `x`, each with its own weight `W_e`, as one
//! candle op on the BLAS with a backward that walks the same blocks. A linear layer is
//! the one-block case; an MoE layer's experts are the blocks of their grouped rows.
//!
//! Running each block as its own `narrow` of the rows made candle's backward build a
//! zero-padded copy of the whole `[rows, in]` gradient per block and add them up (a
//! third of an MoE layer's time in memset, copies and adds). Here one op sees every
//! block, so every gradient is written once, in place.

use std::mem::MaybeUninit;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::gemm::{Accumulate, GemmInput, GemmShape, Operand, gemm_serial, gemm_strided};
use super::library::BlasLibrary;
use super::{MatmulError, Precision, fully_written, to_bf16_bits};
use crate::cpu::op_io::{f32_slice, with_f32};
use crate::cpu::released_weights::{self, WeightParts};
use crate::cpu::swiglu;

/// The op's name in errors.
const OP: &str = "grouped linear";

/// What a grouped linear op multiplies: its input rows, or a function of them that it
/// makes in the forward and again in the backward instead of keeping it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RowInput {
    /// The rows as they are.
    Plain,
    /// `silu(g) ⊙ u` of `[g | u]` rows (twice the weights' input width): the experts'
    /// gate in front of their down products.
    PackedSwiGlu,
}

/// `x [N, in]` times the weights `w [E, out, in]` of `counts[e]` consecutive rows each
/// (the counts sum to `N`) → `[N, out]`; f32 CPU tensors. With `parts` (what `w` was
/// concatenated from), `w`'s values are released once the product is made and the
/// backward concatenates the parts again ([`crate::cpu::released_weights`]); with
/// [`RowInput::PackedSwiGlu`], `x` is `[N, 2·in]` and the op multiplies its gate.
pub(crate) fn grouped_linear(x: &Tensor, w: &Tensor, counts: &[usize], precision: Precision, library: Arc<BlasLibrary>, parts: Option<WeightParts>, input: RowInput) -> Result<Tensor> {
    if input == RowInput::PackedSwiGlu && precision != Precision::F32 {
        candle_core::bail!("{OP}: the packed SwiGLU input is for f32 products");
    }
    let blocks = Blocks { counts: counts.to_vec(), precision, library };
    let w = w.contiguous()?;
    let release = parts.is_some();
    let y = x.contiguous()?.apply_op2(&w, GroupedLinear { blocks, parts, input })?;
    if release {
        released_weights::release(&w)?;
    }
    Ok(y)
}

/// The row blocks and how to multiply them.
struct Blocks {
    counts: Vec<usize>,
    precision: Precision,
    library: Arc<BlasLibrary>,
}

/// The op. In mixed precision it rounds `x` and `w` to bf16 in its forward and again in
/// its backward rather than keep the copies: the graph holds the f32 values anyway, and
/// at a real model's shape the kept copies of attention's inputs and weights were
/// 6.5 MB a layer (0.2 GiB of a 30-layer step) for a conversion of about 1 % of it.
struct GroupedLinear {
    blocks: Blocks,
    /// Where the backward gets released weights from.
    parts: Option<WeightParts>,
    /// What the rows are multiplied as.
    input: RowInput,
}

fn convert(inputs: &[&[f32]]) -> Vec<Vec<u16>> {
    inputs.iter().map(|v| to_bf16_bits(v)).collect()
}

fn err(e: MatmulError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

/// The GEMM entry a block uses: split over the threads, or on the calling thread.
type GemmFn<T> = for<'a, 'b, 'c> fn(&BlasLibrary, GemmShape, Operand<'a, T>, Operand<'b, T>, Accumulate, &'c mut [MaybeUninit<f32>], usize) -> std::result::Result<(), MatmulError>;

/// One block's piece of an output.
type Piece<'a> = &'a mut [MaybeUninit<f32>];

/// `data` cut into consecutive pieces of `counts[e] · row_len` elements, one per block.
pub(crate) fn split_rows<'a, X>(counts: &[usize], mut data: &'a mut [X], row_len: usize) -> Vec<&'a mut [X]> {
    counts
        .iter()
        .map(|&n| {
            let (block, rest) = std::mem::take(&mut data).split_at_mut(n * row_len);
            data = rest;
            block
        })
        .collect()
}

impl Blocks {
    /// Runs `task(gemm, block, first row, rows, piece)` for every block with rows. With at
    /// least two such blocks per thread the blocks run in parallel, each product on one
    /// thread (no operand is packed twice); otherwise one after another, each product
    /// split over the threads.
    fn for_each<T: GemmInput, P: Send>(&self, pieces: Vec<P>, task: impl Fn(GemmFn<T>, usize, usize, usize, P) -> Result<()> + Sync) -> Result<()> {
        let starts: Vec<usize> = self.counts.iter().scan(0, |s, &n| Some(std::mem::replace(s, *s + n))).collect();
        let blocks: Vec<(usize, P)> = pieces.into_iter().enumerate().filter(|(e, _)| self.counts[*e] > 0).collect();
        if blocks.len() >= 2 * rayon::current_num_threads() {
            blocks.into_par_iter().try_for_each(|(e, piece)| task(gemm_serial::<T>, e, starts[e], self.counts[e], piece))
        } else {
            blocks.into_iter().try_for_each(|(e, piece)| task(gemm_strided::<T>, e, starts[e], self.counts[e], piece))
        }
    }

    /// `y_e = x_e W_eᵀ` per block.
    fn forward<T: GemmInput>(&self, x: &[T], w: &[T], (input, output): (usize, usize), y: &mut [MaybeUninit<f32>]) -> Result<()> {
        let per_weight = output * input;
        self.for_each(split_rows(&self.counts, y, output), |gemm: GemmFn<T>, e, start, n, y: Piece<'_>| {
            let rows = Operand { data: &x[start * input..(start + n) * input], ld: input };
            let w = Operand { data: &w[e * per_weight..(e + 1) * per_weight], ld: input };
            gemm(&self.library, GemmShape { m: n, n: output, k: input, transpose_a: false, transpose_b: true }, rows, w, Accumulate::Overwrite, y, output).map_err(err)
        })
    }

    /// `dx_e = dy_e W_e`, `dW_e = dy_eᵀ x_e` per block; blocks without rows get zero
    /// weight gradients.
    #[allow(clippy::too_many_arguments)]
    fn backward<T: GemmInput>(&self, x: &[T], w: &[T], dy: &[T], (input, output): (usize, usize), dx: &mut [MaybeUninit<f32>], dw: &mut [MaybeUninit<f32>]) -> Result<()> {
        let per_weight = output * input;
        for (e, _) in self.counts.iter().enumerate().filter(|(_, n)| **n == 0) {
            dw[e * per_weight..(e + 1) * per_weight].fill(MaybeUninit::new(0.0));
        }
        let pieces: Vec<_> = split_rows(&self.counts, dx, input).into_iter().zip(dw.chunks_mut(per_weight)).collect();
        self.for_each(pieces, |gemm: GemmFn<T>, e, start, n, (dx, dw): (Piece<'_>, Piece<'_>)| {
            let g = Operand { data: &dy[start * output..(start + n) * output], ld: output };
            let w = Operand { data: &w[e * per_weight..(e + 1) * per_weight], ld: input };
            gemm(&self.library, GemmShape { m: n, n: input, k: output, transpose_a: false, transpose_b: false }, g, w, Accumulate::Overwrite, dx, input).map_err(err)?;
            let rows = Operand { data: &x[start * input..(start + n) * input], ld: input };
            gemm(&self.library, GemmShape { m: output, n: input, k: n, transpose_a: true, transpose_b: false }, g, rows, Accumulate::Overwrite, dw, input).map_err(err)
        })
    }
}

impl GroupedLinear {
    /// The width of the op's input rows for weights `input` wide.
    fn row_width(&self, input: usize) -> usize {
        match self.input {
            RowInput::Plain => input,
            RowInput::PackedSwiGlu => 2 * input,
        }
    }

    /// What the op multiplies when it is not the rows themselves (the gate of
    /// `[g | u]` rows, `input` wide).
    fn gated(&self, rows: &[f32], input: usize) -> Option<Vec<f32>> {
        (self.input == RowInput::PackedSwiGlu).then(|| swiglu::packed_forward(rows, input))
    }

    /// Runs `f` on the weights: `w`'s values, or the parts' when the op released `w`.
    fn with_weights<R>(&self, w: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
        match &self.parts {
            Some(parts) => parts.with_values(OP, f),
            None => with_f32(OP, "the weights", w, f),
        }
    }
}

impl CustomOp2 for GroupedLinear {
    fn name(&self) -> &'static str {
        "grouped-linear"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (&[rows, row_width], &[_, output, input]) = (l1.dims(), l2.dims()) else { candle_core::bail!("{OP}: shapes {:?} and {:?}", l1.dims(), l2.dims()) };
        if row_width != self.row_width(input) || self.blocks.counts.iter().sum::<usize>() != rows || l2.dims()[0] != self.blocks.counts.len() {
            candle_core::bail!("{OP}: rows {:?} of {:?} do not fit weights {:?}", self.blocks.counts, l1.dims(), l2.dims());
        }
        let (rows_in, w) = (f32_slice(OP, "the rows", s1, l1)?, f32_slice(OP, "the weights", s2, l2)?);
        let gated = self.gated(rows_in, input);
        let x = gated.as_deref().unwrap_or(rows_in);
        let b = &self.blocks;
        // SAFETY: the blocks cover every row (their counts sum to `rows`) and each block
        // overwrites its rows.
        let y = unsafe {
            fully_written(rows * output, |y| match b.precision {
                Precision::F32 => b.forward(x, w, (input, output), y),
                Precision::Bf16 => {
                    let c = convert(&[x, w]);
                    b.forward(&c[0], &c[1], (input, output), y)
                }
            })?
        };
        Ok((CpuStorage::F32(y), Shape::from((rows, output))))
    }

    /// Gradients come back without a graph: a tracked one would chain the optimizer's
    /// moments to every earlier step's graph.
    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, row_width) = x.dims2()?;
        let (output, input) = (w.dim(1)?, w.dim(2)?);
        let b = &self.blocks;
        let (dx, dw) = with_f32(OP, "the rows", x, |rows_in| {
            let gated = self.gated(rows_in, input);
            let x = gated.as_deref().unwrap_or(rows_in);
            self.with_weights(w, |w| {
                with_f32(OP, "the gradient", dy, |dy| {
                    let mut dw = Vec::with_capacity(w.len());
                    // SAFETY: dx's rows are all overwritten by their blocks; each block's
                    // weight gradient is overwritten by its GEMM or zeroed when it has no rows.
                    let dx = unsafe {
                        fully_written(rows * input, |dx| {
                            let dw = &mut dw.spare_capacity_mut()[..w.len()];
                            match b.precision {
                                Precision::F32 => b.backward(x, w, dy, (input, output), dx, dw),
                                Precision::Bf16 => {
                                    let c = convert(&[x, w]);
                                    b.backward(&c[0], &c[1], &to_bf16_bits(dy), (input, output), dx, dw)
                                }
                            }
                        })?
                    };
                    // SAFETY: as above.
                    unsafe { dw.set_len(w.len()) };
                    Ok((dx, dw))
                })
            })
            .map(|(dx, dw)| match self.input {
                RowInput::Plain => (dx, dw),
                RowInput::PackedSwiGlu => (swiglu::packed_backward(rows_in, &dx, input), dw),
            })
        })?;
        let dev = x.device();
        Ok((Some(Tensor::from_vec(dx, (rows, row_width), dev)?), Some(Tensor::from_vec(dw, w.shape(), dev)?)))
    }
}

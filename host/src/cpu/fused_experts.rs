//! All routed experts of a layer in mixed precision as one candle op over the grouped
//! rows: for each expert's block, `[g | u] = x W_guᵀ`, `h = silu(g) ⊙ u`,
//! `y = h W_downᵀ`, and the backward of the three, with bf16 operands and f32
//! accumulation.
//!
//! With bf16 products on AMX the layer's time was memory traffic, not arithmetic: MKL's
//! bf16 GEMM writing a cold `[rows, 2f]` f32 output ran at half the speed of the same
//! GEMM into a warm buffer. So the rows go through in chunks of a few hundred: each
//! chunk's f32 products land in a per-thread buffer that stays in cache and are used
//! there (the SwiGLU, the rounding to bf16) before the next product reads them; each
//! expert's weights are packed for the BLAS once, not once per product. The activations
//! kept for the backward (`[g | u]`, `h`) and the `[g | u]` gradient are stored in bf16,
//! as under PyTorch's autocast. (In f32 the products are compute-bound and the separate
//! grouped ops measured faster: [`super::grouped_experts`] keeps them.)

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::matmul::{Accumulate, BlasLibrary, GemmInput, GemmShape, MatmulError, Operand, PackedB, as_uninit, gemm_serial, gemm_strided, split_rows, store_bf16, to_bf16_bits};
use super::op_io::{f32_slice, with_f32};
use super::released_weights::{self, WeightParts};
use super::swiglu;

/// The op's name in errors.
const OP: &str = "fused experts";

/// `FFN_e(rows_e)` in mixed precision for every expert's block of `routed` (`counts[e]`
/// rows each, in order): `gate_up` holds each expert's gate and up weights one above
/// the other (`[E·2f, d]`), `down` the down weights (`[E·d, f]`); f32 tensors on the
/// CPU, multiplied as bf16 with f32 accumulation. The weights come as their parts, as
/// in [`super::grouped_experts::grouped_experts`]: the f32 concatenations are released
/// once the forward has run, and the backward rounds the parts to bf16 again rather
/// than keep the forward's bf16 copies (21 MB a layer at a real model's shape, 0.6 GiB
/// of its step).
pub fn fused_experts(library: Arc<BlasLibrary>, routed: &Tensor, counts: &[usize], gate_up: WeightParts, down: WeightParts) -> Result<Tensor> {
    let (gate_up_cat, down_cat) = (gate_up.concatenated()?, down.concatenated()?);
    let y = routed.contiguous()?.apply_op3(&gate_up_cat, &down_cat, FusedExperts::new(counts, library, gate_up, down))?;
    released_weights::release(&gate_up_cat)?;
    released_weights::release(&down_cat)?;
    Ok(y)
}

/// Rows per chunk: a chunk's `[rows, 2f]` f32 products (2.9 MB at f = 1408) stay
/// within the core's L2 and L3 share while they are used.
const CHUNK_ROWS: usize = 256;

/// bf16 bit patterns → f32.
fn widen(values: &[u16], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(values) {
        *o = f32::from_bits((v as u32) << 16);
    }
}

/// One `B` operand of many products: packed once where the library can pack, else
/// multiplied as it is stored.
enum SharedB<'a, T> {
    Packed(PackedB<T>),
    Stored { b: Operand<'a, T>, k: usize, n: usize, transpose_b: bool },
}

impl<'a, T: GemmInput> SharedB<'a, T> {
    fn new(lib: &BlasLibrary, b: Operand<'a, T>, (k, n): (usize, usize), transpose_b: bool, rows: usize) -> Result<Self> {
        if k == 0 || n == 0 {
            return Ok(SharedB::Stored { b, k, n, transpose_b });
        }
        Ok(match PackedB::new(lib, b, (k, n), transpose_b, rows).map_err(err)? {
            Some(packed) => SharedB::Packed(packed),
            None => SharedB::Stored { b, k, n, transpose_b },
        })
    }

    /// `C = op(A) · op(B)` on the calling thread, `op(A)` being `m × k`.
    fn multiply(&self, lib: &BlasLibrary, a: Operand<'_, T>, m: usize, transpose_a: bool, c: &mut [MaybeUninit<f32>], ldc: usize) -> Result<()> {
        match self {
            SharedB::Packed(packed) => packed.multiply(lib, a, m, transpose_a, c, ldc),
            SharedB::Stored { b, k, n, transpose_b } => gemm_serial(lib, GemmShape { m, n: *n, k: *k, transpose_a, transpose_b: *transpose_b }, a, *b, Accumulate::Overwrite, c, ldc),
        }
        .map_err(err)
    }
}

/// An expert's two weights as the `B` operands of one pass (forward or backward).
type WeightPair<'a> = (SharedB<'a, u16>, SharedB<'a, u16>);

/// One output's piece for one task.
type Piece<'a> = &'a mut [MaybeUninit<f32>];

/// The sizes: `rows` grouped rows of width `d`, experts of width `f`.
#[derive(Clone, Copy, Debug)]
struct Dims {
    rows: usize,
    d: usize,
    f: usize,
}

/// A run of consecutive rows of one expert.
#[derive(Clone, Copy, Debug)]
struct Chunk {
    expert: usize,
    start: usize,
    rows: usize,
}

/// What the forward keeps for the backward: the bf16 copy of the rows, and per row
/// `[g | u]` and `h` in bf16.
struct Saved {
    x: Vec<u16>,
    gate_up: Vec<u16>,
    hidden: Vec<u16>,
}

/// `FFN_e(rows_e)` in mixed precision for every expert's block of rows: inputs
/// `x [N, d]`, the concatenated `[gate | up]` weights `[E·2f, d]` and down weights
/// `[E·d, f]` (each expert's matrices one above the other), f32 on the CPU.
struct FusedExperts {
    counts: Vec<usize>,
    library: Arc<BlasLibrary>,
    saved: Mutex<Option<Saved>>,
    /// What the `[gate | up]` and down operands were concatenated from (they are
    /// released after the forward).
    parts: [WeightParts; 2],
}

impl FusedExperts {
    /// The op for `counts[e]` consecutive rows per expert.
    fn new(counts: &[usize], library: Arc<BlasLibrary>, gate_up: WeightParts, down: WeightParts) -> Self {
        Self { counts: counts.to_vec(), library, saved: Mutex::new(None), parts: [gate_up, down] }
    }

    /// Every expert's rows cut into chunks of at most [`CHUNK_ROWS`], evenly.
    fn chunks(&self) -> Vec<Chunk> {
        let mut chunks = Vec::new();
        let mut start = 0;
        for (expert, &n) in self.counts.iter().enumerate() {
            let pieces = n.div_ceil(CHUNK_ROWS);
            for i in 0..pieces {
                let (a, b) = (i * n / pieces, (i + 1) * n / pieces);
                chunks.push(Chunk { expert, start: start + a, rows: b - a });
            }
            start += n;
        }
        chunks
    }

    /// `make(e)` for every expert with rows (in parallel), `None` for the others.
    fn shared_weights<'a>(&self, make: impl Fn(usize) -> Result<WeightPair<'a>> + Sync) -> Result<Vec<Option<WeightPair<'a>>>> {
        (0..self.counts.len()).into_par_iter().map(|e| if self.counts[e] == 0 { Ok(None) } else { make(e).map(Some) }).collect()
    }

    /// The forward on bf16 inputs: writes `y`, returns `[g | u]` and `h`.
    fn forward(&self, dims: Dims, x: &[u16], w_gu: &[u16], w_down: &[u16], y: &mut [MaybeUninit<f32>]) -> Result<(Vec<u16>, Vec<u16>)> {
        let Dims { rows, d, f } = dims;
        let chunks = self.chunks();
        let mut gate_up: Vec<u16> = Vec::with_capacity(rows * 2 * f);
        let mut hidden: Vec<u16> = Vec::with_capacity(rows * f);
        let sizes: Vec<usize> = chunks.iter().map(|c| c.rows).collect();
        let pieces = split_rows(&sizes, y, d).into_iter().zip(split_rows(&sizes, &mut gate_up.spare_capacity_mut()[..rows * 2 * f], 2 * f)).zip(split_rows(
            &sizes,
            &mut hidden.spare_capacity_mut()[..rows * f],
            f,
        ));
        let work: Vec<_> = chunks.into_iter().zip(pieces).collect();
        let weights = self.shared_weights(|e| {
            let lib = &self.library;
            let gate_up = SharedB::new(lib, Operand { data: &w_gu[e * 2 * f * d..(e + 1) * 2 * f * d], ld: d }, (d, 2 * f), true, CHUNK_ROWS)?;
            Ok((gate_up, SharedB::new(lib, Operand { data: &w_down[e * d * f..(e + 1) * d * f], ld: f }, (f, d), true, CHUNK_ROWS)?))
        })?;
        work.into_par_iter().try_for_each_init(
            || (vec![0f32; CHUNK_ROWS * 2 * f], vec![0f32; f]),
            |(products, h_row), (chunk, ((y, gate_up), hidden))| {
                let Chunk { expert, start, rows } = chunk;
                let products = &mut products[..rows * 2 * f];
                let x_rows = Operand { data: &x[start * d..(start + rows) * d], ld: d };
                let (gate_up_w, down_w) = weights_of(&weights, expert)?;
                gate_up_w.multiply(&self.library, x_rows, rows, false, as_uninit(products), 2 * f)?;
                for ((gu, gate_up), hidden) in products.chunks_exact(2 * f).zip(gate_up.chunks_exact_mut(2 * f)).zip(hidden.chunks_exact_mut(f)) {
                    let (g, u) = gu.split_at(f);
                    swiglu::forward_slice(g, u, as_uninit(h_row));
                    store_bf16(h_row, hidden);
                    store_bf16(gu, gate_up);
                }
                // SAFETY: every row of this chunk's hidden piece was stored just above.
                let hidden = unsafe { assume_init(hidden) };
                down_w.multiply(&self.library, Operand { data: hidden, ld: f }, rows, false, y, d)
            },
        )?;
        // SAFETY: the chunks cover every row, and each stored its rows of both.
        unsafe {
            gate_up.set_len(rows * 2 * f);
            hidden.set_len(rows * f);
        }
        Ok((gate_up, hidden))
    }

    /// The backward on the bf16 inputs and activations: writes `dx [N, d]`, `dw_gu [E·2f, d]` and
    /// `dw_down [E·d, f]`.
    #[allow(clippy::too_many_arguments)]
    fn backward(
        &self,
        dims: Dims,
        saved: &Saved,
        [w_gu, w_down]: [&[u16]; 2],
        dy: &[u16],
        dx: &mut [MaybeUninit<f32>],
        dw_gu: &mut [MaybeUninit<f32>],
        dw_down: &mut [MaybeUninit<f32>],
    ) -> Result<()> {
        let Dims { rows, d, f } = dims;
        let x = &saved.x;
        let chunks = self.chunks();
        let sizes: Vec<usize> = chunks.iter().map(|c| c.rows).collect();
        let mut d_gate_up: Vec<u16> = Vec::with_capacity(rows * 2 * f);
        let pieces = split_rows(&sizes, dx, d).into_iter().zip(split_rows(&sizes, &mut d_gate_up.spare_capacity_mut()[..rows * 2 * f], 2 * f));
        let work: Vec<_> = chunks.into_iter().zip(pieces).collect();
        let weights = self.shared_weights(|e| {
            let lib = &self.library;
            let down = SharedB::new(lib, Operand { data: &w_down[e * d * f..(e + 1) * d * f], ld: f }, (d, f), false, CHUNK_ROWS)?;
            Ok((down, SharedB::new(lib, Operand { data: &w_gu[e * 2 * f * d..(e + 1) * 2 * f * d], ld: d }, (2 * f, d), false, CHUNK_ROWS)?))
        })?;
        work.into_par_iter().try_for_each_init(
            || (vec![0f32; CHUNK_ROWS * f], vec![0f32; 2 * f], vec![0f32; 2 * f]),
            |(dh, gu_row, dgu_row), (chunk, (dx, d_gate_up))| {
                let Chunk { expert, start, rows } = chunk;
                let dh = &mut dh[..rows * f];
                let dy_rows = Operand { data: &dy[start * d..(start + rows) * d], ld: d };
                let (down_w, gate_up_w) = weights_of(&weights, expert)?;
                down_w.multiply(&self.library, dy_rows, rows, false, as_uninit(dh), f)?;
                let kept = &saved.gate_up[start * 2 * f..(start + rows) * 2 * f];
                for ((gu, dh), out) in kept.chunks_exact(2 * f).zip(dh.chunks_exact(f)).zip(d_gate_up.chunks_exact_mut(2 * f)) {
                    widen(gu, gu_row);
                    let (g, u) = gu_row.split_at(f);
                    let (dg, du) = as_uninit(dgu_row).split_at_mut(f);
                    swiglu::backward_slice(g, u, dh, dg, du);
                    store_bf16(dgu_row, out);
                }
                // SAFETY: every row of this chunk's gradient piece was stored just above.
                let d_gate_up = unsafe { assume_init(d_gate_up) };
                gate_up_w.multiply(&self.library, Operand { data: d_gate_up, ld: 2 * f }, rows, false, dx, d)
            },
        )?;
        // SAFETY: the chunks cover every row, and each stored its rows.
        unsafe { d_gate_up.set_len(rows * 2 * f) };

        // Weight gradients, one pair of products per expert over all its rows.
        let starts: Vec<usize> = self.counts.iter().scan(0, |s, &n| Some(std::mem::replace(s, *s + n))).collect();
        let per_expert: Vec<_> = dw_gu.chunks_mut(2 * f * d).zip(dw_down.chunks_mut(d * f)).enumerate().collect();
        let busy = self.counts.iter().filter(|&&n| n > 0).count();
        let in_parallel = busy >= 2 * rayon::current_num_threads();
        let weight_grads = |(e, (dw_gu, dw_down)): (usize, (Piece<'_>, Piece<'_>))| -> Result<()> {
            let (start, n) = (starts[e], self.counts[e]);
            if n == 0 {
                dw_gu.fill(MaybeUninit::new(0.0));
                dw_down.fill(MaybeUninit::new(0.0));
                return Ok(());
            }
            let dy_rows = Operand { data: &dy[start * d..(start + n) * d], ld: d };
            let h_rows = Operand { data: &saved.hidden[start * f..(start + n) * f], ld: f };
            let dgu_rows = Operand { data: &d_gate_up[start * 2 * f..(start + n) * 2 * f], ld: 2 * f };
            let x_rows = Operand { data: &x[start * d..(start + n) * d], ld: d };
            if in_parallel {
                // One thread per expert: its rows packed once as B (faster than MKL's own
                // packing inside a plain call).
                SharedB::new(&self.library, h_rows, (n, f), false, d)?.multiply(&self.library, dy_rows, d, true, dw_down, f)?;
                SharedB::new(&self.library, x_rows, (n, d), false, 2 * f)?.multiply(&self.library, dgu_rows, 2 * f, true, dw_gu, d)
            } else {
                let lib = &self.library;
                gemm_strided(lib, GemmShape { m: d, n: f, k: n, transpose_a: true, transpose_b: false }, dy_rows, h_rows, Accumulate::Overwrite, dw_down, f).map_err(err)?;
                gemm_strided(lib, GemmShape { m: 2 * f, n: d, k: n, transpose_a: true, transpose_b: false }, dgu_rows, x_rows, Accumulate::Overwrite, dw_gu, d).map_err(err)
            }
        };
        if in_parallel { per_expert.into_par_iter().try_for_each(weight_grads) } else { per_expert.into_iter().try_for_each(weight_grads) }
    }

    /// Runs the forward on f32 rows (rounded to bf16) and bf16 weights; returns `y` and
    /// the state for the backward.
    fn run_forward(&self, dims: Dims, x: &[f32], w_gu: &[u16], w_down: &[u16]) -> Result<(Vec<f32>, Saved)> {
        let mut y = Vec::with_capacity(dims.rows * dims.d);
        let x = to_bf16_bits(x);
        let (gate_up, hidden) = self.forward(dims, &x, w_gu, w_down, &mut y.spare_capacity_mut()[..dims.rows * dims.d])?;
        let saved = Saved { x, gate_up, hidden };
        // SAFETY: the chunks cover every row of `y`; each chunk's down product overwrote its rows.
        unsafe { y.set_len(dims.rows * dims.d) };
        Ok((y, saved))
    }

    fn dims(&self, x: &[usize], w_gu: &[usize], w_down: &[usize]) -> Result<Dims> {
        let experts = self.counts.len();
        match (x, w_gu, w_down) {
            (&[rows, d], &[gate_up_rows, d1], &[down_rows, f]) if down_rows == experts * d && gate_up_rows == experts * 2 * f && d1 == d && self.counts.iter().sum::<usize>() == rows => {
                Ok(Dims { rows, d, f })
            }
            _ => candle_core::bail!("{OP}: rows {:?} of {x:?} do not fit gate-up weights {w_gu:?} and down weights {w_down:?}", self.counts),
        }
    }
}

impl CustomOp3 for FusedExperts {
    fn name(&self) -> &'static str {
        "fused-experts"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let dims = self.dims(l1.dims(), l2.dims(), l3.dims())?;
        let (x, w_gu, w_down) = (f32_slice(OP, "the rows", s1, l1)?, f32_slice(OP, "the gate-up weights", s2, l2)?, f32_slice(OP, "the down weights", s3, l3)?);
        let (y, saved) = self.run_forward(dims, x, &to_bf16_bits(w_gu), &to_bf16_bits(w_down))?;
        *self.saved.lock().unwrap_or_else(|e| e.into_inner()) = Some(saved);
        Ok((CpuStorage::F32(y), Shape::from((dims.rows, dims.d))))
    }

    /// Gradients come back without a graph: a tracked one would chain the optimizer's
    /// moments to every earlier step's graph.
    fn bwd(&self, x: &Tensor, w_gu: &Tensor, w_down: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dims = self.dims(x.dims(), w_gu.dims(), w_down.dims())?;
        let Dims { rows, d, f } = dims;
        let experts = self.counts.len();
        // The weights in bf16 again, from their parts (the concatenations were released).
        let weights = [self.parts[0].bf16_values(OP)?, self.parts[1].bf16_values(OP)?];
        let kept = self.saved.lock().unwrap_or_else(|e| e.into_inner()).take();
        let saved = match kept {
            Some(saved) => saved,
            // The forward's activations were used already: made again.
            None => with_f32(OP, "the rows", x, |x| self.run_forward(dims, x, &weights[0], &weights[1]))?.1,
        };
        let (dx, dw_gu, dw_down) = with_f32(OP, "the gradient", dy, |dy| {
            let (mut dx, mut dw_gu, mut dw_down) = (Vec::with_capacity(rows * d), Vec::with_capacity(experts * 2 * f * d), Vec::with_capacity(experts * d * f));
            let outs = (&mut dx.spare_capacity_mut()[..rows * d], &mut dw_gu.spare_capacity_mut()[..experts * 2 * f * d], &mut dw_down.spare_capacity_mut()[..experts * d * f]);
            self.backward(dims, &saved, [&weights[0], &weights[1]], &to_bf16_bits(dy), outs.0, outs.1, outs.2)?;
            // SAFETY: `backward` overwrote every row of dx and every expert's weight
            // gradients (zeros for experts without rows).
            unsafe {
                dx.set_len(rows * d);
                dw_gu.set_len(experts * 2 * f * d);
                dw_down.set_len(experts * d * f);
            }
            Ok((dx, dw_gu, dw_down))
        })?;
        let dev = x.device();
        Ok((Some(Tensor::from_vec(dx, (rows, d), dev)?), Some(Tensor::from_vec(dw_gu, w_gu.shape(), dev)?), Some(Tensor::from_vec(dw_down, w_down.shape(), dev)?)))
    }
}

fn err(e: MatmulError) -> candle_core::Error {
    candle_core::Error::Msg(format!("{OP}: {e}"))
}

/// Expert `e`'s packed weights (every expert with rows has them).
fn weights_of<'w, 'a>(weights: &'w [Option<WeightPair<'a>>], e: usize) -> Result<&'w WeightPair<'a>> {
    weights[e].as_ref().ok_or_else(|| candle_core::Error::Msg(format!("{OP}: expert {e} has rows but no packed weights")))
}

/// A written piece as initialised values.
///
/// # Safety
/// Every element of `piece` must have been written.
unsafe fn assume_init<T>(piece: &mut [MaybeUninit<T>]) -> &[T] {
    // SAFETY: same layout; the caller guarantees every element is initialised.
    unsafe { &*(piece as *const [MaybeUninit<T>] as *const [T]) }
}

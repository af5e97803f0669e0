//! All routed experts of a layer as three candle ops over the grouped rows, on the BLAS:
//! `[gate | up]` products, the SwiGLU gate, and the down product, each with a backward
//! that walks the experts' row blocks.
//!
//! Running each expert as its own `narrow` of the grouped rows made candle's backward
//! build a zero-padded copy of the whole `[rows, d]` gradient per expert and add them up
//! (a third of the layer's time in memset, copies and adds). Here each op sees every
//! expert, so every gradient is written once, in place. The experts' weights enter
//! stacked (`[E, …]`); the stack's backward hands each expert its slice as a view.

use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use crate::model::ffn::Ffn;
use crate::model::matmul::{self, Accumulate, ActiveMatmul, BlasLibrary, GemmInput, GemmShape, Operand, Precision, fully_written, gemm_serial, gemm_strided, to_bf16_bits};
use crate::model::op_inputs::{f32_slice, with_f32};
use crate::model::swiglu;

/// The ops' name in errors.
const OP: &str = "grouped experts";

/// Elements per parallel chunk of the element-wise gate.
const CHUNK: usize = 1 << 14;

/// `FFN_e(rows_e)` for every expert's block of `routed` (`counts[e]` rows each, in
/// order), or `None` when this path does not apply (no BLAS, not f32 on the CPU, or
/// experts of different widths): the caller then runs the experts one by one.
pub fn experts_forward(routed: &Tensor, counts: &[usize], experts: &[Ffn]) -> Result<Option<Tensor>> {
    experts_forward_on(&matmul::active(), routed, counts, experts)
}

/// [`experts_forward`] on a given matmul path.
pub fn experts_forward_on(active: &ActiveMatmul, routed: &Tensor, counts: &[usize], experts: &[Ffn]) -> Result<Option<Tensor>> {
    let Some(library) = active.blas.clone() else { return Ok(None) };
    let Some(first) = experts.first() else { return Ok(None) };
    let width = first.width();
    let f32_cpu = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu();
    let uniform = experts.iter().all(|e| e.width() == width && f32_cpu(&e.gate) && f32_cpu(&e.up) && f32_cpu(&e.down));
    if !uniform || !f32_cpu(routed) || counts.len() != experts.len() || counts.iter().sum::<usize>() != routed.dim(0)? {
        return Ok(None);
    }
    // Each expert's gate and up weights one above the other, `[E, 2f, d]`: one GEMM per
    // expert gives its `[g | u]` rows, and one each gives their gradients.
    let gate_up = Tensor::stack(&experts.iter().flat_map(|e| [&e.gate, &e.up]).collect::<Vec<_>>(), 0)?.reshape((experts.len(), 2 * width, first.gate.dim(1)?))?;
    let down = Tensor::stack(&experts.iter().map(|e| &e.down).collect::<Vec<_>>(), 0)?;
    let blocks = Blocks { counts: counts.to_vec(), precision: active.precision, library };
    let gate_up = routed.contiguous()?.apply_op2(&gate_up, GroupedGateUp(blocks.clone(), Bf16Inputs::default()))?;
    let hidden = gate_up.apply_op1(PackedSwiGlu)?;
    Ok(Some(hidden.apply_op2(&down, GroupedDown(blocks, Bf16Inputs::default()))?))
}

/// The experts' row blocks and how to multiply them.
#[derive(Clone)]
struct Blocks {
    counts: Vec<usize>,
    precision: Precision,
    library: Arc<BlasLibrary>,
}

/// An op's bf16 copies of its forward inputs, kept for its backward (which multiplies
/// the same operands again) and dropped there.
#[derive(Default)]
struct Bf16Inputs(Mutex<Vec<Vec<u16>>>);

impl Bf16Inputs {
    /// Keeps the forward's copies.
    fn keep(&self, copies: Vec<Vec<u16>>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = copies;
    }

    /// The forward's copies of `inputs` (converted again if the forward kept none).
    fn take(&self, inputs: &[&[f32]]) -> Vec<Vec<u16>> {
        let kept = std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()));
        if kept.len() == inputs.len() && kept.iter().zip(inputs).all(|(k, v)| k.len() == v.len()) { kept } else { inputs.iter().map(|v| to_bf16_bits(v)).collect() }
    }
}

fn err(e: matmul::MatmulError) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

fn convert(inputs: &[&[f32]]) -> Vec<Vec<u16>> {
    inputs.iter().map(|v| to_bf16_bits(v)).collect()
}

/// Zeros for the gradient rows of experts that got no rows (their GEMMs do not run).
fn zero_idle_experts(b: &Blocks, grad: &mut [MaybeUninit<f32>], per_expert: usize) {
    for (e, _) in b.counts.iter().enumerate().filter(|(_, n)| **n == 0) {
        grad[e * per_expert..(e + 1) * per_expert].fill(MaybeUninit::new(0.0));
    }
}

fn dims(layout: &Layout) -> &[usize] {
    layout.dims()
}

/// `routed [N, d]`, `gate_up [E, 2f, d]` (each expert's gate weights above its up
/// weights) → `[N, 2f]`: each row is `[x W_gate,eᵀ | x W_up,eᵀ]` for its expert `e`.
struct GroupedGateUp(Blocks, Bf16Inputs);

/// The GEMM entry a block uses: split over the threads, or on the calling thread.
type GemmFn<T> = for<'a, 'b, 'c> fn(&BlasLibrary, GemmShape, Operand<'a, T>, Operand<'b, T>, Accumulate, &'c mut [MaybeUninit<f32>], usize) -> std::result::Result<(), matmul::MatmulError>;

/// One expert's piece of an output.
type Piece<'a> = &'a mut [MaybeUninit<f32>];

/// `data` cut into consecutive blocks of `counts[e] · row_len` elements, one per expert.
fn split_rows<'a, X>(counts: &[usize], mut data: &'a mut [X], row_len: usize) -> Vec<&'a mut [X]> {
    counts
        .iter()
        .map(|&n| {
            let (block, rest) = std::mem::take(&mut data).split_at_mut(n * row_len);
            data = rest;
            block
        })
        .collect()
}

/// Runs `task(gemm, expert, first row, rows, piece)` for every expert with rows. With at
/// least two such experts per thread the experts run in parallel, each product on one
/// thread (no operand is packed twice); otherwise one after another, each product split
/// over the threads.
fn for_each_block<T: GemmInput, P: Send>(b: &Blocks, pieces: Vec<P>, task: impl Fn(GemmFn<T>, usize, usize, usize, P) -> Result<()> + Sync) -> Result<()> {
    let starts: Vec<usize> = b.counts.iter().scan(0, |s, &n| Some(std::mem::replace(s, *s + n))).collect();
    let blocks: Vec<(usize, P)> = pieces.into_iter().enumerate().filter(|(e, _)| b.counts[*e] > 0).collect();
    if blocks.len() >= 2 * rayon::current_num_threads() {
        blocks.into_par_iter().try_for_each(|(e, piece)| task(gemm_serial::<T>, e, starts[e], b.counts[e], piece))
    } else {
        blocks.into_iter().try_for_each(|(e, piece)| task(gemm_strided::<T>, e, starts[e], b.counts[e], piece))
    }
}

fn gate_up_forward<T: GemmInput>(b: &Blocks, x: &[T], w: &[T], d: usize, f: usize, out: &mut [MaybeUninit<f32>]) -> Result<()> {
    for_each_block(b, split_rows(&b.counts, out, 2 * f), |gemm: GemmFn<T>, e, start, n, out: Piece<'_>| {
        let shape = GemmShape { m: n, n: 2 * f, k: d, transpose_a: false, transpose_b: true };
        let rows = Operand { data: &x[start * d..(start + n) * d], ld: d };
        let w = Operand { data: &w[e * 2 * f * d..(e + 1) * 2 * f * d], ld: d };
        gemm(&b.library, shape, rows, w, Accumulate::Overwrite, out, 2 * f).map_err(err)
    })
}

/// `dx = [dg | du] [W_gate; W_up]`, `d[W_gate; W_up] = [dg | du]ᵀ x`, per block.
#[allow(clippy::too_many_arguments)]
fn gate_up_backward<T: GemmInput>(b: &Blocks, x: &[T], w: &[T], grad: &[T], d: usize, f: usize, dx: &mut [MaybeUninit<f32>], dw: &mut [MaybeUninit<f32>]) -> Result<()> {
    zero_idle_experts(b, dw, 2 * f * d);
    let pieces: Vec<_> = split_rows(&b.counts, dx, d).into_iter().zip(dw.chunks_mut(2 * f * d)).collect();
    for_each_block(b, pieces, |gemm: GemmFn<T>, e, start, n, (dx, dw): (Piece<'_>, Piece<'_>)| {
        let g = Operand { data: &grad[start * 2 * f..(start + n) * 2 * f], ld: 2 * f };
        let x_rows = Operand { data: &x[start * d..(start + n) * d], ld: d };
        let w = Operand { data: &w[e * 2 * f * d..(e + 1) * 2 * f * d], ld: d };
        gemm(&b.library, GemmShape { m: n, n: d, k: 2 * f, transpose_a: false, transpose_b: false }, g, w, Accumulate::Overwrite, dx, d).map_err(err)?;
        gemm(&b.library, GemmShape { m: 2 * f, n: d, k: n, transpose_a: true, transpose_b: false }, g, x_rows, Accumulate::Overwrite, dw, d).map_err(err)
    })
}

impl CustomOp2 for GroupedGateUp {
    fn name(&self) -> &'static str {
        "grouped-gate-up"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (&[rows, d], &[_, two_f, _]) = (dims(l1), dims(l2)) else { candle_core::bail!("grouped gate-up: shapes {:?} {:?}", l1.dims(), l2.dims()) };
        let f = two_f / 2;
        let (x, w) = (f32_slice(OP, "routed rows", s1, l1)?, f32_slice(OP, "gate-up weights", s2, l2)?);
        let b = &self.0;
        // SAFETY: the blocks cover every row (their counts sum to `rows`), and each block
        // overwrites its rows.
        let out = unsafe {
            fully_written(rows * 2 * f, |out| match b.precision {
                Precision::F32 => gate_up_forward(b, x, w, d, f, out),
                Precision::Bf16 => {
                    let c = convert(&[x, w]);
                    gate_up_forward(b, &c[0], &c[1], d, f, out)?;
                    self.1.keep(c);
                    Ok(())
                }
            })?
        };
        Ok((CpuStorage::F32(out), Shape::from((rows, 2 * f))))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, d) = x.dims2()?;
        let f = w.dim(1)? / 2;
        let b = &self.0;
        let (dx, dw) = with_f32(OP, "routed rows", x, |x| {
            with_f32(OP, "gate-up weights", w, |w| {
                with_f32(OP, "gradient", grad, |grad| {
                    let mut dw = Vec::with_capacity(w.len());
                    // SAFETY: dx's rows are all overwritten by their blocks; each expert's
                    // weight gradient is overwritten by its GEMM or zeroed when it has no rows.
                    let dx = unsafe {
                        fully_written(rows * d, |dx| {
                            let dwp = &mut dw.spare_capacity_mut()[..w.len()];
                            match b.precision {
                                Precision::F32 => gate_up_backward(b, x, w, grad, d, f, dx, dwp),
                                Precision::Bf16 => {
                                    let c = self.1.take(&[x, w]);
                                    let g = to_bf16_bits(grad);
                                    gate_up_backward(b, &c[0], &c[1], &g, d, f, dx, dwp)
                                }
                            }
                        })?
                    };
                    // SAFETY: as above.
                    unsafe { dw.set_len(w.len()) };
                    Ok((dx, dw))
                })
            })
        })?;
        let dev = x.device();
        Ok((Some(Tensor::from_vec(dx, (rows, d), dev)?), Some(Tensor::from_vec(dw, w.shape(), dev)?)))
    }
}

/// `[g | u]` rows → `silu(g) ⊙ u`.
struct PackedSwiGlu;

impl CustomOp1 for PackedSwiGlu {
    fn name(&self) -> &'static str {
        "packed-swiglu"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let &[rows, two_f] = dims(l) else { candle_core::bail!("packed swiglu: shape {:?}", l.dims()) };
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

/// `hidden [N, f]`, `down [E, d, f]` → `[N, d]`: `h W_down,eᵀ` per block.
struct GroupedDown(Blocks, Bf16Inputs);

fn down_forward<T: GemmInput>(b: &Blocks, h: &[T], down: &[T], d: usize, f: usize, out: &mut [MaybeUninit<f32>]) -> Result<()> {
    for_each_block(b, split_rows(&b.counts, out, d), |gemm: GemmFn<T>, e, start, n, out: Piece<'_>| {
        let shape = GemmShape { m: n, n: d, k: f, transpose_a: false, transpose_b: true };
        let rows = Operand { data: &h[start * f..(start + n) * f], ld: f };
        let w = Operand { data: &down[e * d * f..(e + 1) * d * f], ld: f };
        gemm(&b.library, shape, rows, w, Accumulate::Overwrite, out, d).map_err(err)
    })
}

/// `dh = dy W_down`, `dW_down = dyᵀ h`, per block.
#[allow(clippy::too_many_arguments)]
fn down_backward<T: GemmInput>(b: &Blocks, h: &[T], down: &[T], grad: &[T], d: usize, f: usize, dh: &mut [MaybeUninit<f32>], ddown: &mut [MaybeUninit<f32>]) -> Result<()> {
    zero_idle_experts(b, ddown, d * f);
    let pieces: Vec<_> = split_rows(&b.counts, dh, f).into_iter().zip(ddown.chunks_mut(d * f)).collect();
    for_each_block(b, pieces, |gemm: GemmFn<T>, e, start, n, (dh, ddown): (Piece<'_>, Piece<'_>)| {
        let g = Operand { data: &grad[start * d..(start + n) * d], ld: d };
        let w = Operand { data: &down[e * d * f..(e + 1) * d * f], ld: f };
        gemm(&b.library, GemmShape { m: n, n: f, k: d, transpose_a: false, transpose_b: false }, g, w, Accumulate::Overwrite, dh, f).map_err(err)?;
        let rows = Operand { data: &h[start * f..(start + n) * f], ld: f };
        gemm(&b.library, GemmShape { m: d, n: f, k: n, transpose_a: true, transpose_b: false }, g, rows, Accumulate::Overwrite, ddown, f).map_err(err)
    })
}

impl CustomOp2 for GroupedDown {
    fn name(&self) -> &'static str {
        "grouped-down"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (&[rows, f], &[_, d, _]) = (dims(l1), dims(l2)) else { candle_core::bail!("grouped down: shapes {:?} {:?}", l1.dims(), l2.dims()) };
        let (h, down) = (f32_slice(OP, "hidden rows", s1, l1)?, f32_slice(OP, "down weights", s2, l2)?);
        let b = &self.0;
        // SAFETY: the blocks cover every row and overwrite it.
        let out = unsafe {
            fully_written(rows * d, |out| match b.precision {
                Precision::F32 => down_forward(b, h, down, d, f, out),
                Precision::Bf16 => {
                    let c = convert(&[h, down]);
                    down_forward(b, &c[0], &c[1], d, f, out)?;
                    self.1.keep(c);
                    Ok(())
                }
            })?
        };
        Ok((CpuStorage::F32(out), Shape::from((rows, d))))
    }

    fn bwd(&self, h: &Tensor, down: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let (rows, f) = h.dims2()?;
        let (_, d, _) = down.dims3()?;
        let b = &self.0;
        let (dh, ddown) = with_f32(OP, "hidden rows", h, |h| {
            with_f32(OP, "down weights", down, |down| {
                with_f32(OP, "gradient", grad, |grad| {
                    let mut ddown = Vec::with_capacity(down.len());
                    // SAFETY: dh's rows are all overwritten by their blocks; each expert's
                    // weight gradient is overwritten or zeroed.
                    let dh = unsafe {
                        fully_written(rows * f, |dh| {
                            let dd = &mut ddown.spare_capacity_mut()[..down.len()];
                            match b.precision {
                                Precision::F32 => down_backward(b, h, down, grad, d, f, dh, dd),
                                Precision::Bf16 => {
                                    let c = self.1.take(&[h, down]);
                                    let g = to_bf16_bits(grad);
                                    down_backward(b, &c[0], &c[1], &g, d, f, dh, dd)
                                }
                            }
                        })?
                    };
                    // SAFETY: as above.
                    unsafe { ddown.set_len(down.len()) };
                    Ok((dh, ddown))
                })
            })
        })?;
        let dev = h.device();
        Ok((Some(Tensor::from_vec(dh, (rows, f), dev)?), Some(Tensor::from_vec(ddown, down.shape(), dev)?)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor, Var};

    use super::experts_forward_on;
    use crate::model::ffn::Ffn;
    use crate::model::init::SplitMix64;
    use crate::model::matmul::{ActiveMatmul, Precision, library};

    fn randn(rng: &mut SplitMix64, shape: (usize, usize), std: f64) -> Var {
        let (r, c) = shape;
        Var::from_tensor(&Tensor::from_vec((0..r * c).map(|_| (rng.normal() * std) as f32).collect::<Vec<_>>(), shape, &Device::Cpu).expect("tensor")).expect("var")
    }

    fn gap(a: &Tensor, b: &Tensor) -> f64 {
        let max = |t: &Tensor| t.to_dtype(DType::F64).expect("f64").abs().expect("abs").flatten_all().expect("flat").max(0).expect("max").to_scalar::<f64>().expect("scalar");
        max(&(a - b).expect("sub")) / max(b).max(1e-30)
    }

    /// Grouped experts against each expert run alone (candle's matmul), forward and every
    /// gradient, with an expert that gets no rows; few experts (each product split over
    /// the threads) and many (experts in parallel).
    #[test]
    fn grouped_experts_match_the_experts_one_by_one() {
        check_against_one_by_one(&[7, 0, 65, 3]);
        check_against_one_by_one(&[7, 0, 65, 3, 9, 1, 12, 4, 30, 2, 5, 8, 11, 6, 3, 1]);
    }

    fn check_against_one_by_one(counts: &[usize]) {
        let lib = match library().expect("RECAST_BLAS loads") {
            Some(lib) => lib,
            None => {
                assert!(std::env::var("RECAST_REQUIRE_BLAS").as_deref() != Ok("1"), "RECAST_REQUIRE_BLAS=1 but no BLAS library loads");
                eprintln!("no BLAS library: skipped");
                return;
            }
        };
        let (d, f) = (24, 40);
        let rows: usize = counts.iter().sum();
        let mut rng = SplitMix64(17);
        let weights: Vec<[Var; 3]> = counts.iter().map(|_| [randn(&mut rng, (f, d), 0.3), randn(&mut rng, (f, d), 0.3), randn(&mut rng, (d, f), 0.3)]).collect();
        let experts: Vec<Ffn> = weights.iter().map(|[g, u, w]| Ffn { gate: g.as_tensor().clone(), up: u.as_tensor().clone(), down: w.as_tensor().clone() }).collect();
        let x = randn(&mut rng, (rows, d), 1.0);
        let r = randn(&mut rng, (rows, d), 1.0);
        let run = |out: Tensor| {
            let grads = (out.clone() * r.as_tensor()).expect("mul").sum_all().expect("sum").backward().expect("backward");
            let mut all = vec![out, grads.get(&x).expect("dx").clone()];
            for (e, w) in weights.iter().enumerate() {
                for v in w {
                    all.push(grads.get(v).cloned().unwrap_or_else(|| v.as_tensor().zeros_like().expect("zeros")).detach());
                    assert!(counts[e] == 0 || grads.get(v).is_some());
                }
            }
            all
        };
        let mut start = 0;
        let mut pieces = Vec::new();
        for (expert, &n) in experts.iter().zip(counts) {
            if n > 0 {
                let rows = x.as_tensor().narrow(0, start, n).expect("narrow");
                pieces.push(
                    crate::model::matmul::linear_on(
                        &ActiveMatmul { precision: Precision::F32, blas: None },
                        &(rows.matmul(&expert.gate.t().expect("t")).expect("g").silu().expect("silu") * rows.matmul(&expert.up.t().expect("t")).expect("u")).expect("mul"),
                        &expert.down,
                    )
                    .expect("down"),
                );
            }
            start += n;
        }
        let reference = run(Tensor::cat(&pieces, 0).expect("cat"));
        for (precision, tolerance) in [(Precision::F32, 1e-5), (Precision::Bf16, 3e-2)] {
            let path = ActiveMatmul { precision, blas: Some(lib.clone()) };
            let grouped = run(experts_forward_on(&path, x.as_tensor(), counts, &experts).expect("grouped").expect("the BLAS path applies"));
            for (i, (a, b)) in grouped.iter().zip(&reference).enumerate() {
                let g = gap(a, b);
                assert!(g < tolerance, "{} experts, {precision:?}: output {i} (0 = forward, 1 = dx, then gate/up/down per expert) is {g} from the reference", counts.len());
            }
        }
    }
}

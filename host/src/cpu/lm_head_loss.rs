//! The LM head and the next-token cross-entropy as one op on the BLAS: the logits are
//! made a block of rows at a time into one reused buffer, turned in place into their
//! gradient `(softmax − one-hot) / n`, and multiplied straight into the gradients of the
//! hidden rows and of the head. No `[tokens, vocab]` tensor exists, and nothing the size
//! of the head is copied or transposed per block.
//!
//! Written with candle's ops (`model::loss`), a block cost ten single-threaded passes over
//! its logits, a transposed copy of the head per step, a transposed copy of each block's
//! gradient, and an add of a fresh head-sized gradient per block; in mixed precision the
//! head was also converted to bf16 twice per block.

use std::borrow::Cow;
use std::mem::MaybeUninit;
use std::sync::{Arc, Mutex};

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::exp::exp_approx;
use super::matmul::{Accumulate, BlasLibrary, GemmInput, GemmShape, MatmulError, Operand, Precision, as_uninit, gemm_strided, to_bf16_bits};
use super::op_io::{f32_slice, with_f32};

/// The op's name in errors.
const OP: &str = "LM head loss";

/// Logit elements made at once: the buffer (32 MiB, plus a bf16 copy in mixed
/// precision) is all the head's memory beyond its gradients. Fewer, taller blocks keep
/// the head gradient's products efficient (their inner size is the block's rows) and
/// pass over that gradient fewer times.
const BLOCK_ELEMENTS: usize = 1 << 23;

/// What the loss gives besides its value.
pub struct HeadLoss {
    /// The mean loss as a scalar tensor whose backward gives the hidden rows and the
    /// head the gradients of the mean cross-entropy.
    pub loss: Tensor,
    /// Its value, summed in f64.
    pub value: f64,
    /// Per row, the negative log-likelihood of its target.
    pub nll: Vec<f32>,
}

/// The mean cross-entropy of `hidden [n, d] · headᵀ` (head `[vocab, d]`) against
/// `targets` (one per row), both f32 CPU tensors, products on `library` at `precision`.
pub fn head_loss(hidden: &Tensor, head: &Tensor, targets: &[u32], precision: Precision, library: Arc<BlasLibrary>) -> Result<HeadLoss> {
    let shared = Arc::new(Mutex::new(None));
    let op = HeadLossOp { targets: targets.to_vec(), precision, library, shared: shared.clone() };
    let loss = hidden.contiguous()?.apply_op2(&head.contiguous()?, op)?;
    let outputs = shared.lock().unwrap_or_else(|e| e.into_inner()).as_mut().map(|o: &mut Outputs| (o.value, std::mem::take(&mut o.nll)));
    let Some((value, nll)) = outputs else { candle_core::bail!("{OP}: the forward left no result") };
    Ok(HeadLoss { loss, value, nll })
}

/// Everything one evaluation of the loss computes.
struct Outputs {
    value: f64,
    nll: Vec<f32>,
    d_hidden: Vec<f32>,
    d_head: Vec<f32>,
}

/// The op. Its forward computes the gradients with the loss (they come from the same
/// logits) and leaves them, with the loss's values, where [`head_loss`] and the backward
/// take them.
struct HeadLossOp {
    targets: Vec<u32>,
    precision: Precision,
    library: Arc<BlasLibrary>,
    shared: Arc<Mutex<Option<Outputs>>>,
}

fn err(e: MatmulError) -> candle_core::Error {
    candle_core::Error::Msg(format!("{OP}: {e}"))
}

/// The operands of the products in one element type.
struct Operands<'a, T> {
    hidden: &'a [T],
    head: &'a [T],
}

/// The loss, its per-row values and both gradients of `hidden [n, d]`, `head [vocab, d]`.
fn evaluate(hidden: &[f32], head: &[f32], d: usize, targets: &[u32], precision: Precision, library: &BlasLibrary, block_elements: usize) -> Result<Outputs> {
    let n = targets.len();
    let vocab = head.len() / d.max(1);
    if hidden.len() != n * d || head.len() != vocab * d || vocab == 0 {
        candle_core::bail!("{OP}: {n} targets, hidden of {} and head of {} elements with width {d}", hidden.len(), head.len());
    }
    if let Some(&t) = targets.iter().find(|&&t| t as usize >= vocab) {
        candle_core::bail!("{OP}: target token {t} is outside the vocabulary of {vocab}");
    }
    match precision {
        Precision::F32 => evaluate_in(Operands { hidden, head }, d, vocab, targets, library, block_elements),
        Precision::Bf16 => {
            let (h, w) = (to_bf16_bits(hidden), to_bf16_bits(head));
            evaluate_in(Operands { hidden: &h, head: &w }, d, vocab, targets, library, block_elements)
        }
    }
}

/// An element type the products take, made from a block's f32 gradient.
trait ProductInput: GemmInput {
    fn from_f32(values: &[f32]) -> Cow<'_, [Self]>;
}

impl ProductInput for f32 {
    fn from_f32(values: &[f32]) -> Cow<'_, [f32]> {
        Cow::Borrowed(values)
    }
}

/// bf16 bit patterns.
impl ProductInput for u16 {
    fn from_f32(values: &[f32]) -> Cow<'_, [u16]> {
        Cow::Owned(to_bf16_bits(values))
    }
}

/// [`evaluate`] with products on `T` operands.
fn evaluate_in<T: ProductInput>(ops: Operands<'_, T>, d: usize, vocab: usize, targets: &[u32], library: &BlasLibrary, block_elements: usize) -> Result<Outputs> {
    let n = targets.len();
    let block = (block_elements / vocab).clamp(1, n.max(1));
    let mut logits = vec![0f32; block * vocab];
    let mut nll = vec![0f32; n];
    let mut d_hidden = vec![0f32; n * d];
    let mut d_head: Vec<f32> = Vec::with_capacity(vocab * d);
    let inv_n = 1.0 / n.max(1) as f32;
    for start in (0..n).step_by(block) {
        let rows = block.min(n - start);
        let logits = &mut logits[..rows * vocab];
        let h = Operand { data: &ops.hidden[start * d..(start + rows) * d], ld: d };
        let w = Operand { data: ops.head, ld: d };
        gemm_strided(library, GemmShape { m: rows, n: vocab, k: d, transpose_a: false, transpose_b: true }, h, w, Accumulate::Overwrite, as_uninit(logits), vocab).map_err(err)?;
        logits
            .par_chunks_mut(vocab)
            .zip(nll[start..start + rows].par_iter_mut())
            .zip(&targets[start..start + rows])
            .for_each(|((row, nll), &target)| *nll = softmax_gradient(row, target as usize, inv_n));
        let g = T::from_f32(logits);
        let g = Operand { data: &g, ld: vocab };
        let dh = as_uninit(&mut d_hidden[start * d..(start + rows) * d]);
        gemm_strided(library, GemmShape { m: rows, n: d, k: vocab, transpose_a: false, transpose_b: false }, g, w, Accumulate::Overwrite, dh, d).map_err(err)?;
        let accumulate = if start == 0 { Accumulate::Overwrite } else { Accumulate::Add };
        let dw = &mut d_head.spare_capacity_mut()[..vocab * d];
        gemm_strided(library, GemmShape { m: vocab, n: d, k: rows, transpose_a: true, transpose_b: false }, g, h, accumulate, dw, d).map_err(err)?;
    }
    if n == 0 {
        d_head.spare_capacity_mut()[..vocab * d].fill(MaybeUninit::new(0.0));
    }
    // SAFETY: the first block's product overwrote every element (or the fill above did).
    unsafe { d_head.set_len(vocab * d) };
    let value = nll.iter().map(|&x| x as f64).sum::<f64>() / n.max(1) as f64;
    Ok(Outputs { value, nll, d_hidden, d_head })
}

/// Turns one row of logits into the gradient of its share of the mean loss,
/// `(softmax − one-hot(target)) · inv_n`, in place; returns the row's negative
/// log-likelihood.
fn softmax_gradient(row: &mut [f32], target: usize, inv_n: f32) -> f32 {
    let max = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let picked = row[target] - max;
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = exp_approx(*v - max);
        sum += *v;
    }
    let scale = inv_n / sum;
    for v in row.iter_mut() {
        *v *= scale;
    }
    row[target] -= inv_n;
    sum.ln() - picked
}

impl CustomOp2 for HeadLossOp {
    fn name(&self) -> &'static str {
        "lm-head-loss"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (&[_, d], &[_, d2]) = (l1.dims(), l2.dims()) else { candle_core::bail!("{OP}: shapes {:?} and {:?}", l1.dims(), l2.dims()) };
        if d != d2 {
            candle_core::bail!("{OP}: hidden rows {:?} and head {:?} differ in width", l1.dims(), l2.dims());
        }
        let (hidden, head) = (f32_slice(OP, "the hidden rows", s1, l1)?, f32_slice(OP, "the head", s2, l2)?);
        let outputs = evaluate(hidden, head, d, &self.targets, self.precision, &self.library, BLOCK_ELEMENTS)?;
        let value = outputs.value as f32;
        *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = Some(outputs);
        Ok((CpuStorage::F32(vec![value]), Shape::from(())))
    }

    /// The gradients made with the loss (made again if they were taken), times the
    /// loss's own gradient.
    fn bwd(&self, hidden: &Tensor, head: &Tensor, _res: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let kept = self.shared.lock().unwrap_or_else(|e| e.into_inner()).take();
        let outputs = match kept {
            Some(outputs) => outputs,
            None => {
                let d = hidden.dim(1)?;
                with_f32(OP, "the hidden rows", hidden, |h| with_f32(OP, "the head", head, |w| evaluate(h, w, d, &self.targets, self.precision, &self.library, BLOCK_ELEMENTS)))?
            }
        };
        let scale = dy.to_dtype(candle_core::DType::F32)?.to_scalar::<f32>()?;
        let (mut dh, mut dw) = (outputs.d_hidden, outputs.d_head);
        if scale != 1.0 {
            dh.par_iter_mut().chain(dw.par_iter_mut()).for_each(|v| *v *= scale);
        }
        let dev = hidden.device();
        Ok((Some(Tensor::from_vec(dh, hidden.shape(), dev)?), Some(Tensor::from_vec(dw, head.shape(), dev)?)))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::super::matmul::{Precision, library};
    use super::evaluate;
    use crate::model::init::SplitMix64;

    /// The loss, per-row values and both gradients against an f64 reference made from
    /// the full logits, with blocks of 3 rows (the last one short) and one row per block;
    /// in mixed precision against the same reference at bf16's tolerance.
    #[test]
    fn fused_head_loss_matches_an_f64_reference() {
        let Some(lib) = library().expect("RECAST_BLAS loads") else {
            assert!(std::env::var("RECAST_REQUIRE_BLAS").as_deref() != Ok("1"), "RECAST_REQUIRE_BLAS=1 but no BLAS library loads");
            eprintln!("no BLAS library: skipped");
            return;
        };
        let (n, d, vocab) = (11, 24, 37);
        let mut rng = SplitMix64(5);
        let mut normal = |len: usize| -> Vec<f32> { (0..len).map(|_| rng.normal() as f32).collect() };
        let (hidden, head) = (normal(n * d), normal(vocab * d));
        let targets: Vec<u32> = (0..n).map(|i| ((i * 7 + 3) % vocab) as u32).collect();
        let (value, nll, dh, dw) = reference(&hidden, &head, d, &targets);
        for (precision, tolerance) in [(Precision::F32, 1e-5), (Precision::Bf16, 2e-2)] {
            for block_rows in [3, 1, n] {
                let out = evaluate(&hidden, &head, d, &targets, precision, &lib, block_rows * vocab).expect("evaluate");
                let case = format!("{precision:?}, blocks of {block_rows}");
                assert!((out.value - value).abs() < tolerance * value.abs(), "{case}: loss {} vs {value}", out.value);
                assert!(gap(&out.nll, &nll) < tolerance, "{case}: per-row values");
                assert!(gap(&out.d_hidden, &dh) < tolerance * 10.0, "{case}: hidden gradient gap {}", gap(&out.d_hidden, &dh));
                assert!(gap(&out.d_head, &dw) < tolerance * 10.0, "{case}: head gradient gap {}", gap(&out.d_head, &dw));
            }
        }
    }

    /// The op's backward scales its gradients by the loss's gradient.
    #[test]
    fn the_backward_scales_by_the_incoming_gradient() {
        let Some(lib) = library().expect("RECAST_BLAS loads") else { return };
        let dev = Device::Cpu;
        let hidden = candle_core::Var::from_tensor(&Tensor::arange(0f32, 12.0, &dev).expect("arange").affine(0.1, -0.5).expect("affine").reshape((3, 4)).expect("reshape")).expect("var");
        let head = candle_core::Var::from_tensor(&Tensor::arange(0f32, 20.0, &dev).expect("arange").affine(-0.05, 0.3).expect("affine").reshape((5, 4)).expect("reshape")).expect("var");
        let grads = |scale: f64| {
            let out = super::head_loss(hidden.as_tensor(), head.as_tensor(), &[1, 4, 0], Precision::F32, lib.clone()).expect("loss");
            let g = (out.loss * scale).expect("scale").backward().expect("backward");
            (g.get(hidden.as_tensor()).expect("dh").flatten_all().expect("f").to_vec1::<f32>().expect("v"), g.get(head.as_tensor()).expect("dw").flatten_all().expect("f").to_vec1::<f32>().expect("v"))
        };
        let ((h1, w1), (h3, w3)) = (grads(1.0), grads(3.0));
        assert!(h1.iter().zip(&h3).chain(w1.iter().zip(&w3)).all(|(a, b)| (3.0 * a - b).abs() <= 1e-6 * b.abs().max(1e-3)));
        assert!(h1.iter().any(|&v| v != 0.0) && w1.iter().any(|&v| v != 0.0));
    }

    /// Largest absolute difference over the reference's largest magnitude.
    fn gap(a: &[f32], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        let scale = b.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
        a.iter().zip(b).fold(0f64, |m, (&x, y)| m.max((x as f64 - y).abs())) / scale
    }

    /// Mean loss, per-row losses and gradients in f64 from the whole `[n, vocab]` logits.
    fn reference(hidden: &[f32], head: &[f32], d: usize, targets: &[u32]) -> (f64, Vec<f64>, Vec<f64>, Vec<f64>) {
        let (n, vocab) = (targets.len(), head.len() / d);
        let (mut nll, mut dh, mut dw) = (vec![0f64; n], vec![0f64; n * d], vec![0f64; vocab * d]);
        for i in 0..n {
            let logits: Vec<f64> = (0..vocab).map(|v| (0..d).map(|j| hidden[i * d + j] as f64 * head[v * d + j] as f64).sum()).collect();
            let max = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let sum: f64 = logits.iter().map(|l| (l - max).exp()).sum();
            nll[i] = sum.ln() + max - logits[targets[i] as usize];
            for v in 0..vocab {
                let g = ((logits[v] - max).exp() / sum - if v == targets[i] as usize { 1.0 } else { 0.0 }) / n as f64;
                for j in 0..d {
                    dh[i * d + j] += g * head[v * d + j] as f64;
                    dw[v * d + j] += g * hidden[i * d + j] as f64;
                }
            }
        }
        (nll.iter().sum::<f64>() / n as f64, nll, dh, dw)
    }
}

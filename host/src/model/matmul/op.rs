//! `x Wᵀ` through the BLAS as a candle op with a backward, in f32 or with bf16 inputs
//! and f32 accumulation (mixed precision: the tensors around it stay f32).

use std::mem::MaybeUninit;
use std::sync::Arc;

use candle_core::{CpuStorage, CustomOp2, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::Precision;
use super::gemm::{GemmShape, gemm};
use super::library::BlasLibrary;
use crate::model::op_inputs::f32_slice;

/// Elements per parallel chunk of a bf16 conversion.
const CONVERT_CHUNK: usize = 1 << 15;

/// Which product of the two operands (both stored row-major).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Product {
    /// `a [m,k] · bᵀ` with `b [n,k]`: a linear layer's forward.
    ABt,
    /// `a [m,k] · b [k,n]`: the input's gradient.
    AB,
    /// `aᵀ · b` with `a [k,m]`, `b [k,n]`: the weight's gradient.
    AtB,
}

/// One BLAS product as a candle op.
pub(super) struct BlasMatmul {
    product: Product,
    precision: Precision,
    library: Arc<BlasLibrary>,
}

/// `x Wᵀ` for `x [m,k]` and `W [n,k]`, both f32 CPU tensors.
pub(super) fn linear(x: &Tensor, weight: &Tensor, precision: Precision, library: Arc<BlasLibrary>) -> Result<Tensor> {
    x.contiguous()?.apply_op2(&weight.contiguous()?, BlasMatmul { product: Product::ABt, precision, library })
}

/// f32 → bf16 bit patterns, rounding to nearest even (as PyTorch and candle do); NaN
/// stays NaN. Compiled for AVX-512 and AVX2 too, chosen at run time: the conversions
/// of mixed precision touch every operand of every GEMM.
pub(super) fn to_bf16(values: &[f32]) -> Vec<u16> {
    let mut out = Vec::with_capacity(values.len());
    out.spare_capacity_mut().par_chunks_mut(CONVERT_CHUNK).zip(values.par_chunks(CONVERT_CHUNK)).for_each(|(o, v)| convert_chunk(v, o));
    // SAFETY: every chunk of the spare capacity was written by `convert_chunk`.
    unsafe { out.set_len(values.len()) };
    out
}

fn convert_chunk(values: &[f32], out: &mut [MaybeUninit<u16>]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw") {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { convert_avx512(values, out) };
        }
        if is_x86_feature_detected!("avx2") {
            // SAFETY: as above.
            return unsafe { convert_avx2(values, out) };
        }
    }
    convert_scalar(values, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn convert_avx512(values: &[f32], out: &mut [MaybeUninit<u16>]) {
    convert_scalar(values, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn convert_avx2(values: &[f32], out: &mut [MaybeUninit<u16>]) {
    convert_scalar(values, out)
}

#[inline(always)]
fn convert_scalar(values: &[f32], out: &mut [MaybeUninit<u16>]) {
    for (o, &x) in out.iter_mut().zip(values) {
        let bits = x.to_bits();
        let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
        let nan = (bits & 0x7fff_ffff) > 0x7f80_0000;
        o.write(if nan { ((bits >> 16) | 0x40) as u16 } else { rounded as u16 });
    }
}

fn dims2(layout: &Layout, name: &str) -> Result<(usize, usize)> {
    match layout.dims() {
        &[r, c] => Ok((r, c)),
        dims => candle_core::bail!("blas matmul: the {name} operand has shape {dims:?}, not a matrix"),
    }
}

impl BlasMatmul {
    fn shape(&self, a: (usize, usize), b: (usize, usize)) -> Result<GemmShape> {
        let (shape, inner) = match self.product {
            Product::ABt => (GemmShape { m: a.0, k: a.1, n: b.0, transpose_a: false, transpose_b: true }, b.1),
            Product::AB => (GemmShape { m: a.0, k: a.1, n: b.1, transpose_a: false, transpose_b: false }, b.0),
            Product::AtB => (GemmShape { m: a.1, k: a.0, n: b.1, transpose_a: true, transpose_b: false }, b.0),
        };
        if inner != shape.k {
            candle_core::bail!("blas matmul {:?}: shapes {a:?} and {b:?} do not multiply", self.product);
        }
        Ok(shape)
    }

    fn with(&self, product: Product) -> BlasMatmul {
        BlasMatmul { product, precision: self.precision, library: self.library.clone() }
    }
}

impl CustomOp2 for BlasMatmul {
    fn name(&self) -> &'static str {
        "blas-matmul"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let shape = self.shape(dims2(l1, "first")?, dims2(l2, "second")?)?;
        let (a, b) = (f32_slice("blas matmul", "first", s1, l1)?, f32_slice("blas matmul", "second", s2, l2)?);
        // SAFETY: a GEMM that overwrites C writes every element.
        let c = unsafe {
            super::fully_written(shape.m * shape.n, |c| match self.precision {
                Precision::F32 => gemm(&self.library, shape, a, b, c),
                Precision::Bf16 => gemm(&self.library, shape, &to_bf16(a), &to_bf16(b), c),
            })
        }
        .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        Ok((CpuStorage::F32(c), Shape::from((shape.m, shape.n))))
    }

    fn bwd(&self, a: &Tensor, b: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        if self.product != Product::ABt {
            candle_core::bail!("blas matmul: no second-order gradients");
        }
        // y = x Wᵀ: dx = dy W, dW = dyᵀ x.
        // Gradients carry no graph: a tracked one would chain the optimizer's moments to
        // every earlier step's graph (memory grew by the whole graph each step).
        let grad = grad.contiguous()?;
        let dx = grad.apply_op2_no_bwd(b, &self.with(Product::AB))?;
        let dw = grad.apply_op2_no_bwd(a, &self.with(Product::AtB))?;
        Ok((Some(dx), Some(dw)))
    }
}

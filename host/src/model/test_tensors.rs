//! Random tensors and a relative error for the tests of the fused and BLAS ops.

use candle_core::{DType, Device, Tensor, Var};

use super::init::SplitMix64;

/// A variable of shape `dims` with normal entries of standard deviation `std`.
pub(crate) fn randn_var(rng: &mut SplitMix64, dims: &[usize], std: f64) -> Var {
    let n = dims.iter().product();
    Var::from_tensor(&Tensor::from_vec((0..n).map(|_| (rng.normal() * std) as f32).collect::<Vec<_>>(), dims, &Device::Cpu).expect("tensor")).expect("var")
}

fn max_abs(t: &Tensor) -> f64 {
    t.abs().expect("abs").flatten_all().expect("flat").max(0).expect("max").to_scalar::<f64>().expect("scalar")
}

/// `max |a − b| / max |b|`, in f64.
pub(crate) fn relative_gap(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).expect("f64");
    let b = b.to_dtype(DType::F64).expect("f64");
    max_abs(&(a - &b).expect("sub")) / max_abs(&b).max(1e-30)
}

//! The BLAS path against candle's matmul and an f64 reference, forward and gradients.

use candle_core::{DType, Tensor, Var};

use super::{ActiveMatmul, Precision, library, linear_on, to_bf16_bits};
use crate::model::init::SplitMix64;
use crate::model::test_tensors::{randn_var, relative_gap};

fn randn(rng: &mut SplitMix64, rows: usize, cols: usize) -> Tensor {
    randn_var(rng, &[rows, cols], 1.0).as_tensor().clone()
}

/// Rounds to bf16 and back, in f64 (the exact inputs a bf16 GEMM multiplies).
fn bf16_rounded(t: &Tensor) -> Tensor {
    t.to_dtype(DType::BF16).expect("bf16").to_dtype(DType::F64).expect("f64")
}

/// `y = x Wᵀ` and the gradients of `Σ y ⊙ r`, on `path`.
fn forward_and_grads(path: &ActiveMatmul, x: &Tensor, w: &Tensor, r: &Tensor) -> (Tensor, Tensor, Tensor) {
    let (xv, wv) = (Var::from_tensor(x).expect("var"), Var::from_tensor(w).expect("var"));
    let y = linear_on(path, xv.as_tensor(), wv.as_tensor()).expect("linear");
    let grads = (&y * r).expect("mul").sum_all().expect("sum").backward().expect("backward");
    let (dx, dw) = (grads.get(&xv).expect("dx").clone(), grads.get(&wv).expect("dw").clone());
    // A gradient that carried a graph would chain the optimizer's moments to every step.
    assert!(path.blas.is_none() || (!dx.track_op() && !dw.track_op()), "gradients must not carry a graph");
    (y, dx, dw)
}

/// The BLAS the test should use: required where `RECAST_REQUIRE_BLAS=1` (the test
/// script installs MKL), else skipped with a note.
fn blas_or_skip() -> Option<std::sync::Arc<super::BlasLibrary>> {
    let lib = library().expect("RECAST_BLAS loads");
    if lib.is_none() {
        assert!(std::env::var("RECAST_REQUIRE_BLAS").as_deref() != Ok("1"), "RECAST_REQUIRE_BLAS=1 but no BLAS library loads (scripts/cpu-blas.sh installs MKL)");
        eprintln!("no BLAS library: skipped");
    }
    lib
}

/// Shapes that split over rows, over columns, and do not divide into blocks evenly.
const SHAPES: [(usize, usize, usize); 4] = [(300, 96, 70), (3, 64, 500), (1, 7, 1), (257, 33, 129)];

#[test]
fn blas_f32_matches_candle_forward_and_gradients() {
    let Some(lib) = blas_or_skip() else { return };
    let mut rng = SplitMix64(3);
    for (m, k, n) in SHAPES {
        let (x, w, r) = (randn(&mut rng, m, k), randn(&mut rng, n, k), randn(&mut rng, m, n));
        let blas = forward_and_grads(&ActiveMatmul { precision: Precision::F32, blas: Some(lib.clone()) }, &x, &w, &r);
        let candle = forward_and_grads(&ActiveMatmul { precision: Precision::F32, blas: None }, &x, &w, &r);
        for (name, a, b) in [("y", &blas.0, &candle.0), ("dx", &blas.1, &candle.1), ("dw", &blas.2, &candle.2)] {
            let gap = relative_gap(a, b);
            assert!(gap < 1e-5, "{m}x{k}x{n} {name}: relative gap {gap}");
        }
    }
}

/// bf16 products equal the f64 product of bf16-rounded inputs up to f32 accumulation,
/// and stay near the f32 product.
#[test]
fn blas_bf16_multiplies_rounded_inputs_with_f32_accumulation() {
    let Some(lib) = blas_or_skip() else { return };
    let mut rng = SplitMix64(5);
    for (m, k, n) in SHAPES {
        let (x, w, r) = (randn(&mut rng, m, k), randn(&mut rng, n, k), randn(&mut rng, m, n));
        let (y, dx, dw) = forward_and_grads(&ActiveMatmul { precision: Precision::Bf16, blas: Some(lib.clone()) }, &x, &w, &r);
        let (xr, wr, rr) = (bf16_rounded(&x), bf16_rounded(&w), bf16_rounded(&r));
        let y_ref = xr.matmul(&wr.t().expect("t")).expect("y");
        let dx_ref = rr.matmul(&wr).expect("dx");
        let dw_ref = rr.t().expect("t").matmul(&xr).expect("dw");
        for (name, a, b) in [("y", &y, &y_ref), ("dx", &dx, &dx_ref), ("dw", &dw, &dw_ref)] {
            let gap = relative_gap(a, b);
            assert!(gap < 1e-5, "{m}x{k}x{n} {name}: relative gap {gap} to the rounded-input product");
        }
        let f32_ref = x.matmul(&w.t().expect("t")).expect("y");
        let gap = relative_gap(&y, &f32_ref);
        assert!(gap > 1e-6 && gap < 2e-2, "{m}x{k}x{n}: bf16 product is {gap} from the f32 product (rounded inputs should move it, a little)");
    }
}

/// Without a BLAS, bf16 mode multiplies with candle in bf16 and still returns f32.
#[test]
fn candle_bf16_path_returns_f32_near_the_f32_product() {
    let mut rng = SplitMix64(9);
    let (x, w, r) = (randn(&mut rng, 40, 24), randn(&mut rng, 30, 24), randn(&mut rng, 40, 30));
    let (y, dx, dw) = forward_and_grads(&ActiveMatmul { precision: Precision::Bf16, blas: None }, &x, &w, &r);
    assert_eq!((y.dtype(), dx.dtype(), dw.dtype()), (DType::F32, DType::F32, DType::F32));
    assert!(relative_gap(&y, &x.matmul(&w.t().expect("t")).expect("y")) < 2e-2);
}

#[test]
fn bf16_bits_round_to_nearest_even_like_half() {
    let mut rng = SplitMix64(1);
    let mut values: Vec<f32> = (0..10_000).map(|_| (rng.normal() * 1e3) as f32).collect();
    values.extend([0.0, -0.0, 1.0 + f32::EPSILON * 64.0, f32::from_bits(0x3f80_8000), f32::from_bits(0x3f81_8000), f32::INFINITY, f32::NEG_INFINITY, f32::MAX, f32::MIN_POSITIVE]);
    let bits = to_bf16_bits(&values);
    for (v, b) in values.iter().zip(&bits) {
        assert_eq!(*b, half::bf16::from_f32(*v).to_bits(), "{v}");
    }
    let nan = to_bf16_bits(&[f32::NAN])[0];
    assert!(half::bf16::from_bits(nan).is_nan());
}

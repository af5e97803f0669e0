//! Differentiable building blocks written with candle's basic operations, each of which
//! has a backward. (candle-nn's fused softmax and norms have none: gradients would stop
//! there silently.)

use candle_core::{D, Result, Tensor};

use crate::cpu::matmul;

/// Softmax over the last dimension. The max is subtracted for stability and detached:
/// softmax ignores shifts, so no gradient is lost.
pub fn softmax_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    let e = x.broadcast_sub(&max)?.exp()?;
    e.broadcast_div(&e.sum_keepdim(D::Minus1)?)
}

/// `log Σ exp x` over the last dimension, kept as a size-1 dimension.
pub fn logsumexp_last_dim(x: &Tensor) -> Result<Tensor> {
    let max = x.max_keepdim(D::Minus1)?.detach();
    x.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()?.broadcast_add(&max)
}

/// The logistic function `1 / (1 + e^-x)`.
pub fn sigmoid(x: &Tensor) -> Result<Tensor> {
    (x.neg()?.exp()? + 1.0)?.recip()
}

/// `x Wᵀ (+ b)` for `x` of shape `[n, in]` and a Hugging Face weight `[out, in]`, on the
/// process's matmul path (BLAS or candle, f32 or mixed precision).
pub fn linear(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    add_bias(matmul::linear(x, weight)?, bias)
}

/// [`linear`] always in f32: for the MoE router, whose top-k choices should not flip
/// with bf16 rounding.
pub fn linear_f32(x: &Tensor, weight: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    add_bias(matmul::linear_f32(x, weight)?, bias)
}

fn add_bias(y: Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    match bias {
        Some(b) => y.broadcast_add(b),
        None => Ok(y),
    }
}

/// RMSNorm: `x / sqrt(mean(x²) + eps) * weight`, over the last dimension (one fused op
/// in f32 on the CPU).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f64) -> Result<Tensor> {
    if let Some(fused) = crate::cpu::rms_norm::rms_norm(x, weight, eps)? {
        return Ok(fused);
    }
    let scale = (x.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?;
    x.broadcast_mul(&scale)?.broadcast_mul(weight)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    #[test]
    fn softmax_rows_sum_to_one_and_match_the_formula() {
        let x = Tensor::new(&[[1.0f64, 2.0, 3.0], [0.0, 0.0, 0.0]], &Device::Cpu).expect("tensor");
        let s = super::softmax_last_dim(&x).expect("softmax").to_vec2::<f64>().expect("vec");
        let z: f64 = [1.0f64, 2.0, 3.0].iter().map(|v| v.exp()).sum();
        assert!((s[0][2] - 3f64.exp() / z).abs() < 1e-12);
        assert!((s[1][0] - 1.0 / 3.0).abs() < 1e-12);
    }

    #[test]
    fn logsumexp_is_stable_for_large_values() {
        let x = Tensor::new(&[[1000.0f64, 1000.0]], &Device::Cpu).expect("tensor");
        let v = super::logsumexp_last_dim(&x).expect("lse").flatten_all().expect("flat").to_vec1::<f64>().expect("vec");
        assert!((v[0] - (1000.0 + 2f64.ln())).abs() < 1e-9);
    }
}

//! Auxiliary losses on the router (METHODS.md §2.1, §2.2), unweighted: the layer
//! multiplies them by the coefficients the aux-schedule plugin hands in.

use candle_core::{D, Result, Tensor};

use crate::model::ops::logsumexp_last_dim;

/// Switch-style load balancing `E · Σ_e f_e P_e`: `f_e = c_e / Σ c` is the fraction of
/// assignments expert `e` received (a constant: no gradient flows through the
/// selection) and `P_e` the mean of the full score distribution `probs` (`[T, E]`).
/// Equals 1 at perfect balance and `E` at collapse.
pub fn load_balance(probs: &Tensor, load: &[u32]) -> Result<Tensor> {
    let experts = load.len();
    let total: u32 = load.iter().sum();
    let f: Vec<f32> = load.iter().map(|&c| if total == 0 { 0.0 } else { c as f32 / total as f32 }).collect();
    let f = Tensor::from_vec(f, experts, probs.device())?.to_dtype(probs.dtype())?;
    let p = probs.mean(0)?;
    p.mul(&f)?.sum_all()? * experts as f64
}

/// Router z-loss `(1/T) Σ_t (log Σ_e exp z_{t,e})²` on the raw logits `[T, E]`.
pub fn z_loss(logits: &Tensor) -> Result<Tensor> {
    logsumexp_last_dim(logits)?.squeeze(D::Minus1)?.sqr()?.mean_all()
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    #[test]
    fn balanced_load_gives_one_and_collapse_gives_e() {
        let uniform = Tensor::full(0.25f32, (8, 4), &Device::Cpu).expect("t");
        let l = super::load_balance(&uniform, &[2, 2, 2, 2]).expect("lb").to_scalar::<f32>().expect("s");
        assert!((l - 1.0).abs() < 1e-6);
        let mut rows = vec![0f32; 8 * 4];
        for t in 0..8 {
            rows[t * 4] = 1.0;
        }
        let collapsed = Tensor::from_vec(rows, (8, 4), &Device::Cpu).expect("t");
        let l = super::load_balance(&collapsed, &[8, 0, 0, 0]).expect("lb").to_scalar::<f32>().expect("s");
        assert!((l - 4.0).abs() < 1e-6);
    }

    #[test]
    fn zero_logits_give_log_e_squared() {
        let z = Tensor::zeros((5, 8), candle_core::DType::F32, &Device::Cpu).expect("z");
        let l = super::z_loss(&z).expect("z").to_scalar::<f32>().expect("s");
        assert!((l - 8f32.ln().powi(2)).abs() < 1e-5);
    }
}

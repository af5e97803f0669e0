//! AdamW with f32 moments, decoupled weight decay (not on norms and biases) and
//! global-norm gradient clipping, updating the model's variables in place.

use std::collections::BTreeMap;

use candle_core::{DType, Result, Tensor, Var};

use super::config::OptimizerSection;
use crate::model::params::ParamStore;

/// Accumulated gradients by parameter name.
pub type Gradients = BTreeMap<String, Tensor>;

/// Optimizer state: the first and second moments of every parameter, and the step.
pub struct AdamW {
    pub settings: OptimizerSection,
    /// Steps taken (for bias correction).
    pub steps: u64,
    /// `(m, v)` per parameter name.
    pub moments: BTreeMap<String, (Tensor, Tensor)>,
}

/// Whether weight decay applies to a parameter: not to norm weights and biases.
pub fn decays(name: &str) -> bool {
    !(name.ends_with("norm.weight") || name.ends_with(".bias"))
}

impl AdamW {
    /// Fresh state (zero moments) for `params`.
    pub fn new(settings: OptimizerSection, params: &ParamStore) -> Result<Self> {
        let mut moments = BTreeMap::new();
        for (name, p) in params.iter() {
            let zeros = Tensor::zeros(p.dims(), DType::F32, p.device())?;
            moments.insert(name.clone(), (zeros.clone(), zeros));
        }
        Ok(Self { settings, steps: 0, moments })
    }

    /// Global L2 norm of the gradients of `params`.
    pub fn grad_norm(grads: &Gradients) -> Result<f64> {
        let mut sum = 0f64;
        for g in grads.values() {
            sum += g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        }
        Ok(sum.sqrt())
    }

    /// One update at learning rate `lr`; gradients are first scaled by `grad_scale`
    /// (clipping). Parameters without a gradient, or that `trains` rejects (a frozen
    /// group), are left exactly as they are, moments included.
    pub fn step(&mut self, params: &ParamStore, grads: &Gradients, lr: f64, grad_scale: f64, trains: &dyn Fn(&str) -> bool) -> Result<()> {
        self.steps += 1;
        let s = &self.settings;
        let (b1, b2) = (s.beta1, s.beta2);
        let c1 = 1.0 - b1.powi(self.steps as i32);
        let c2 = 1.0 - b2.powi(self.steps as i32);
        for (name, p) in params.iter() {
            let Some(g) = grads.get(name).filter(|_| trains(name)) else { continue };
            // Detached: a gradient that still carried a graph would chain the moments to
            // every step's graph.
            let g = (g.detach().to_dtype(DType::F32)? * grad_scale)?;
            let (m, v) = self.moments.get_mut(name).ok_or_else(|| candle_core::Error::Msg(format!("no optimizer state for `{name}`")))?;
            *m = ((&*m * b1)? + (&g * (1.0 - b1))?)?;
            *v = ((&*v * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&*m / c1)? / ((&*v / c2)?.sqrt()? + s.eps)?)?;
            let p32 = p.detach().to_dtype(DType::F32)?;
            let decayed = if decays(name) { (&p32 * (1.0 - lr * s.weight_decay))? } else { p32 };
            let new = (decayed - (update * lr)?)?.to_dtype(p.dtype())?;
            Var::from_tensor(p)?.set(&new)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn first_step_moves_each_weight_by_lr_against_the_gradient_sign() {
        let mut params = ParamStore::new();
        params.insert("w", Tensor::new(&[1.0f32, -2.0], &Device::Cpu).unwrap(), None);
        let params = params.trainable().unwrap();
        let w = params.get("w").unwrap().clone();
        let loss = (w.sqr().unwrap().sum_all().unwrap() * 0.5).unwrap(); // grad = w
        let store = loss.backward().unwrap();
        let grads: Gradients = [("w".to_string(), store.get(&w).unwrap().clone())].into();
        let settings = OptimizerSection { weight_decay: 0.0, ..OptimizerSection::default() };
        let mut opt = AdamW::new(settings, &params).unwrap();
        opt.step(&params, &grads, 0.1, 1.0, &|_| true).unwrap();
        // Bias-corrected first step: update = g / |g| (up to eps).
        let got = params.get("w").unwrap().to_vec1::<f32>().unwrap();
        assert!((got[0] - 0.9).abs() < 1e-5 && (got[1] + 1.9).abs() < 1e-5, "{got:?}");
    }

    #[test]
    fn norms_and_biases_are_not_decayed() {
        assert!(!decays("model.layers.0.input_layernorm.weight"));
        assert!(!decays("model.layers.0.self_attn.q_proj.bias"));
        assert!(decays("model.layers.0.mlp.experts.1.up_proj.weight"));
    }
}

//! AdamW with f32 moments, decoupled weight decay (not on norms and biases) and
//! global-norm gradient clipping, updating the model's variables in place.

use std::collections::BTreeMap;

use candle_core::{DType, Result, Tensor, Var};
use rayon::prelude::*;

use super::config::OptimizerSection;
use crate::model::params::ParamStore;

mod in_place;

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
            // Two buffers: the update writes each moment in place.
            let zeros = || Tensor::zeros(p.dims(), DType::F32, p.device());
            moments.insert(name.clone(), (zeros()?, zeros()?));
        }
        Ok(Self { settings, steps: 0, moments })
    }

    /// Global L2 norm of the gradients of `params`.
    pub fn grad_norm(grads: &Gradients) -> Result<f64> {
        let mut sum = 0f64;
        for g in grads.values() {
            sum += Self::grad_squares(g)?;
        }
        Ok(sum.sqrt())
    }

    /// The sum of squares of one gradient, in f64: the gradient norm's share of one
    /// parameter (a job that splits the experts adds the shares in the same order).
    ///
    /// Fixed chunks summed in parallel, then their sums in order: the same value on any
    /// number of threads (a quarter of a billion squares took 2 % of a real-shape step
    /// on one thread).
    pub fn grad_squares(g: &Tensor) -> Result<f64> {
        let squares = |values: &[f32]| {
            let partial: Vec<f64> = values.par_chunks(SQUARES_CHUNK).map(|c| c.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>()).collect();
            Ok(partial.iter().sum::<f64>())
        };
        match in_place::with_values(g, squares)? {
            Some(squares) => Ok(squares),
            None => g.to_dtype(DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>(),
        }
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
            let (m, v) = self.moments.get_mut(name).ok_or_else(|| candle_core::Error::Msg(format!("no optimizer state for `{name}`")))?;
            let step = FusedStep { b1, b2, c1, c2, eps: s.eps, lr, decay: if decays(name) { s.weight_decay } else { 0.0 }, grad_scale };
            if step.apply_in_place(p, g, m, v)? {
                continue;
            }
            tracing::debug!(parameter = %name, gradient_contiguous = g.is_contiguous(), "AdamW composes candle's ops (not one in-place pass)");
            // Detached: a gradient that still carried a graph would chain the moments to
            // every step's graph.
            let g = (g.detach().to_dtype(DType::F32)? * grad_scale)?;
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

/// One AdamW update of one parameter as a single pass over parameter, gradient and both
/// moments (candle's composition made a dozen passes and tensors per parameter: a
/// tenth of a small model's step).
struct FusedStep {
    b1: f64,
    b2: f64,
    c1: f64,
    c2: f64,
    eps: f64,
    lr: f64,
    decay: f64,
    grad_scale: f64,
}

/// Elements per parallel chunk.
const STEP_CHUNK: usize = 1 << 14;

/// Elements per partial sum of the gradient norm (fixed, so the sum does not depend on
/// the thread count).
const SQUARES_CHUNK: usize = 1 << 16;

impl FusedStep {
    /// Updates `p`, `m` and `v` where they lie, for f32 CPU tensors of one size in four
    /// buffers; `false` (nothing touched) for any other: the caller composes candle's ops.
    fn apply_in_place(&self, p: &Tensor, g: &Tensor, m: &Tensor, v: &Tensor) -> Result<bool> {
        let buffers = [p, g, m, v].map(in_place::f32_buffer);
        let distinct = buffers.iter().enumerate().all(|(i, b)| b.is_some() && !buffers[..i].contains(b));
        if !distinct || [g, m, v].iter().any(|t| t.elem_count() != p.elem_count()) {
            return Ok(false);
        }
        let f = |x: f64| x as f32;
        let (b1, b2, one_b1, one_b2) = (f(self.b1), f(self.b2), f(1.0 - self.b1), f(1.0 - self.b2));
        let (c1, c2, eps, lr, keep, scale) = (f(self.c1), f(self.c2), f(self.eps), f(self.lr), f(1.0 - self.lr * self.decay), f(self.grad_scale));
        let update = |pv: &mut [f32], mv: &mut [f32], vv: &mut [f32], gv: &[f32]| {
            pv.par_chunks_mut(STEP_CHUNK).zip(mv.par_chunks_mut(STEP_CHUNK).zip(vv.par_chunks_mut(STEP_CHUNK))).zip(gv.par_chunks(STEP_CHUNK)).for_each(|((p, (m, v)), g)| {
                for (((p, m), v), &g) in p.iter_mut().zip(m.iter_mut()).zip(v.iter_mut()).zip(g) {
                    let g = g * scale;
                    *m = *m * b1 + g * one_b1;
                    *v = *v * b2 + g * g * one_b2;
                    let update = (*m / c1) / ((*v / c2).sqrt() + eps);
                    *p = *p * keep - update * lr;
                }
            });
        };
        // m, v and p locked for writing one inside the other (four distinct buffers,
        // checked above), g for reading.
        let with_g = |pv: &mut [f32], mv: &mut [f32], vv: &mut [f32]| {
            in_place::with_values(g, |gv| {
                update(pv, mv, vv, gv);
                Ok(())
            })
        };
        let with_p = |mv: &mut [f32], vv: &mut [f32]| in_place::with_values_mut(p, |pv| with_g(pv, mv, vv)).map(Option::flatten);
        let with_v = |mv: &mut [f32]| in_place::with_values_mut(v, |vv| with_p(mv, vv)).map(Option::flatten);
        Ok(in_place::with_values_mut(m, with_v)?.flatten().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// Three fused steps with decay and gradient scaling against AdamW computed in f64.
    #[test]
    fn fused_steps_match_adamw_in_f64() {
        let mut rng = crate::model::init::SplitMix64(8);
        let w0: Vec<f32> = (0..40_000).map(|_| rng.normal() as f32).collect();
        let mut params = ParamStore::new();
        params.insert("layers.0.w", Tensor::from_vec(w0.clone(), w0.len(), &Device::Cpu).unwrap(), None);
        let params = params.trainable().unwrap();
        let settings = OptimizerSection { weight_decay: 0.1, ..OptimizerSection::default() };
        let (lr, scale) = (0.01, 0.5);
        let mut opt = AdamW::new(settings.clone(), &params).unwrap();
        let (mut p, mut m, mut v) = (w0.iter().map(|&x| x as f64).collect::<Vec<_>>(), vec![0f64; w0.len()], vec![0f64; w0.len()]);
        for step in 1..=3 {
            let g: Vec<f32> = (0..w0.len()).map(|_| rng.normal() as f32).collect();
            let grads: Gradients = [("layers.0.w".to_string(), Tensor::from_vec(g.clone(), g.len(), &Device::Cpu).unwrap())].into();
            opt.step(&params, &grads, lr, scale, &|_| true).unwrap();
            let (c1, c2) = (1.0 - settings.beta1.powi(step), 1.0 - settings.beta2.powi(step));
            for i in 0..p.len() {
                let g = g[i] as f64 * scale;
                m[i] = settings.beta1 * m[i] + (1.0 - settings.beta1) * g;
                v[i] = settings.beta2 * v[i] + (1.0 - settings.beta2) * g * g;
                p[i] = p[i] * (1.0 - lr * settings.weight_decay) - lr * (m[i] / c1) / ((v[i] / c2).sqrt() + settings.eps);
            }
        }
        let got = params.get("layers.0.w").unwrap().to_vec1::<f32>().unwrap();
        let worst = got.iter().zip(&p).map(|(a, b)| (*a as f64 - b).abs()).fold(0f64, f64::max);
        assert!(worst < 1e-5, "largest difference from f64 AdamW: {worst}");
    }

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

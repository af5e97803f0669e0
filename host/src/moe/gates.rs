//! Router scores and combine weights as differentiable tensors: the part of routing that
//! gradients flow through (to the router weights and, via the gates, to the tokens).

use candle_core::{D, DType, Result, Tensor};

use super::spec::{LogitNorm, RouterSpec, ScoreFunction, TopkOrder};
use crate::model::ops::{sigmoid, softmax_last_dim};

/// Skywork's ε added to the standard deviation: a zero router has σ = 0.
pub const SKYWORK_EPS: f64 = 1e-6;

/// A layer's router outputs for one micro-batch.
pub struct RouterScores {
    /// Logits after the spec's normalisation, `[T, E]` (f32).
    pub logits: Tensor,
    /// Scores `s` (softmax or sigmoid of `logits`), `[T, E]`.
    pub scores: Tensor,
    /// The full score distribution `p` (rows sum to 1), `[T, E]`: for the
    /// load-balancing loss and the gate statistics.
    pub probs: Tensor,
}

/// Skywork-MoE gating-logit normalisation: per token, `λ (z − μ) / (σ + ε)` with the
/// unbiased standard deviation over experts.
pub fn skywork_normalise(z: &Tensor, lambda: f64) -> Result<Tensor> {
    let experts = z.dim(D::Minus1)?;
    let centred = z.broadcast_sub(&z.mean_keepdim(D::Minus1)?)?;
    let var = (centred.sqr()?.sum_keepdim(D::Minus1)? / (experts.saturating_sub(1).max(1) as f64))?;
    let sigma = (var.sqrt()? + SKYWORK_EPS)?;
    centred.broadcast_div(&sigma)? * lambda
}

/// Routing runs in f32 at least (half-precision logits make near-ties arbitrary), in
/// f64 when the model does.
pub fn router_dtype(model: DType) -> DType {
    if model == DType::F64 { DType::F64 } else { DType::F32 }
}

/// Scores from raw router logits `z` (`[T, E]`) as the spec asks.
pub fn router_scores(z: &Tensor, spec: &RouterSpec) -> Result<RouterScores> {
    let z = z.to_dtype(router_dtype(z.dtype()))?;
    let logits = match spec.logit_norm {
        LogitNorm::None => z,
        LogitNorm::Skywork(lambda) => skywork_normalise(&z, lambda as f64)?,
    };
    let (scores, probs) = match spec.score {
        ScoreFunction::Softmax => {
            let s = softmax_last_dim(&logits)?;
            (s.clone(), s)
        }
        ScoreFunction::Sigmoid => {
            let s = sigmoid(&logits)?;
            let p = s.broadcast_div(&s.sum_keepdim(D::Minus1)?)?;
            (s, p)
        }
    };
    Ok(RouterScores { logits, scores, probs })
}

/// Token-choice combine weights, one per slot `t*k + j`, for the experts
/// `experts_per_slot` chose: the scores of the chosen experts (top-k-then-softmax:
/// a softmax over the chosen logits), renormalised if asked, times the spec's scaling.
pub fn token_choice_gates(scores: &RouterScores, experts_per_slot: &[u32], spec: &RouterSpec) -> Result<Tensor> {
    let (tokens, experts) = scores.scores.dims2()?;
    let k = experts_per_slot.len() / tokens.max(1);
    let flat: Vec<u32> = experts_per_slot.iter().enumerate().map(|(slot, &e)| (slot / k * experts) as u32 + e).collect();
    let flat = Tensor::from_vec(flat, experts_per_slot.len(), scores.scores.device())?;
    let pick = |t: &Tensor| -> Result<Tensor> { t.flatten_all()?.index_select(&flat, 0)?.reshape((tokens, k)) };
    let gates = match spec.order {
        TopkOrder::TopkThenSoftmax => softmax_last_dim(&pick(&scores.logits)?)?,
        TopkOrder::SoftmaxThenTopk => {
            let chosen = pick(&scores.scores)?;
            if spec.renormalize { chosen.broadcast_div(&chosen.sum_keepdim(D::Minus1)?)? } else { chosen }
        }
    };
    (gates * spec.scaling as f64)?.flatten_all()
}

/// Expert-choice combine weights, one per `(token, expert)` pair `t*E + e`: the
/// scores times the spec's scaling.
pub fn expert_choice_gates(scores: &RouterScores, spec: &RouterSpec) -> Result<Tensor> {
    scores.scores.flatten_all()? * spec.scaling as f64
}

//! Token-choice top-k routing over softmax scores: Mixtral, sparse upcycling and
//! Drop-Upcycling route this way (METHODS.md §1.1, §1.5). Also implements the per-token
//! `route` escape hatch with the same policy, so the host can check and time it against
//! its native routing.

use recast_sdk::router::*;
use serde::Deserialize;

/// Parameters; see README.md.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    top_k: u32,
    renormalize: bool,
    capacity_factor: Option<f32>,
    drop_policy: String,
    per_token_route: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params { top_k: 2, renormalize: true, capacity_factor: None, drop_policy: "probs".into(), per_token_route: false }
    }
}

struct TopKSoftmax {
    spec: RouterSpec,
}

impl Plugin for TopKSoftmax {
    type Config = Params;

    fn new(p: Params, _: &Context) -> Result<Self, String> {
        if p.top_k == 0 {
            return Err("top_k must be at least 1".into());
        }
        let capacity = capacity(p.capacity_factor, &p.drop_policy)?;
        let spec = RouterSpec { renormalize: p.renormalize, capacity, per_token_route: p.per_token_route, ..RouterSpec::softmax_topk(p.top_k) };
        Ok(TopKSoftmax { spec })
    }
}

impl Router for TopKSoftmax {
    fn spec(&mut self, layer: &LayerInfo) -> Result<RouterSpec, String> {
        check_top_k(self.spec.top_k, layer)?;
        Ok(self.spec)
    }

    fn route(&mut self, _layer: &LayerInfo, logits: &TokenLogits) -> Result<RouteAssignment, String> {
        let (e, k) = (logits.experts as usize, self.spec.top_k as usize);
        let mut experts = Vec::with_capacity(logits.tokens as usize * k);
        let mut weights = Vec::with_capacity(logits.tokens as usize * k);
        let mut probs = vec![0f32; e];
        for row in logits.values.chunks_exact(e) {
            let max = row.iter().fold(f32::NEG_INFINITY, |m, &z| m.max(z));
            let mut sum = 0.0;
            for (p, &z) in probs.iter_mut().zip(row) {
                *p = (z - max).exp();
                sum += *p;
            }
            let start = experts.len();
            for _ in 0..k {
                // Highest score not yet taken; ties go to the lower expert index.
                let mut best = usize::MAX;
                for (i, &p) in probs.iter().enumerate() {
                    if p >= 0.0 && (best == usize::MAX || p > probs[best]) {
                        best = i;
                    }
                }
                experts.push(best as u32);
                weights.push(probs[best] / sum);
                probs[best] = -1.0;
            }
            if self.spec.renormalize {
                let total: f32 = weights[start..].iter().sum();
                weights[start..].iter_mut().for_each(|w| *w /= total);
            }
        }
        Ok(RouteAssignment { top_k: k as u32, experts, weights })
    }
}

recast_sdk::export_router!(TopKSoftmax);

//! Hash routing (in the spirit of Roller et al. 2021's hash layers) through the per-token
//! `route` escape hatch (DESIGN.md §1): each token's experts are chosen by a
//! locality-sensitive hash of its router logits — the sign pattern of `z_t = W_g x_t`,
//! i.e. random-hyperplane LSH of the hidden state with the router rows as hyperplanes —
//! so similar tokens share experts, and the choice needs no learned gate. Combine weights
//! are uniform (1/k). The host runs this per micro-batch and reports its time as the
//! escape hatch's overhead.

use recast_sdk::router::*;
use serde::Deserialize;

/// Parameters; see README.md.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    top_k: u32,
}

impl Default for Params {
    fn default() -> Self {
        Params { top_k: 1 }
    }
}

struct LshRoute {
    top_k: u32,
}

impl Plugin for LshRoute {
    type Config = Params;

    fn new(p: Params, _: &Context) -> Result<Self, String> {
        if p.top_k == 0 {
            return Err("top_k must be at least 1".into());
        }
        Ok(LshRoute { top_k: p.top_k })
    }
}

/// SplitMix64's finaliser: a well-mixed 64-bit hash step.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The `k` distinct experts of one token: successive hashes of its logits' sign pattern.
pub fn experts_for(row: &[f32], k: usize) -> Vec<u32> {
    let signs = row.iter().enumerate().fold(0u64, |acc, (i, &z)| if z > 0.0 { acc ^ mix(i as u64 + 1) } else { acc });
    let e = row.len() as u64;
    let mut chosen = Vec::with_capacity(k);
    let mut h = signs;
    while chosen.len() < k {
        h = mix(h);
        let candidate = (h % e) as u32;
        if !chosen.contains(&candidate) {
            chosen.push(candidate);
        }
    }
    chosen
}

impl Router for LshRoute {
    fn spec(&mut self, layer: &LayerInfo) -> Result<RouterSpec, String> {
        check_top_k(self.top_k, layer)?;
        Ok(RouterSpec { per_token_route: true, renormalize: false, ..RouterSpec::softmax_topk(self.top_k) })
    }

    fn route(&mut self, _layer: &LayerInfo, logits: &TokenLogits) -> Result<RouteAssignment, String> {
        let (e, k) = (logits.experts as usize, self.top_k as usize);
        let mut experts = Vec::with_capacity(logits.tokens as usize * k);
        for row in logits.values.chunks_exact(e) {
            experts.extend(experts_for(row, k));
        }
        let weights = vec![1.0 / k as f32; experts.len()];
        Ok(RouteAssignment { top_k: k as u32, experts, weights })
    }
}

recast_sdk::export_router!(LshRoute);

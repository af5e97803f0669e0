//! Skywork-MoE's adaptive auxiliary-loss coefficients (METHODS.md §2.3): per layer,
//! `α̂ = min(ξ·d, α_max)` from the layer's drop rate `d` of the last step, and
//! `α ← β·α + (1−β)·α̂`. Layers that drop tokens get more balancing, layers that do not
//! get less.

use std::collections::BTreeMap;

use recast_sdk::aux_schedule::*;
use recast_sdk::config::non_negative;
use serde::{Deserialize, Serialize};

/// Parameters; see README.md.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    xi: f32,
    alpha_max: f32,
    beta: f32,
    alpha_init: Option<f32>,
    z_loss: f32,
}

impl Default for Params {
    fn default() -> Self {
        Params { xi: 0.2, alpha_max: 0.01, beta: 0.99, alpha_init: None, z_loss: 0.0 }
    }
}

/// The coefficient of every layer seen so far: the whole state.
#[derive(Default, Serialize, Deserialize)]
struct Alphas(BTreeMap<u32, f32>);

struct SkyworkAdaptive {
    p: Params,
    alphas: Alphas,
}

impl Plugin for SkyworkAdaptive {
    type Config = Params;

    fn new(p: Params, _: &Context) -> Result<Self, String> {
        non_negative("xi", p.xi)?;
        non_negative("alpha_max", p.alpha_max)?;
        non_negative("z_loss", p.z_loss)?;
        if !(0.0..=1.0).contains(&p.beta) {
            return Err(format!("beta must be in [0, 1], not {}", p.beta));
        }
        if let Some(a) = p.alpha_init {
            non_negative("alpha_init", a)?;
        }
        Ok(SkyworkAdaptive { p, alphas: Alphas::default() })
    }

    fn save_state(&self) -> Vec<u8> {
        recast_sdk::state_to_bytes(&self.alphas)
    }

    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        self.alphas = recast_sdk::state_from_bytes(state)?;
        Ok(())
    }
}

impl AuxSchedule for SkyworkAdaptive {
    fn coefficients(&mut self, _step: u64, moe_layers: &[u32], stats: &[LayerStats]) -> Result<Vec<LayerCoefficients>, String> {
        let p = &self.p;
        let start = p.alpha_init.unwrap_or(p.alpha_max);
        Ok(moe_layers
            .iter()
            .map(|&layer| {
                let alpha = self.alphas.0.entry(layer).or_insert(start);
                if let Some(s) = stats.iter().find(|s| s.layer == layer) {
                    // The drop rate at capacity 1.25, reported for dropless layers too.
                    let target = (p.xi * s.overflow_rate).min(p.alpha_max);
                    *alpha = p.beta * *alpha + (1.0 - p.beta) * target;
                }
                LayerCoefficients { layer, load_balance: *alpha, z_loss: p.z_loss }
            })
            .collect())
    }
}

recast_sdk::export_aux_schedule!(SkyworkAdaptive);

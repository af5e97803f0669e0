//! Auxiliary-loss weights on a schedule (METHODS.md §2.4): linear warm-up from 0 to the
//! configured weights, constant, then a linear decay to `final_ratio` of them.

use recast_sdk::aux_schedule::*;
use recast_sdk::config::non_negative;
use serde::Deserialize;

/// Parameters; see README.md.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    load_balance: f32,
    z_loss: f32,
    warmup_steps: u64,
    decay_start: Option<u64>,
    decay_steps: u64,
    final_ratio: f32,
}

impl Default for Params {
    fn default() -> Self {
        Params { load_balance: 0.01, z_loss: 0.001, warmup_steps: 100, decay_start: None, decay_steps: 0, final_ratio: 0.0 }
    }
}

struct WarmupDecay {
    p: Params,
}

impl Plugin for WarmupDecay {
    type Config = Params;

    fn new(p: Params, _: &Context) -> Result<Self, String> {
        non_negative("load_balance", p.load_balance)?;
        non_negative("z_loss", p.z_loss)?;
        non_negative("final_ratio", p.final_ratio)?;
        Ok(WarmupDecay { p })
    }
}

/// The multiplier at `step`.
fn factor(p: &Params, step: u64) -> f32 {
    if step < p.warmup_steps {
        return (step + 1) as f32 / p.warmup_steps as f32;
    }
    match p.decay_start {
        Some(start) if step >= start => {
            let progress = if p.decay_steps == 0 { 1.0 } else { ((step - start) as f32 / p.decay_steps as f32).min(1.0) };
            1.0 - (1.0 - p.final_ratio) * progress
        }
        _ => 1.0,
    }
}

impl AuxSchedule for WarmupDecay {
    fn coefficients(&mut self, step: u64, moe_layers: &[u32], _stats: &[LayerStats]) -> Result<Vec<LayerCoefficients>, String> {
        let f = factor(&self.p, step);
        Ok(moe_layers.iter().map(|&layer| LayerCoefficients { layer, load_balance: self.p.load_balance * f, z_loss: self.p.z_loss * f }).collect())
    }
}

recast_sdk::export_aux_schedule!(WarmupDecay);

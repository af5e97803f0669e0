//! Constant auxiliary-loss coefficients (METHODS.md §2.4): one load-balancing and one
//! z-loss weight for every MoE layer, with optional per-layer overrides.

use recast_sdk::aux_schedule::*;
use recast_sdk::config::non_negative as check;
use serde::Deserialize;

/// Parameters; see README.md.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    load_balance: f32,
    z_loss: f32,
    layers: Vec<LayerOverride>,
}

impl Default for Params {
    fn default() -> Self {
        Params { load_balance: 0.01, z_loss: 0.001, layers: Vec::new() }
    }
}

/// Coefficients for one layer; unset fields keep the global value.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LayerOverride {
    layer: u32,
    load_balance: Option<f32>,
    z_loss: Option<f32>,
}

struct Constant {
    params: Params,
}

impl Plugin for Constant {
    type Config = Params;

    fn new(params: Params, _: &Context) -> Result<Self, String> {
        check("load_balance", params.load_balance)?;
        check("z_loss", params.z_loss)?;
        for o in &params.layers {
            check(&format!("layers[layer = {}].load_balance", o.layer), o.load_balance.unwrap_or(0.0))?;
            check(&format!("layers[layer = {}].z_loss", o.layer), o.z_loss.unwrap_or(0.0))?;
        }
        Ok(Constant { params })
    }
}

impl AuxSchedule for Constant {
    fn coefficients(&mut self, _step: u64, moe_layers: &[u32], _stats: &[LayerStats]) -> Result<Vec<LayerCoefficients>, String> {
        let p = &self.params;
        Ok(moe_layers
            .iter()
            .map(|&layer| {
                let o = p.layers.iter().rev().find(|o| o.layer == layer);
                LayerCoefficients { layer, load_balance: o.and_then(|o| o.load_balance).unwrap_or(p.load_balance), z_loss: o.and_then(|o| o.z_loss).unwrap_or(p.z_loss) }
            })
            .collect())
    }
}

recast_sdk::export_aux_schedule!(Constant);

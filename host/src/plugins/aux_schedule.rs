//! The aux-schedule adapter: typed, validated calls into a coefficient schedule.

use super::component::PluginComponent;
use super::engine::PluginEngine;
use super::error::{OutputViolation, PluginError};
use super::instance::PluginInstance;
use super::kind::PluginKind;
use super::limits::PluginLimits;
use super::wit::aux_schedule;
pub use super::wit::aux_schedule_types::LayerCoefficients;
pub use super::wit::types::LayerStats;

/// Largest load-balancing or z-loss coefficient: the papers use 1e-4 .. 1e-1; far larger
/// ones swamp the language-model loss and overflow it (3.4e38 turned it into NaN).
pub const MAX_COEFFICIENT: f64 = 100.0;

/// An auxiliary-loss schedule plugin.
pub struct AuxSchedulePlugin {
    instance: PluginInstance,
    guest: aux_schedule::Guest,
}

impl AuxSchedulePlugin {
    /// Instantiate and configure an aux schedule.
    pub fn new(engine: &PluginEngine, component: &PluginComponent, params: &str, seed: u64, limits: PluginLimits) -> Result<Self, PluginError> {
        let mut instance = PluginInstance::new(engine, component, PluginKind::AuxSchedule, params, seed, limits)?;
        let guest = instance.exports(|pre, store, inst| aux_schedule::GuestIndices::new(pre)?.load(store, inst))?;
        Ok(AuxSchedulePlugin { instance, guest })
    }

    /// The lifecycle and bookkeeping shared by every kind.
    pub fn instance(&mut self) -> &mut PluginInstance {
        &mut self.instance
    }

    /// Coefficients for `step`, one per MoE layer in `moe_layers` order, validated.
    pub fn coefficients(&mut self, step: u64, moe_layers: &[u32], stats: &[LayerStats]) -> Result<Vec<LayerCoefficients>, PluginError> {
        self.instance.set_step(Some(step));
        let guest = &self.guest;
        let sandbox = &mut self.instance.sandbox;
        let coefficients = sandbox.call_fallible("coefficients", |store| guest.call_coefficients(store, step, moe_layers, stats))?;
        validate_coefficients(&coefficients, moe_layers).map_err(|v| sandbox.invalid("coefficients", v))?;
        Ok(coefficients)
    }
}

/// One entry per MoE layer, in order, each coefficient in `0 ..= MAX_COEFFICIENT`.
pub fn validate_coefficients(coefficients: &[LayerCoefficients], moe_layers: &[u32]) -> Result<(), OutputViolation> {
    OutputViolation::length(|| "coefficients".into(), moe_layers.len(), coefficients.len())?;
    for (i, (c, &layer)) in coefficients.iter().zip(moe_layers).enumerate() {
        if c.layer != layer {
            return Err(OutputViolation::Inconsistent { field: format!("coefficients[{i}].layer"), reason: format!("is {}, expected layer {layer} (same order as moe-layers)", c.layer) });
        }
        let allowed = format!("0 ..= {MAX_COEFFICIENT}");
        OutputViolation::within(|| format!("coefficients[{i}].load-balance"), c.load_balance as f64, 0.0, MAX_COEFFICIENT, &allowed)?;
        OutputViolation::within(|| format!("coefficients[{i}].z-loss"), c.z_loss as f64, 0.0, MAX_COEFFICIENT, &allowed)?;
    }
    Ok(())
}

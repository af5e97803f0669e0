//! The aux-schedule adapter: typed, validated calls into a coefficient schedule.

use super::conformance::{self, Log};
use super::error::{OutputViolation, PluginError};
use super::host_api::PluginState;
use super::kind::{Kind, Plugin, PluginKind, ScaffoldTemplates, lifecycle_calls};
use super::wit::aux_schedule;
pub use super::wit::aux_schedule_types::LayerCoefficients;
pub use super::wit::types::LayerStats;
use super::wit::types::PluginKind as WitKind;
use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

/// Largest load-balancing or z-loss coefficient: the papers use 1e-4 .. 1e-1; far larger
/// ones swamp the language-model loss and overflow it (3.4e38 turned it into NaN).
pub const MAX_COEFFICIENT: f64 = 100.0;

/// The aux-schedule kind: schedules of the auxiliary-loss coefficients.
pub struct AuxScheduleKind;

impl Kind for AuxScheduleKind {
    const KIND: PluginKind = PluginKind::AuxSchedule;
    const NAME: &'static str = "aux-schedule";
    const RUN_ROLE: Option<&'static str> = Some("aux_schedule");
    const WIT: WitKind = WitKind::AuxSchedule;
    const TEMPLATES: ScaffoldTemplates =
        ScaffoldTemplates { rust: include_str!("templates/aux-schedule.rs.tmpl"), python: include_str!("templates/aux-schedule.py.tmpl"), javascript: include_str!("templates/aux-schedule.js.tmpl") };
    lifecycle_calls!(aux_schedule::Guest);

    fn load(pre: &InstancePre<PluginState>, store: &mut Store<PluginState>, instance: &Instance) -> wasmtime::Result<Self::Guest> {
        aux_schedule::GuestIndices::new(pre)?.load(store, instance)
    }

    /// Coefficients at the first step, with balanced statistics, and late with skewed ones.
    fn conformance(p: &mut AuxSchedulePlugin, log: &mut Log<'_>) -> Result<(), PluginError> {
        let layers = [0, 1, 2, 3];
        for (step, stats) in [(0, Vec::new()), (1, conformance::synthetic_stats(&layers, 8, false)), (1000, conformance::synthetic_stats(&layers, 8, true))] {
            let c = p.coefficients(step, &layers, &stats)?;
            let detail = c.iter().map(|c| format!("L{}: lb {:.3e} z {:.3e}", c.layer, c.load_balance, c.z_loss)).collect::<Vec<_>>().join(", ");
            log(p.instance(), format!("coefficients(step {step})"), detail);
        }
        Ok(())
    }
}

/// An auxiliary-loss schedule plugin.
pub type AuxSchedulePlugin = Plugin<AuxScheduleKind>;

impl AuxSchedulePlugin {
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

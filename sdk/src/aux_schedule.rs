//! Auxiliary-loss schedules: the [`AuxSchedule`] trait and
//! [`export_aux_schedule!`](crate::export_aux_schedule).

pub use crate::bindings::aux_schedule_world::recast::plugins::aux_schedule_types::LayerCoefficients;
pub use crate::plugin::{Context, Plugin};
pub use crate::types::LayerStats;

/// A schedule for the load-balancing and z-loss coefficients of each MoE layer.
pub trait AuxSchedule: Plugin {
    /// Coefficients for `step`, one per entry of `moe_layers`, in that order. `stats`
    /// holds the previous step's stats (empty at the first step).
    fn coefficients(&mut self, step: u64, moe_layers: &[u32], stats: &[LayerStats]) -> Result<Vec<LayerCoefficients>, String>;
}

/// Export a type implementing [`AuxSchedule`] as the component's aux schedule.
#[macro_export]
macro_rules! export_aux_schedule {
    ($ty:ty) => {
        #[doc(hidden)]
        pub struct __RecastAuxScheduleExport;
        #[doc(hidden)]
        static __RECAST_AUX_SCHEDULE: $crate::__private::Slot<$ty> = $crate::__private::Slot::new();
        impl $crate::bindings::aux_schedule_world::exports::recast::plugins::aux_schedule::Guest for __RecastAuxScheduleExport {
            $crate::__lifecycle_fns!(__RECAST_AUX_SCHEDULE, AuxSchedule);
            fn coefficients(
                step: u64,
                moe_layers: Vec<u32>,
                stats: Vec<$crate::types::LayerStats>,
            ) -> Result<Vec<$crate::aux_schedule::LayerCoefficients>, String> {
                __RECAST_AUX_SCHEDULE.with(|p| $crate::aux_schedule::AuxSchedule::coefficients(p, step, &moe_layers, &stats))
            }
        }
        $crate::bindings::aux_schedule_world::export_aux_schedule_world!(__RecastAuxScheduleExport with_types_in $crate::bindings::aux_schedule_world);
    };
}

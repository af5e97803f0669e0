//! Data samplers: the [`Sampler`] trait and [`export_sampler!`](crate::export_sampler).

pub use crate::bindings::sampler_world::recast::plugins::sampler_types::{DomainStats, Mixture, SampleRequest};
pub use crate::plugin::{Context, Plugin};

/// A policy that chooses each batch's domain mixture.
pub trait Sampler: Plugin {
    /// The mixture of the coming step.
    fn next(&mut self, request: &SampleRequest) -> Result<Mixture, String>;
}

/// Export a type implementing [`Sampler`] as the component's sampler.
#[macro_export]
macro_rules! export_sampler {
    ($ty:ty) => {
        #[doc(hidden)]
        pub struct __RecastSamplerExport;
        #[doc(hidden)]
        static __RECAST_SAMPLER: $crate::__private::Slot<$ty> = $crate::__private::Slot::new();
        impl $crate::bindings::sampler_world::exports::recast::plugins::sampler::Guest for __RecastSamplerExport {
            $crate::__lifecycle_fns!(__RECAST_SAMPLER, Sampler);
            fn next(request: $crate::sampler::SampleRequest) -> Result<$crate::sampler::Mixture, String> {
                __RECAST_SAMPLER.with(|p| $crate::sampler::Sampler::next(p, &request))
            }
        }
        $crate::bindings::sampler_world::export_sampler_world!(__RecastSamplerExport with_types_in $crate::bindings::sampler_world);
    };
}

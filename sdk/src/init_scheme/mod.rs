//! Initialisation (upcycling) schemes: the [`InitScheme`] trait and
//! [`export_init_scheme!`](crate::export_init_scheme).

pub use crate::bindings::init_scheme_world::recast::plugins::init_scheme_types::{
    CopyOp, Distribution, FillOp, GatherOp, GroupCentroidParams, InitOp, InitPlan, ModelShape, MoeLayerShape, NoiseOp, NormalParams, PermuteOp, ReinitOp, RouterInit, RouterInitOp, ScaleOp,
    SourceModel, TargetModel, TensorInfo, TensorRef,
};
pub use crate::plugin::{Context, Plugin};

pub mod build;

/// A scheme that turns source checkpoints into a plan of ops on named tensors.
pub trait InitScheme: Plugin {
    /// The plan for these sources (in `--source` order).
    fn plan(&mut self, sources: &[SourceModel]) -> Result<InitPlan, String>;
}

impl TensorRef {
    /// A tensor of source checkpoint `source`.
    pub fn source(source: u32, name: impl Into<String>) -> Self {
        TensorRef { source: Some(source), name: name.into() }
    }

    /// A target tensor written by an earlier op.
    pub fn target(name: impl Into<String>) -> Self {
        TensorRef { source: None, name: name.into() }
    }
}

/// Export a type implementing [`InitScheme`] as the component's init scheme.
#[macro_export]
macro_rules! export_init_scheme {
    ($ty:ty) => {
        #[doc(hidden)]
        pub struct __RecastInitSchemeExport;
        #[doc(hidden)]
        static __RECAST_INIT_SCHEME: $crate::__private::Slot<$ty> = $crate::__private::Slot::new();
        impl $crate::bindings::init_scheme_world::exports::recast::plugins::init_scheme::Guest for __RecastInitSchemeExport {
            $crate::__lifecycle_fns!(__RECAST_INIT_SCHEME, InitScheme);
            fn plan(
                sources: Vec<$crate::init_scheme::SourceModel>,
            ) -> Result<$crate::init_scheme::InitPlan, String> {
                __RECAST_INIT_SCHEME.with(|p| $crate::init_scheme::InitScheme::plan(p, &sources))
            }
        }
        $crate::bindings::init_scheme_world::export_init_scheme_world!(__RecastInitSchemeExport with_types_in $crate::bindings::init_scheme_world);
    };
}

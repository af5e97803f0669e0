//! The init-scheme adapter: typed calls into an upcycling scheme, with the plan checked
//! in full before anything is written.

mod validate;

use super::component::PluginComponent;
use super::engine::PluginEngine;
use super::error::PluginError;
use super::instance::PluginInstance;
use super::kind::PluginKind;
use super::limits::PluginLimits;
use super::wit::init_scheme;
pub use super::wit::init_scheme_types::{
    CopyOp, Distribution, FillOp, GatherOp, GroupCentroidParams, InitOp, InitPlan, ModelShape, MoeLayerShape, NoiseOp, NormalParams, PermuteOp, ReinitOp, RouterInit, RouterInitOp, ScaleOp,
    SourceModel, TargetModel, TensorInfo, TensorRef,
};
use crate::contract::InitPlanner;
pub use validate::{PlannedTensors, validate_plan};

/// An initialisation-scheme plugin.
pub struct InitSchemePlugin {
    instance: PluginInstance,
    guest: init_scheme::Guest,
}

impl InitSchemePlugin {
    /// Instantiate and configure an init scheme.
    pub fn new(engine: &PluginEngine, component: &PluginComponent, params: &str, seed: u64, limits: PluginLimits) -> Result<Self, PluginError> {
        let mut instance = PluginInstance::new(engine, component, PluginKind::InitScheme, params, seed, limits)?;
        let guest = instance.exports(|pre, store, inst| init_scheme::GuestIndices::new(pre)?.load(store, inst))?;
        Ok(InitSchemePlugin { instance, guest })
    }

    /// The lifecycle and bookkeeping shared by every kind.
    pub fn instance(&mut self) -> &mut PluginInstance {
        &mut self.instance
    }

    /// The plan for `sources`, validated op by op against the sources' tensors; returns
    /// it with the shapes of every target tensor it writes.
    pub fn plan(&mut self, sources: &[SourceModel]) -> Result<(InitPlan, PlannedTensors), PluginError> {
        <Self as InitPlanner>::plan(self, sources)
    }
}

impl InitPlanner for InitSchemePlugin {
    type Error = PluginError;

    fn plan(&mut self, sources: &[SourceModel]) -> Result<(InitPlan, PlannedTensors), PluginError> {
        let guest = &self.guest;
        let sandbox = &mut self.instance.sandbox;
        let plan = sandbox.call_fallible("plan", |store| guest.call_plan(store, sources))?;
        let tensors = validate_plan(&plan, sources).map_err(|v| sandbox.invalid("plan", v))?;
        Ok((plan, tensors))
    }
}

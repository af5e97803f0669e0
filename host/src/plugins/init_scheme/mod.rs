//! The init-scheme adapter: typed calls into an upcycling scheme, with the plan checked
//! in full before anything is written.

mod validate;

use super::conformance::{self, Log};
use super::error::PluginError;
use super::host_api::PluginState;
use super::kind::{Kind, Plugin, PluginKind, ScaffoldTemplates, lifecycle_calls};
use super::wit::init_scheme;
pub use super::wit::init_scheme_types::{
    CopyOp, Distribution, FillOp, GatherOp, GroupCentroidParams, InitOp, InitPlan, ModelShape, MoeLayerShape, NoiseOp, NormalParams, PermuteOp, ReinitOp, RouterInit, RouterInitOp, ScaleOp,
    SourceModel, TargetModel, TensorInfo, TensorRef,
};
use super::wit::types::PluginKind as WitKind;
use crate::contract::InitPlanner;
pub use validate::{PlannedTensors, validate_plan};
use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

/// The init-scheme kind: upcycling schemes, run by `recast upcycle` (not during
/// training), written in Rust, Python or JavaScript (each SDK has the plan builders).
pub struct InitSchemeKind;

impl Kind for InitSchemeKind {
    const KIND: PluginKind = PluginKind::InitScheme;
    const NAME: &'static str = "init-scheme";
    const RUN_ROLE: Option<&'static str> = None;
    const WIT: WitKind = WitKind::InitScheme;
    const TEMPLATES: ScaffoldTemplates = ScaffoldTemplates {
        rust: include_str!("../templates/init-scheme.rs.tmpl"),
        python: include_str!("../templates/init-scheme.py.tmpl"),
        javascript: include_str!("../templates/init-scheme.js.tmpl"),
    };
    lifecycle_calls!(init_scheme::Guest);

    fn load(pre: &InstancePre<PluginState>, store: &mut Store<PluginState>, instance: &Instance) -> wasmtime::Result<Self::Guest> {
        init_scheme::GuestIndices::new(pre)?.load(store, instance)
    }

    /// A plan for a synthetic two-layer Llama, validated in full.
    fn conformance(p: &mut InitSchemePlugin, log: &mut Log<'_>) -> Result<(), PluginError> {
        let sources = [conformance::synthetic_source()];
        let (plan, tensors) = p.plan(&sources)?;
        let detail = format!("{} ops writing {} tensors, {} MoE layers", plan.ops.len(), tensors.len(), plan.target.moe_layers.len());
        log(p.instance(), "plan(synthetic 2-layer llama)".into(), detail);
        Ok(())
    }
}

/// An initialisation-scheme plugin.
pub type InitSchemePlugin = Plugin<InitSchemeKind>;

impl InitSchemePlugin {
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

//! The four lifecycle functions that open every kind's interface (`info`, `configure`,
//! `save-state`, `load-state`), called the same way whatever the kind.

use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

use super::host_api::PluginState;
use super::kind::PluginKind;
use super::wit::types::{PluginContext, PluginInfo};
use super::wit::{aux_schedule, init_scheme, router, sampler};

/// A component's exported interface, seen only through its lifecycle functions.
pub(crate) enum Lifecycle {
    Router(router::Guest),
    AuxSchedule(aux_schedule::Guest),
    InitScheme(init_scheme::Guest),
    Sampler(sampler::Guest),
}

/// Call the same function on whichever kind's bindings `$self` holds.
macro_rules! each_kind {
    ($self:expr, $guest:ident => $call:expr) => {
        match $self {
            Lifecycle::Router($guest) => $call,
            Lifecycle::AuxSchedule($guest) => $call,
            Lifecycle::InitScheme($guest) => $call,
            Lifecycle::Sampler($guest) => $call,
        }
    };
}

impl Lifecycle {
    pub(crate) fn load(kind: PluginKind, pre: &InstancePre<PluginState>, store: &mut Store<PluginState>, instance: &Instance) -> wasmtime::Result<Self> {
        Ok(match kind {
            PluginKind::Router => Lifecycle::Router(router::GuestIndices::new(pre)?.load(store, instance)?),
            PluginKind::AuxSchedule => Lifecycle::AuxSchedule(aux_schedule::GuestIndices::new(pre)?.load(store, instance)?),
            PluginKind::InitScheme => Lifecycle::InitScheme(init_scheme::GuestIndices::new(pre)?.load(store, instance)?),
            PluginKind::Sampler => Lifecycle::Sampler(sampler::GuestIndices::new(pre)?.load(store, instance)?),
        })
    }

    pub(crate) fn info(&self, store: &mut Store<PluginState>) -> wasmtime::Result<PluginInfo> {
        each_kind!(self, g => g.call_info(store))
    }

    pub(crate) fn configure(&self, store: &mut Store<PluginState>, params: &str, context: PluginContext) -> wasmtime::Result<Result<(), String>> {
        each_kind!(self, g => g.call_configure(store, params, context))
    }

    pub(crate) fn save_state(&self, store: &mut Store<PluginState>) -> wasmtime::Result<Vec<u8>> {
        each_kind!(self, g => g.call_save_state(store))
    }

    pub(crate) fn load_state(&self, store: &mut Store<PluginState>, state: &[u8]) -> wasmtime::Result<Result<(), String>> {
        each_kind!(self, g => g.call_load_state(store, state))
    }
}

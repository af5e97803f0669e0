//! The four plugin kinds. [`PluginKind`] names a kind at run time (configs, CLI, component
//! exports); the [`Kind`] trait holds everything the host knows about one kind — its
//! name, world and exports, its run-config role, its lifecycle calls, its conformance
//! calls and its scaffold templates — implemented once per kind next to that kind's
//! adapter. [`PluginKind::visit`] is the one place that turns the run-time name into the
//! type; everything else is generic over [`Kind`].

use std::fmt;

use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

use super::aux_schedule::AuxScheduleKind;
use super::conformance::Log;
use super::error::PluginError;
use super::host_api::PluginState;
use super::init_scheme::InitSchemeKind;
use super::instance::PluginInstance;
use super::router::RouterKind;
use super::sampler::SamplerKind;
use super::wit::types::{PluginContext, PluginInfo, PluginKind as WitKind};

/// The contract version this host speaks.
pub const WIT_VERSION: &str = "0.1.0";
/// The WIT package of every plugin interface.
pub const WIT_PACKAGE: &str = "recast:plugins";

/// One of the four plugin kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// Routing policy for MoE layers.
    Router,
    /// Schedule of auxiliary-loss coefficients.
    AuxSchedule,
    /// Weight-initialisation (upcycling) scheme.
    InitScheme,
    /// Data sampler choosing each batch's domain mixture.
    Sampler,
}

/// Source templates `recast plugin new` writes for a kind, one per language: every kind
/// can be written in Rust, Python and JavaScript.
#[derive(Clone, Copy, Debug)]
pub struct ScaffoldTemplates {
    /// The `src/lib.rs` of a Rust plugin.
    pub rust: &'static str,
    /// The `app.py` of a Python plugin (componentize-py).
    pub python: &'static str,
    /// The `index.js` of a JavaScript plugin (componentize-js).
    pub javascript: &'static str,
}

/// Everything the host knows about one plugin kind. Adding a kind means a WIT
/// interface and world, one implementation of this trait next to the kind's adapter,
/// one variant of [`PluginKind`] (with its arm in [`PluginKind::visit`]), the SDK
/// trait, and the docs.
pub trait Kind: Sized + 'static {
    /// The run-time name of this kind.
    const KIND: PluginKind;
    /// The kebab-case name used in WIT, configs and the CLI.
    const NAME: &'static str;
    /// The run config's `[plugins.*]` section that runs a plugin of this kind during
    /// training; `None` for kinds used outside training (init schemes run in `upcycle`).
    const RUN_ROLE: Option<&'static str>;
    /// The kind as the WIT `plugin-kind` enum spells it (what `info` returns).
    const WIT: WitKind;
    /// `recast plugin new` templates.
    const TEMPLATES: ScaffoldTemplates;
    /// The kind's exported functions, bound to one instance.
    type Guest: Send + Sync + 'static;

    /// Bind the kind's exports of an instantiated component.
    fn load(pre: &InstancePre<PluginState>, store: &mut Store<PluginState>, instance: &Instance) -> wasmtime::Result<Self::Guest>;
    /// `info`.
    fn info(guest: &Self::Guest, store: &mut Store<PluginState>) -> wasmtime::Result<PluginInfo>;
    /// `configure`.
    fn configure(guest: &Self::Guest, store: &mut Store<PluginState>, params: &str, context: PluginContext) -> wasmtime::Result<Result<(), String>>;
    /// `save-state`.
    fn save_state(guest: &Self::Guest, store: &mut Store<PluginState>) -> wasmtime::Result<Vec<u8>>;
    /// `load-state`.
    fn load_state(guest: &Self::Guest, store: &mut Store<PluginState>, state: &[u8]) -> wasmtime::Result<Result<(), String>>;

    /// `recast plugin check`'s calls of this kind's functions on synthetic inputs,
    /// between the lifecycle calls every kind gets; each output is validated as in a run.
    fn conformance(plugin: &mut Plugin<Self>, log: &mut Log<'_>) -> Result<(), PluginError>;

    /// Calls `recast plugin check` makes after the state round trip (default: none).
    fn after_state_round_trip(_plugin: &mut Plugin<Self>, _log: &mut Log<'_>) -> Result<(), PluginError> {
        Ok(())
    }
}

/// Implements [`Kind`]'s four lifecycle calls for a kind whose bindings are `$guest`:
/// every kind's interface opens with the same functions, but the generated bindings
/// share no trait.
macro_rules! lifecycle_calls {
    ($guest:path) => {
        type Guest = $guest;

        fn info(guest: &Self::Guest, store: &mut wasmtime::Store<$crate::plugins::PluginState>) -> wasmtime::Result<$crate::contract::PluginInfo> {
            guest.call_info(store)
        }

        fn configure(guest: &Self::Guest, store: &mut wasmtime::Store<$crate::plugins::PluginState>, params: &str, context: $crate::contract::PluginContext) -> wasmtime::Result<Result<(), String>> {
            guest.call_configure(store, params, context)
        }

        fn save_state(guest: &Self::Guest, store: &mut wasmtime::Store<$crate::plugins::PluginState>) -> wasmtime::Result<Vec<u8>> {
            guest.call_save_state(store)
        }

        fn load_state(guest: &Self::Guest, store: &mut wasmtime::Store<$crate::plugins::PluginState>, state: &[u8]) -> wasmtime::Result<Result<(), String>> {
            guest.call_load_state(store, state)
        }
    };
}
pub(super) use lifecycle_calls;

/// Something to do with the [`Kind`] a [`PluginKind`] names: code generic over the
/// kind, reached from a name known only at run time.
pub trait KindVisitor {
    /// What the visit produces.
    type Output;
    /// Do it for kind `K`.
    fn visit<K: Kind>(self) -> Self::Output;
}

impl PluginKind {
    /// All kinds, in the order the docs list them.
    pub const ALL: [PluginKind; 4] = [PluginKind::Router, PluginKind::AuxSchedule, PluginKind::InitScheme, PluginKind::Sampler];

    /// Run `visitor` with the [`Kind`] this name stands for: the only match over kinds.
    pub fn visit<V: KindVisitor>(self, visitor: V) -> V::Output {
        match self {
            PluginKind::Router => visitor.visit::<RouterKind>(),
            PluginKind::AuxSchedule => visitor.visit::<AuxScheduleKind>(),
            PluginKind::InitScheme => visitor.visit::<InitSchemeKind>(),
            PluginKind::Sampler => visitor.visit::<SamplerKind>(),
        }
    }

    /// The kebab-case name used in WIT, configs and the CLI.
    pub fn as_str(self) -> &'static str {
        self.facts().name
    }

    /// The run config's `[plugins.*]` section of this kind, if it runs during training.
    pub fn run_role(self) -> Option<&'static str> {
        self.facts().run_role
    }

    /// `recast plugin new` templates for this kind.
    pub fn templates(self) -> ScaffoldTemplates {
        self.facts().templates
    }

    /// The exported interface that marks a component as this kind, without version.
    pub fn interface(self) -> String {
        format!("{WIT_PACKAGE}/{}", self.as_str())
    }

    /// The WIT world a plugin of this kind targets.
    pub fn world(self) -> String {
        format!("{}-plugin", self.as_str())
    }

    pub(crate) fn from_wit(kind: WitKind) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.facts().wit == kind)
    }

    fn facts(self) -> Facts {
        struct Read;
        impl KindVisitor for Read {
            type Output = Facts;
            fn visit<K: Kind>(self) -> Facts {
                Facts { name: K::NAME, run_role: K::RUN_ROLE, wit: K::WIT, templates: K::TEMPLATES }
            }
        }
        self.visit(Read)
    }
}

/// A kind's constants, read through [`PluginKind::visit`].
struct Facts {
    name: &'static str,
    run_role: Option<&'static str>,
    wit: WitKind,
    templates: ScaffoldTemplates,
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A live plugin of kind `K`: the kind-independent instance (lifecycle, sandbox,
/// bookkeeping) and the kind's own exports. Each kind adds its typed, validated calls
/// in an `impl Plugin<ItsKind>` block next to its [`Kind`] implementation.
pub struct Plugin<K: Kind> {
    pub(super) instance: PluginInstance,
    pub(super) guest: K::Guest,
}

impl<K: Kind> Plugin<K> {
    /// Instantiate `component` as a `K` plugin and configure it with `params` (TOML or
    /// JSON text) and `seed`.
    pub fn new(engine: &super::PluginEngine, component: &super::PluginComponent, params: &str, seed: u64, limits: super::PluginLimits) -> Result<Self, PluginError> {
        let mut instance = PluginInstance::new(engine, component, K::KIND, params, seed, limits)?;
        let guest = instance.exports(K::load)?;
        Ok(Plugin { instance, guest })
    }

    /// The lifecycle and bookkeeping shared by every kind.
    pub fn instance(&mut self) -> &mut PluginInstance {
        &mut self.instance
    }
}

/// Whether a component built against `found` may run on this host: same major version,
/// and for 0.x the same minor (semver's rule for pre-1.0 versions).
pub fn version_compatible(found: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (parse(found), parse(WIT_VERSION)) {
        (Some((0, fmin)), Some((0, hmin))) => fmin == hmin,
        (Some((fmaj, _)), Some((hmaj, _))) => fmaj == hmaj,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(version_compatible("0.1.0"));
        assert!(version_compatible("0.1.7"));
        assert!(!version_compatible("0.2.0"));
        assert!(!version_compatible("1.0.0"));
        assert!(!version_compatible("garbage"));
    }

    #[test]
    fn every_kind_reads_its_own_facts() {
        let names: Vec<_> = PluginKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names, ["router", "aux-schedule", "init-scheme", "sampler"]);
        let roles: Vec<_> = PluginKind::ALL.iter().map(|k| k.run_role()).collect();
        assert_eq!(roles, [Some("router"), Some("aux_schedule"), None, Some("sampler")]);
        for kind in PluginKind::ALL {
            assert_eq!(PluginKind::from_wit(kind.facts().wit), Some(kind));
            assert!(kind.templates().rust.contains("recast_sdk"), "{kind}");
        }
        assert!(PluginKind::ALL.iter().all(|k| k.templates().python.contains("recast_sdk") && k.templates().javascript.contains("recast-sdk.js")));
    }
}

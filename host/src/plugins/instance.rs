//! One sandboxed plugin instance: its store, its limits, and the call wrapper that arms
//! fuel and deadline before each call and turns every failure into a typed error.

use wasmtime::component::{Instance, InstancePre};
use wasmtime::{Store, Trap};

use super::component::PluginComponent;
use super::digest::Digest;
use super::engine::{EPOCH_TICK, PluginEngine};
use super::error::{FaultCause, OutputViolation, PluginError};
use super::host_api::{PluginLog, PluginState};
use super::kind::{Kind, KindVisitor, PluginKind};
use super::limits::PluginLimits;
use super::wit::types::{PluginContext, PluginInfo};

/// Who an instance is, from its `info` and its component.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PluginMeta {
    /// Name from `info`, e.g. `topk-softmax`.
    pub name: String,
    /// The plugin's own version from `info`.
    pub version: String,
    /// One line from `info` on what the plugin does.
    pub description: String,
    /// Kind, agreed by exports and `info`.
    pub kind: PluginKind,
    /// The `recast:plugins` version the component was built against.
    pub wit_version: String,
    /// sha256 of the component.
    #[serde(serialize_with = "hex_digest")]
    pub digest: Digest,
}

fn hex_digest<S: serde::Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&d.to_hex())
}

/// The store plus the bookkeeping every call needs; kept apart from the exported
/// functions so that adapters can borrow both at once.
pub(crate) struct Sandbox {
    store: Store<PluginState>,
    limits: PluginLimits,
    name: String,
    digest: Digest,
    step: Option<u64>,
    poisoned: Option<String>,
}

impl Sandbox {
    /// Run `f` inside the sandbox: fresh fuel and deadline, then classify any failure.
    pub(crate) fn call<R>(&mut self, call: &str, f: impl FnOnce(&mut Store<PluginState>) -> wasmtime::Result<R>) -> Result<R, PluginError> {
        if let Some(earlier) = &self.poisoned {
            return Err(self.error(call, FaultCause::Poisoned { earlier: earlier.clone() }));
        }
        self.arm()?;
        match f(&mut self.store) {
            Ok(value) => Ok(value),
            Err(e) => {
                let cause = self.classify(e);
                self.poisoned = Some(cause.to_string());
                Err(self.error(call, cause))
            }
        }
    }

    /// Like [`Sandbox::call`] for functions returning `result<T, string>`: a plugin's
    /// own error becomes [`FaultCause::Refused`].
    pub(crate) fn call_fallible<R>(&mut self, call: &str, f: impl FnOnce(&mut Store<PluginState>) -> wasmtime::Result<Result<R, String>>) -> Result<R, PluginError> {
        self.call(call, f)?.map_err(|message| self.error(call, FaultCause::Refused { message }))
    }

    /// A typed error for `call` with this instance's name, digest and step.
    pub(crate) fn error(&self, call: &str, cause: FaultCause) -> PluginError {
        PluginError { plugin: self.name.clone(), digest: Some(self.digest), call: call.to_string(), step: self.step, cause }
    }

    /// An invalid-output error for `call`.
    pub(crate) fn invalid(&self, call: &str, violation: OutputViolation) -> PluginError {
        self.error(call, FaultCause::InvalidOutput(violation))
    }

    fn arm(&mut self) -> Result<(), PluginError> {
        self.store.data_mut().arm();
        let fuel = self.limits.fuel_per_call.unwrap_or(u64::MAX);
        if let Err(e) = self.store.set_fuel(fuel) {
            return Err(self.error("arm", FaultCause::Runtime { reason: format!("{e:#}") }));
        }
        let ticks = self.limits.deadline.as_nanos().div_ceil(EPOCH_TICK.as_nanos()).max(1) as u64;
        // One extra tick: the current epoch period has already partly elapsed.
        self.store.set_epoch_deadline(ticks + 1);
        Ok(())
    }

    fn classify(&mut self, e: wasmtime::Error) -> FaultCause {
        let state = self.store.data_mut();
        if let Some(requested) = state.limiter.refused.take() {
            return FaultCause::MemoryLimit { requested, cap: state.limiter.cap() };
        }
        let panic = state.last_panic.take();
        match e.downcast_ref::<Trap>() {
            Some(Trap::OutOfFuel) => FaultCause::OutOfFuel { budget: self.limits.fuel_per_call.unwrap_or(u64::MAX) },
            Some(Trap::Interrupt) => FaultCause::Deadline { limit: self.limits.deadline },
            Some(trap) => FaultCause::Trap { reason: trap.to_string(), panic },
            None => FaultCause::Trap { reason: format!("{e:#}"), panic },
        }
    }
}

/// The lifecycle functions (`info`, `configure`, `save-state`, `load-state`) that open
/// every kind's interface, called the same way whatever the kind.
trait Lifecycle: Send + Sync {
    fn info(&self, store: &mut Store<PluginState>) -> wasmtime::Result<PluginInfo>;
    fn configure(&self, store: &mut Store<PluginState>, params: &str, context: PluginContext) -> wasmtime::Result<Result<(), String>>;
    fn save_state(&self, store: &mut Store<PluginState>) -> wasmtime::Result<Vec<u8>>;
    fn load_state(&self, store: &mut Store<PluginState>, state: &[u8]) -> wasmtime::Result<Result<(), String>>;
}

/// A kind's exports, seen only through their lifecycle functions.
struct LifecycleOf<K: Kind>(K::Guest);

impl<K: Kind> Lifecycle for LifecycleOf<K> {
    fn info(&self, store: &mut Store<PluginState>) -> wasmtime::Result<PluginInfo> {
        K::info(&self.0, store)
    }
    fn configure(&self, store: &mut Store<PluginState>, params: &str, context: PluginContext) -> wasmtime::Result<Result<(), String>> {
        K::configure(&self.0, store, params, context)
    }
    fn save_state(&self, store: &mut Store<PluginState>) -> wasmtime::Result<Vec<u8>> {
        K::save_state(&self.0, store)
    }
    fn load_state(&self, store: &mut Store<PluginState>, state: &[u8]) -> wasmtime::Result<Result<(), String>> {
        K::load_state(&self.0, store, state)
    }
}

/// Binds the lifecycle exports of whichever kind a component is.
struct LoadLifecycle<'a> {
    pre: &'a InstancePre<PluginState>,
    store: &'a mut Store<PluginState>,
    instance: &'a Instance,
}

impl KindVisitor for LoadLifecycle<'_> {
    type Output = wasmtime::Result<Box<dyn Lifecycle>>;
    fn visit<K: Kind>(self) -> Self::Output {
        Ok(Box::new(LifecycleOf::<K>(K::load(self.pre, self.store, self.instance)?)))
    }
}

/// A live, configured plugin of any kind. [`super::Plugin`] wraps it with a kind's
/// typed, validated calls.
pub struct PluginInstance {
    pub(crate) sandbox: Sandbox,
    pub(crate) instance: Instance,
    lifecycle: Box<dyn Lifecycle>,
    meta: PluginMeta,
    component: PluginComponent,
}

impl PluginInstance {
    /// Instantiate `component` as a plugin of kind `expected`, check its `info`, and
    /// configure it with `params` (TOML or JSON text) and `seed`.
    pub fn new(engine: &PluginEngine, component: &PluginComponent, expected: PluginKind, params: &str, seed: u64, limits: PluginLimits) -> Result<Self, PluginError> {
        let mut instance = Self::start(engine, component, expected, limits)?;
        let lifecycle = &instance.lifecycle;
        let context = PluginContext { seed };
        let sandbox = &mut instance.sandbox;
        sandbox.call("configure", |store| lifecycle.configure(store, params, context))?.map_err(|message| sandbox.error("configure", FaultCause::ConfigRejected { message }))?;
        Ok(instance)
    }

    /// Who the plugin in `component` says it is, without configuring it (for
    /// `recast plugin inspect`).
    pub fn read_meta(engine: &PluginEngine, component: &PluginComponent, limits: PluginLimits) -> Result<PluginMeta, PluginError> {
        Ok(Self::start(engine, component, component.kind(), limits)?.meta)
    }

    /// Instantiate and call `info`; the instance is not configured yet.
    fn start(engine: &PluginEngine, component: &PluginComponent, expected: PluginKind, limits: PluginLimits) -> Result<Self, PluginError> {
        let label = component.label().to_string();
        let load_error = |cause| PluginError { plugin: label.clone(), digest: Some(component.digest()), call: "load".into(), step: None, cause };
        if component.kind() != expected {
            return Err(load_error(FaultCause::WrongKind { expected, found: format!("`{label}` is a {} plugin", component.kind()) }));
        }
        let mut store = Store::new(&engine.engine, PluginState::new(label.clone(), limits.memory_bytes));
        store.limiter(|state| &mut state.limiter);
        store.epoch_deadline_trap();
        let pre: InstancePre<PluginState> = engine.linker.instantiate_pre(&component.component).map_err(|e| load_error(FaultCause::Runtime { reason: format!("{e:#}") }))?;
        let mut sandbox = Sandbox { store, limits, name: label.clone(), digest: component.digest(), step: None, poisoned: None };
        let instance = sandbox.call("instantiate", |store| pre.instantiate(store))?;
        let kind = component.kind();
        let lifecycle = sandbox.call("instantiate", |store| kind.visit(LoadLifecycle { pre: &pre, store, instance: &instance }))?;
        let info = sandbox.call("info", |store| lifecycle.info(store))?;
        let Some(kind) = PluginKind::from_wit(info.kind) else {
            let found = format!("its `info` names a kind this host does not know ({:?})", info.kind);
            return Err(sandbox.error("info", FaultCause::WrongKind { expected, found }));
        };
        if kind != component.kind() {
            let found = format!("its `info` says it is a {kind} plugin while it exports the {} interface", component.kind());
            return Err(sandbox.error("info", FaultCause::WrongKind { expected, found }));
        }
        sandbox.name = info.name.clone();
        sandbox.store.data_mut().plugin = info.name.clone();
        let meta = PluginMeta { name: info.name, version: info.version, description: info.description, kind, wit_version: component.wit_version().to_string(), digest: component.digest() };
        Ok(PluginInstance { sandbox, instance, lifecycle, meta, component: component.clone() })
    }

    /// Load the kind-specific exports of this instance.
    pub(crate) fn exports<G>(&mut self, load: impl FnOnce(&InstancePre<PluginState>, &mut Store<PluginState>, &Instance) -> wasmtime::Result<G>) -> Result<G, PluginError> {
        let instance = self.instance;
        self.sandbox.call("instantiate", |store| {
            let pre = instance.instance_pre(&*store);
            load(&pre, store, &instance)
        })
    }

    /// Name, version, kind and digest.
    pub fn meta(&self) -> &PluginMeta {
        &self.meta
    }

    /// The component this instance runs.
    pub fn component(&self) -> &PluginComponent {
        &self.component
    }

    /// Tag later errors with the training step they happen at.
    pub fn set_step(&mut self, step: Option<u64>) {
        self.sandbox.step = step;
    }

    /// Whether an earlier fault made the instance unusable.
    pub fn is_poisoned(&self) -> bool {
        self.sandbox.poisoned.is_some()
    }

    /// The plugin's state, for checkpoints and hot reload.
    pub fn save_state(&mut self) -> Result<Vec<u8>, PluginError> {
        let lifecycle = &self.lifecycle;
        self.sandbox.call("save-state", |store| lifecycle.save_state(store))
    }

    /// Restore state from [`PluginInstance::save_state`].
    pub fn load_state(&mut self, state: &[u8]) -> Result<(), PluginError> {
        let lifecycle = &self.lifecycle;
        self.sandbox.call_fallible("load-state", |store| lifecycle.load_state(store, state))
    }

    /// Lines the plugin logged since the last drain (at most the last 256).
    pub fn drain_logs(&mut self) -> Vec<PluginLog> {
        std::mem::take(&mut self.sandbox.store.data_mut().logs)
    }

    /// Metrics the plugin recorded since the last drain.
    pub fn drain_metrics(&mut self) -> Vec<(String, f64)> {
        std::mem::take(&mut self.sandbox.store.data_mut().metrics)
    }

    /// Fuel the last call consumed (`None` with unlimited fuel).
    pub fn fuel_used_by_last_call(&self) -> Option<u64> {
        let budget = self.sandbox.limits.fuel_per_call?;
        self.sandbox.store.get_fuel().ok().map(|left| budget - left)
    }
}

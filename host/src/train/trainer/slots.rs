//! A run's three plugin roles, each a [`Slot`]: the live instance, the parameters it
//! was configured with, and what a fault falls back to (the last version that completed
//! a step, and the state it had when the current step began).

use std::sync::Arc;

use crate::plugins::{AuxScheduleKind, Kind, Plugin, PluginComponent, PluginEngine, PluginError, PluginInstance, PluginLimits, RouterKind, SamplerKind};
pub use crate::train::role::Role;

/// What instantiating a plugin needs besides the component and its params.
pub(super) struct PluginHost {
    pub engine: Arc<PluginEngine>,
    pub seed: u64,
    pub limits: PluginLimits,
}

impl PluginHost {
    /// A configured plugin of kind `K`.
    fn build<K: Kind>(&self, component: &PluginComponent, params: &str) -> Result<Plugin<K>, PluginError> {
        Plugin::new(&self.engine, component, params, self.seed, self.limits.clone())
    }
}

/// One role's live plugin and its fallback.
pub(super) struct Slot<K: Kind> {
    pub live: Plugin<K>,
    /// The params (TOML text) the live instance was configured with.
    pub params: String,
    /// The newest version that completed a whole step.
    good: PluginComponent,
    /// The live instance's state when the current step began.
    good_state: Option<Vec<u8>>,
}

/// What the trainer does with a slot whatever its kind.
pub(super) trait AnySlot {
    fn component(&mut self) -> PluginComponent;
    fn params(&self) -> &str;
    fn instance(&mut self) -> &mut PluginInstance;
    fn snapshot(&mut self) -> Result<(), PluginError>;
    fn completed_step(&mut self);
    fn checkpoint_state(&mut self) -> Result<Vec<u8>, PluginError>;
    fn replace(&mut self, host: &PluginHost, component: &PluginComponent, params: &str) -> Result<(), PluginError>;
    fn replace_with_state(&mut self, host: &PluginHost, component: &PluginComponent, params: &str, state: &[u8]) -> Result<(), PluginError>;
    fn restore_good(&mut self, host: &PluginHost) -> Result<PluginComponent, PluginError>;
    fn rewind(&mut self) -> Result<(), PluginError>;
}

impl<K: Kind> Slot<K> {
    pub fn new(host: &PluginHost, component: &PluginComponent, params: &str) -> Result<Self, PluginError> {
        Ok(Slot { live: host.build(component, params)?, params: params.to_string(), good: component.clone(), good_state: None })
    }
}

impl<K: Kind> AnySlot for Slot<K> {
    /// The component the live instance runs.
    fn component(&mut self) -> PluginComponent {
        self.live.instance().component().clone()
    }

    fn params(&self) -> &str {
        &self.params
    }

    fn instance(&mut self) -> &mut PluginInstance {
        self.live.instance()
    }

    /// Remember the state at the start of a step, to fall back to.
    fn snapshot(&mut self) -> Result<(), PluginError> {
        self.good_state = Some(self.live.instance().save_state()?);
        Ok(())
    }

    /// The live version completed a step: it is now the one to fall back to.
    fn completed_step(&mut self) {
        self.good = self.component();
    }

    /// The state to checkpoint: the live state, or when a fault left the instance
    /// unusable, its state from the start of the step.
    fn checkpoint_state(&mut self) -> Result<Vec<u8>, PluginError> {
        match &self.good_state {
            Some(state) if self.live.instance().is_poisoned() => Ok(state.clone()),
            _ => self.live.instance().save_state(),
        }
    }

    /// Run `component` with `params` from now on, carrying the live state over. On any
    /// failure (configure, loading the state) the live instance stays as it was.
    fn replace(&mut self, host: &PluginHost, component: &PluginComponent, params: &str) -> Result<(), PluginError> {
        let state = self.live.instance().save_state()?;
        self.replace_with_state(host, component, params, &state)
    }

    /// Like [`Slot::replace`] with a given state (from a checkpoint).
    fn replace_with_state(&mut self, host: &PluginHost, component: &PluginComponent, params: &str, state: &[u8]) -> Result<(), PluginError> {
        let mut new = host.build(component, params)?;
        new.instance().load_state(state)?;
        self.live = new;
        self.params = params.to_string();
        Ok(())
    }

    /// Re-instantiate the last good version with the state from the start of the step.
    fn restore_good(&mut self, host: &PluginHost) -> Result<PluginComponent, PluginError> {
        let mut new = host.build(&self.good, &self.params)?;
        if let Some(state) = &self.good_state {
            new.instance().load_state(state)?;
        }
        self.live = new;
        Ok(self.good.clone())
    }

    /// Put the live instance back in the state it had when the step began (a step that
    /// is abandoned must not leave its plugin calls behind in a checkpoint).
    fn rewind(&mut self) -> Result<(), PluginError> {
        match self.good_state.clone() {
            Some(state) if !self.live.instance().is_poisoned() => self.live.instance().load_state(&state),
            _ => Ok(()),
        }
    }
}

/// The run's live plugins, one optional slot per role, typed by kind (the trainer calls
/// each kind's own functions).
pub(super) struct LivePlugins {
    pub router: Option<Slot<RouterKind>>,
    pub aux: Option<Slot<AuxScheduleKind>>,
    pub sampler: Option<Slot<SamplerKind>>,
}

impl LivePlugins {
    /// Build a slot for every plugin in `set`.
    pub fn new(host: &PluginHost, set: &PluginSet) -> Result<Self, PluginError> {
        fn slot<K: Kind>(host: &PluginHost, set: &PluginSet, role: Role) -> Result<Option<Slot<K>>, PluginError> {
            set.get(role).map(|(c, p)| Slot::new(host, c, p)).transpose()
        }
        Ok(LivePlugins { router: slot(host, set, Role::ROUTER)?, aux: slot(host, set, Role::AUX_SCHEDULE)?, sampler: slot(host, set, Role::SAMPLER)? })
    }

    /// The slot for `role`, if the run has that plugin.
    pub fn get(&mut self, role: Role) -> Option<&mut dyn AnySlot> {
        fn any<K: Kind>(slot: &mut Option<Slot<K>>) -> Option<&mut dyn AnySlot> {
            slot.as_mut().map(|s| s as &mut dyn AnySlot)
        }
        match role.kind() {
            RouterKind::KIND => any(&mut self.router),
            AuxScheduleKind::KIND => any(&mut self.aux),
            SamplerKind::KIND => any(&mut self.sampler),
            _ => None,
        }
    }

    /// The roles the run has plugins for, in checkpoint order.
    pub fn roles(&mut self) -> Vec<Role> {
        Role::all().filter(|&r| self.get(r).is_some()).collect()
    }
}

/// The components and params a run starts its plugins with, by role.
#[derive(Clone, Default)]
pub struct PluginSet {
    by_role: std::collections::BTreeMap<Role, (PluginComponent, String)>,
    /// The shadow routers, in config order.
    shadows: Vec<(PluginComponent, String)>,
}

impl PluginSet {
    /// Run `component` configured with `params` (TOML text) in `role`.
    pub fn insert(&mut self, role: Role, component: PluginComponent, params: String) {
        self.by_role.insert(role, (component, params));
    }

    /// The component and params of `role`, if the run has one.
    pub fn get(&self, role: Role) -> Option<&(PluginComponent, String)> {
        self.by_role.get(&role)
    }

    /// Add a shadow router running `component` configured with `params`.
    pub fn insert_shadow(&mut self, component: PluginComponent, params: String) {
        self.shadows.push((component, params));
    }

    /// The shadow routers, in config order.
    pub fn shadows(&self) -> &[(PluginComponent, String)] {
        &self.shadows
    }
}

//! A run's three plugin roles, each a [`Slot`]: the live instance, the parameters it
//! was configured with, and what a fault falls back to (the last version that completed
//! a step, and the state it had when the current step began).

use std::fmt;
use std::sync::Arc;

use crate::plugins::{AuxSchedulePlugin, PluginComponent, PluginEngine, PluginError, PluginInstance, PluginLimits, RouterPlugin, SamplerPlugin};

/// A plugin role of a run; the names are the run config's `[plugins.*]` sections.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Router,
    AuxSchedule,
    Sampler,
}

impl Role {
    /// All roles, in checkpoint order.
    pub const ALL: [Role; 3] = [Role::Router, Role::AuxSchedule, Role::Sampler];

    /// The config section and journal name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Router => "router",
            Role::AuxSchedule => "aux_schedule",
            Role::Sampler => "sampler",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What instantiating a plugin needs besides the component and its params.
pub(super) struct PluginHost {
    pub engine: Arc<PluginEngine>,
    pub seed: u64,
    pub limits: PluginLimits,
}

/// A kind adapter the trainer can build and reach the instance of.
pub(super) trait Adapter: Sized {
    fn build(host: &PluginHost, component: &PluginComponent, params: &str) -> Result<Self, PluginError>;
    fn instance(&mut self) -> &mut PluginInstance;
}

macro_rules! adapter {
    ($ty:ty) => {
        impl Adapter for $ty {
            fn build(host: &PluginHost, component: &PluginComponent, params: &str) -> Result<Self, PluginError> {
                <$ty>::new(&host.engine, component, params, host.seed, host.limits.clone())
            }
            fn instance(&mut self) -> &mut PluginInstance {
                <$ty>::instance(self)
            }
        }
    };
}
adapter!(RouterPlugin);
adapter!(AuxSchedulePlugin);
adapter!(SamplerPlugin);

/// One role's live plugin and its fallback.
pub(super) struct Slot<P> {
    pub live: P,
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

impl<P: Adapter> Slot<P> {
    pub fn new(host: &PluginHost, component: &PluginComponent, params: &str) -> Result<Self, PluginError> {
        Ok(Slot { live: P::build(host, component, params)?, params: params.to_string(), good: component.clone(), good_state: None })
    }
}

impl<P: Adapter> AnySlot for Slot<P> {
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
        let mut new = P::build(host, component, params)?;
        new.instance().load_state(state)?;
        self.live = new;
        self.params = params.to_string();
        Ok(())
    }

    /// Re-instantiate the last good version with the state from the start of the step.
    fn restore_good(&mut self, host: &PluginHost) -> Result<PluginComponent, PluginError> {
        let mut new = P::build(host, &self.good, &self.params)?;
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

/// The run's live plugins, one optional slot per role.
pub(super) struct LivePlugins {
    pub router: Option<Slot<RouterPlugin>>,
    pub aux: Option<Slot<AuxSchedulePlugin>>,
    pub sampler: Option<Slot<SamplerPlugin>>,
}

impl LivePlugins {
    /// The slot for `role`, if the run has that plugin.
    pub fn get(&mut self, role: Role) -> Option<&mut dyn AnySlot> {
        match role {
            Role::Router => self.router.as_mut().map(|s| s as &mut dyn AnySlot),
            Role::AuxSchedule => self.aux.as_mut().map(|s| s as &mut dyn AnySlot),
            Role::Sampler => self.sampler.as_mut().map(|s| s as &mut dyn AnySlot),
        }
    }

    /// The roles the run has plugins for, in checkpoint order.
    pub fn roles(&self) -> Vec<Role> {
        let present = [self.router.is_some(), self.aux.is_some(), self.sampler.is_some()];
        Role::ALL.into_iter().zip(present).filter(|(_, p)| *p).map(|(r, _)| r).collect()
    }
}

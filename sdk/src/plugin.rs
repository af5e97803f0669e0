//! What every plugin kind has in common: a typed config, a constructor, and state that
//! survives checkpoints and hot reloads.

use serde::de::DeserializeOwned;

/// Where an instance runs: handed to [`Plugin::new`].
#[derive(Clone, Debug)]
pub struct Context {
    /// Seed for every random choice; use [`crate::Rng::new`] with it.
    pub seed: u64,
}

/// The lifecycle shared by routers, aux schedules, init schemes and samplers.
///
/// The host calls `configure` once per instance; the SDK parses the parameters into
/// [`Plugin::Config`] (unknown keys are an error) and calls [`Plugin::new`].
pub trait Plugin: Sized + 'static {
    /// The plugin's parameters. Give every field a serde default (or derive `Default` and
    /// use `#[serde(default)]`) so that a run config may omit them.
    type Config: DeserializeOwned;

    /// Build the plugin from its parameters. An `Err` is shown to the user as a rejected
    /// config, so say which parameter is wrong and why.
    fn new(config: Self::Config, context: &Context) -> Result<Self, String>;

    /// Bytes that restore this plugin's state in [`Plugin::load_state`]. Stateless
    /// plugins keep the default (no state).
    fn save_state(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Restore state saved by this plugin or an earlier version of it. The default
    /// ignores the bytes, which is right for stateless plugins.
    fn load_state(&mut self, state: &[u8]) -> Result<(), String> {
        let _ = state;
        Ok(())
    }
}

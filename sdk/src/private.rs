//! Glue used by the export macros. Not part of the public API.

use std::cell::RefCell;
use std::sync::Once;

use crate::bindings::router_world::recast::plugins::host;
use crate::config::parse_params;
use crate::plugin::{Context, Plugin};
use crate::types::{LogLevel, PluginContext, PluginInfo, PluginKind};

pub use wit_bindgen;

/// The one plugin instance of a component. WebAssembly components run single-threaded,
/// so a `static` with interior mutability is sound there.
pub struct Slot<P>(RefCell<Option<P>>);

// SAFETY: a component instance is never entered from two threads; the host serialises
// every call into it.
unsafe impl<P> Sync for Slot<P> {}

impl<P: Plugin> Default for Slot<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P: Plugin> Slot<P> {
    /// An empty slot; `const` so the export macros can put it in a `static`.
    pub const fn new() -> Self {
        Slot(RefCell::new(None))
    }

    pub fn configure(&self, params: String, context: PluginContext) -> Result<(), String> {
        install_panic_hook();
        let config = parse_params::<P::Config>(&params)?;
        let plugin = P::new(config, &Context { seed: context.seed })?;
        *self.0.borrow_mut() = Some(plugin);
        Ok(())
    }

    /// Run `f` on the configured plugin; an unconfigured one is configured with its
    /// defaults first.
    pub fn with<R>(&self, f: impl FnOnce(&mut P) -> Result<R, String>) -> Result<R, String> {
        install_panic_hook();
        if self.0.borrow().is_none() {
            self.configure(String::new(), PluginContext { seed: 0 })?;
        }
        let mut guard = self.0.borrow_mut();
        match guard.as_mut() {
            Some(plugin) => f(plugin),
            None => Err("plugin is not configured".to_string()),
        }
    }

    pub fn save_state(&self) -> Vec<u8> {
        self.0.borrow().as_ref().map(P::save_state).unwrap_or_default()
    }

    pub fn load_state(&self, state: Vec<u8>) -> Result<(), String> {
        self.with(|p| p.load_state(&state))
    }
}

/// `info()` for every kind: name, version and description come from the plugin crate's
/// `Cargo.toml`.
pub fn info(name: &str, version: &str, description: &str, kind: PluginKind) -> PluginInfo {
    PluginInfo { name: name.to_string(), version: version.to_string(), kind, description: description.to_string() }
}

/// Send panic messages to the host's log before the trap, so the host's error says
/// why the plugin stopped instead of only "unreachable".
fn install_panic_hook() {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|panic| {
            host::log(LogLevel::Error, &format!("panicked: {panic}"));
        }));
    });
}

/// The four lifecycle functions every kind's interface starts with, as items of the
/// kind's `Guest` impl.
#[doc(hidden)]
#[macro_export]
macro_rules! __lifecycle_fns {
    ($slot:ident, $kind:ident) => {
        fn info() -> $crate::types::PluginInfo {
            $crate::__private::info(env!("CARGO_PKG_NAME"), env!("CARGO_PKG_VERSION"), env!("CARGO_PKG_DESCRIPTION"), $crate::types::PluginKind::$kind)
        }
        fn configure(params: String, context: $crate::types::PluginContext) -> Result<(), String> {
            $slot.configure(params, context)
        }
        fn save_state() -> Vec<u8> {
            $slot.save_state()
        }
        fn load_state(state: Vec<u8>) -> Result<(), String> {
            $slot.load_state(state)
        }
    };
}

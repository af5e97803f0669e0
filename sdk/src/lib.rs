//! # recast-sdk
//!
//! Write Recast plugins — routing policies, auxiliary-loss schedules, upcycling schemes
//! and data samplers — as WebAssembly components in a few lines of Rust. Implement one
//! trait per kind ([`router::Router`], [`aux_schedule::AuxSchedule`],
//! [`init_scheme::InitScheme`], [`sampler::Sampler`]) plus [`Plugin`], then export it:
//!
//! ```ignore
//! use recast_sdk::router::*;
//!
//! #[derive(serde::Deserialize)]
//! #[serde(default)]
//! struct Params { k: u32 }
//! impl Default for Params { fn default() -> Self { Params { k: 2 } } }
//!
//! struct TopK { k: u32 }
//! impl Plugin for TopK {
//!     type Config = Params;
//!     fn new(p: Params, _: &Context) -> Result<Self, String> { Ok(TopK { k: p.k }) }
//! }
//! impl Router for TopK {
//!     fn spec(&mut self, _: &LayerInfo) -> Result<RouterSpec, String> {
//!         Ok(RouterSpec::softmax_topk(self.k))
//!     }
//! }
//! recast_sdk::export_router!(TopK);
//! ```
//!
//! Build it with `recast plugin build PATH`. Parameters arrive as TOML (or JSON) from
//! the run config and unknown keys are an error; randomness comes only from [`Rng`]
//! seeded by [`Context::seed`]; [`log`] and [`metric`] reach the host's log and metrics.

extern crate self as recast_sdk;

pub mod aux_schedule;
#[doc(hidden)]
pub mod bindings;
pub mod config;
pub mod init_scheme;
mod plugin;
#[doc(hidden)]
pub mod __private {
    pub use crate::private::*;
}
mod private;
pub mod rng;
pub mod router;
pub mod sampler;

pub use plugin::{Context, Plugin};
pub use rng::Rng;

/// Types shared by every plugin kind.
pub mod types {
    pub use crate::bindings::router_world::recast::plugins::types::{LayerStats, LogLevel, PluginContext, PluginInfo, PluginKind};
}

/// Write a line to the run's log (tagged with the plugin's name by the host).
pub fn log(level: types::LogLevel, message: &str) {
    bindings::router_world::recast::plugins::host::log(level, message);
}

/// Record a named scalar for the current step.
pub fn metric(name: &str, value: f64) {
    bindings::router_world::recast::plugins::host::metric(name, value);
}

/// Serialise plugin state with serde (JSON), for [`Plugin::save_state`].
pub fn state_to_bytes<T: serde::Serialize>(state: &T) -> Vec<u8> {
    serde_json::to_vec(state).unwrap_or_default()
}

/// Restore state written by [`state_to_bytes`], for [`Plugin::load_state`].
pub fn state_from_bytes<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).map_err(|e| format!("state does not parse: {e}"))
}

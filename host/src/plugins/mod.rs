//! The sandboxed plugin runtime: one [`PluginEngine`] per process compiles and caches
//! components by sha256; each plugin runs in its own store with a fuel budget and a
//! wall-clock deadline per call and a memory cap; one generic adapter, [`Plugin`], per
//! [`Kind`] ([`RouterPlugin`], [`AuxSchedulePlugin`], [`InitSchemePlugin`],
//! [`SamplerPlugin`]) makes typed calls and validates every output. Plugins get no capability but
//! `recast:plugins/host` (`log`, `metric`): no files, clock, randomness, environment
//! or network; a component importing anything else is refused at load.
//!
//! ```no_run
//! use recast::plugins::{PluginEngine, PluginLimits, RouterPlugin, router::LayerInfo};
//! let engine = PluginEngine::new()?;
//! let component = engine.load_file("topk-softmax.wasm".as_ref())?;
//! let mut router = RouterPlugin::new(&engine, &component, "top_k = 2", 0, PluginLimits::default())?;
//! let layer = LayerInfo { layer: 0, num_layers: 1, hidden: 64, num_experts: 8,
//!     expert_intermediate: vec![256; 8], shared_experts: 0, tokens_per_batch: 512 };
//! let spec = router.spec(&layer)?;
//! assert_eq!(spec.top_k, 2);
//! # Ok::<(), recast::plugins::PluginError>(())
//! ```

pub mod aux_schedule;
pub mod bundle;
mod compile_cache;
pub mod component;
pub mod conformance;
mod digest;
mod engine;
pub mod error;
mod host_api;
pub mod init_scheme;
mod instance;
mod kind;
mod limits;
pub mod lock;
pub mod reload;
pub mod router;
pub mod sampler;

/// The generated bindings live with the contract; the runtime calls their exports.
use crate::contract::wit;

pub use crate::contract::LogLevel;
pub use aux_schedule::{AuxScheduleKind, AuxSchedulePlugin};
pub use component::{ExportedInterface, PluginComponent};
pub use digest::Digest;
pub use engine::{MAX_COMPONENT_BYTES, PluginEngine};
pub use error::{FaultCause, OutputViolation, PluginError};
pub use host_api::{PluginLog, PluginState};
pub use init_scheme::{InitSchemeKind, InitSchemePlugin};
pub use instance::{PluginInstance, PluginMeta};
pub use kind::{Kind, KindVisitor, Plugin, PluginKind, ScaffoldTemplates, WIT_PACKAGE, WIT_VERSION, version_compatible};
pub use limits::PluginLimits;
pub use router::{RouterKind, RouterPlugin};
pub use sampler::{SamplerKind, SamplerPlugin};

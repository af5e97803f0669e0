//! The contract between the host and its plugins: the records and variants of the WIT
//! package `recast:plugins` (routing specs, layer statistics, domain mixtures, init
//! plans), generated once from `wit/`, and the plain-Rust additions the host needs
//! around them. The MoE layer, the data pipeline and upcycling use these types without
//! the WebAssembly runtime (`crate::plugins`), which only calls plugins and validates
//! what they return.
//!
//! ```
//! use recast::contract::{RouterSpec, ScoreFunction};
//! let spec = RouterSpec::softmax_topk(2);
//! assert_eq!((spec.top_k, spec.score), (2, ScoreFunction::Softmax));
//! let json = serde_json::to_string(&spec).unwrap();
//! let back: RouterSpec = serde_json::from_str(&json).unwrap();
//! assert_eq!(serde_json::to_string(&back).unwrap(), json);
//! ```

pub(crate) mod wit;

mod init_plan;
mod router_spec;

pub use init_plan::{InitPlanner, PlannedTensors};
pub use wit::aux_schedule_types::LayerCoefficients;
pub use wit::init_scheme_types::*;
pub use wit::router_types::{Capacity, DropPolicy, LayerInfo, LogitNorm, RouteAssignment, RouterSpec, RouterUpdate, RoutingMode, ScoreFunction, SelectionBias, TokenLogits, TopkOrder};
pub use wit::sampler_types::{DomainStats, Mixture, SampleRequest};
pub use wit::types::{LayerStats, LogLevel, PluginContext, PluginInfo};

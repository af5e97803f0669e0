//! Routing policies: the [`Router`] trait and [`export_router!`](crate::export_router).
//!
//! ```ignore
//! use recast_sdk::router::*;
//! #[derive(serde::Deserialize, Default)]
//! #[serde(default)]
//! struct Params { k: u32 }
//! struct Top1;
//! impl Plugin for Top1 {
//!     type Config = Params;
//!     fn new(_: Params, _: &Context) -> Result<Self, String> { Ok(Top1) }
//! }
//! impl Router for Top1 {
//!     fn spec(&mut self, _layer: &LayerInfo) -> Result<RouterSpec, String> {
//!         Ok(RouterSpec::softmax_topk(1))
//!     }
//! }
//! recast_sdk::export_router!(Top1);
//! ```

pub use crate::bindings::router_world::recast::plugins::router_types::{
    Capacity, DropPolicy, LayerInfo, LogitNorm, RouteAssignment, RouterSpec, RouterUpdate, RoutingMode, ScoreFunction, SelectionBias, TokenLogits, TopkOrder,
};
pub use crate::plugin::{Context, Plugin};
pub use crate::types::LayerStats;

/// A routing policy. Only [`Router::spec`] is required.
pub trait Router: Plugin {
    /// The routing spec of one MoE layer, asked once per layer at start-up (and again
    /// after a hot reload).
    fn spec(&mut self, layer: &LayerInfo) -> Result<RouterSpec, String>;

    /// React to the last step's per-layer stats: bias deltas for aux-loss-free balancing,
    /// spec changes for schedules. The default changes nothing.
    fn on_step(&mut self, step: u64, stats: &[LayerStats]) -> Result<Vec<RouterUpdate>, String> {
        let _ = (step, stats);
        Ok(Vec::new())
    }

    /// Route a micro-batch token by token; only called when the spec sets
    /// `per_token_route`. The default refuses.
    fn route(&mut self, layer: &LayerInfo, logits: &TokenLogits) -> Result<RouteAssignment, String> {
        let _ = (layer, logits);
        Err("this router does not implement per-token `route`".to_string())
    }
}

include!("shared/router_spec.rs");

/// A capacity limit from the `capacity_factor` / `drop_policy` parameters routers share:
/// `None` (dropless) without a factor; `drop_policy` is `"probs"` or `"position"`.
pub fn capacity(factor: Option<f32>, drop_policy: &str) -> Result<Option<Capacity>, String> {
    let drop_policy = match drop_policy {
        "probs" => DropPolicy::Probs,
        "position" => DropPolicy::Position,
        other => return Err(format!("drop_policy must be \"probs\" or \"position\", not {other:?}")),
    };
    match factor {
        Some(f) if !(f.is_finite() && f > 0.0) => Err(format!("capacity_factor must be > 0, not {f}")),
        Some(factor) => Ok(Some(Capacity { factor, drop_policy })),
        None => Ok(None),
    }
}

/// Check a layer has at least `top_k` experts.
pub fn check_top_k(top_k: u32, layer: &LayerInfo) -> Result<(), String> {
    if top_k == 0 || top_k > layer.num_experts {
        return Err(format!("top_k = {top_k} but layer {} has {} experts", layer.layer, layer.num_experts));
    }
    Ok(())
}

/// Export a type implementing [`Router`] as the component's router.
#[macro_export]
macro_rules! export_router {
    ($ty:ty) => {
        #[doc(hidden)]
        pub struct __RecastRouterExport;
        #[doc(hidden)]
        static __RECAST_ROUTER: $crate::__private::Slot<$ty> = $crate::__private::Slot::new();
        impl $crate::bindings::router_world::exports::recast::plugins::router::Guest for __RecastRouterExport {
            $crate::__lifecycle_fns!(__RECAST_ROUTER, Router);
            fn spec(layer: $crate::router::LayerInfo) -> Result<$crate::router::RouterSpec, String> {
                __RECAST_ROUTER.with(|p| $crate::router::Router::spec(p, &layer))
            }
            fn on_step(
                step: u64,
                stats: Vec<$crate::types::LayerStats>,
            ) -> Result<Vec<$crate::router::RouterUpdate>, String> {
                __RECAST_ROUTER.with(|p| $crate::router::Router::on_step(p, step, &stats))
            }
            fn route(
                layer: $crate::router::LayerInfo,
                logits: $crate::router::TokenLogits,
            ) -> Result<$crate::router::RouteAssignment, String> {
                __RECAST_ROUTER.with(|p| $crate::router::Router::route(p, &layer, &logits))
            }
        }
        $crate::bindings::router_world::export_router_world!(__RecastRouterExport with_types_in $crate::bindings::router_world);
    };
}

//! Constructors of the routing spec, shared with the SDK (`sdk/src/shared/`), so the
//! routing the host runs when no plugin gives a spec is written once.

use super::{LogitNorm, RouterSpec, RoutingMode, ScoreFunction, SelectionBias, TopkOrder};

include!("../../../sdk/src/shared/router_spec.rs");

//! What upcycling needs from whoever makes its plan (an init-scheme plugin in practice),
//! so the executor runs plans without the plugin runtime.

use std::collections::BTreeMap;

use super::{InitPlan, SourceModel};

/// Shapes of the target tensors a plan writes, by name.
pub type PlannedTensors = BTreeMap<String, Vec<u64>>;

/// Makes a validated init plan for the given sources: the plan, and the shape of every
/// target tensor it writes.
pub trait InitPlanner {
    /// Why no plan could be made (a plugin fault, an invalid plan).
    type Error: std::error::Error + Send + Sync + 'static;
    /// The plan for `sources`, validated against them.
    fn plan(&mut self, sources: &[SourceModel]) -> Result<(InitPlan, PlannedTensors), Self::Error>;
}

//! `[trace]`: what a run records beside its metrics for later inspection, e.g.
//! `routing = { layers = [1, 3], every = 10 }` writes the chosen experts and gates of
//! every token of those MoE layers every tenth step into `RUN_DIR/trace/`.

use serde::{Deserialize, Serialize};

/// The `[trace]` section.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TraceSection {
    /// The routing trace (`recast replay` reads it); none when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routing: Option<RoutingTrace>,
}

/// Which MoE layers' routing to record, and how often.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RoutingTrace {
    /// Transformer layers to trace (each must be an MoE layer); empty: every MoE layer.
    #[serde(default)]
    pub layers: Vec<usize>,
    /// Trace the steps whose number (1-based, as in `metrics.jsonl`) is a multiple of
    /// this.
    #[serde(default = "every_step")]
    pub every: u64,
}

fn every_step() -> u64 {
    1
}

impl RoutingTrace {
    /// Whether step `step` (1-based) is traced.
    pub fn traces_step(&self, step: u64) -> bool {
        self.every > 0 && step.is_multiple_of(self.every)
    }

    /// Whether layer `layer` is traced.
    pub fn traces_layer(&self, layer: usize) -> bool {
        self.layers.is_empty() || self.layers.contains(&layer)
    }
}

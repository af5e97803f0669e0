//! What the host grants a plugin: `log` and `metric`, bounded so that a chatty plugin
//! cannot flood the run, and the per-instance store state behind them.

use super::limits::MemoryCap;
use super::wit::recast::plugins::host;
use super::wit::types::LogLevel;
use super::wit::{aux_schedule_types, init_scheme_types, router_types, sampler_types, types};

/// Longest log message kept, in bytes.
const MAX_MESSAGE: usize = 4096;
/// Log lines kept per call; more are counted and dropped.
const MAX_LINES_PER_CALL: u32 = 256;
/// Metrics buffered between drains; more are dropped.
const MAX_METRICS: usize = 4096;
/// Log lines kept for `drain_logs`.
const MAX_KEPT_LOGS: usize = 256;

/// A line a plugin logged.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginLog {
    /// Severity the plugin gave.
    pub level: LogLevel,
    /// The message, cut to 4 KiB.
    pub message: String,
}

/// The data a plugin's store holds (memory cap, logs, metrics); opaque outside the
/// runtime, public only because [`super::Kind`] binds exports in a store of it.
pub struct PluginState {
    pub(crate) limiter: MemoryCap,
    pub(crate) plugin: String,
    pub(crate) lines_this_call: u32,
    pub(crate) dropped_lines: u64,
    pub(crate) last_panic: Option<String>,
    pub(crate) logs: Vec<PluginLog>,
    pub(crate) metrics: Vec<(String, f64)>,
}

impl PluginState {
    pub(crate) fn new(plugin: String, memory_cap: usize) -> Self {
        PluginState { limiter: MemoryCap::new(memory_cap), plugin, lines_this_call: 0, dropped_lines: 0, last_panic: None, logs: Vec::new(), metrics: Vec::new() }
    }

    /// Reset the per-call counters before a call.
    pub(crate) fn arm(&mut self) {
        self.lines_this_call = 0;
        self.last_panic = None;
        self.limiter.refused = None;
    }
}

fn truncate(mut s: String) -> String {
    if s.len() > MAX_MESSAGE {
        let mut end = MAX_MESSAGE;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push_str(" …");
    }
    s
}

impl host::Host for PluginState {
    fn log(&mut self, level: LogLevel, message: String) {
        let message = truncate(message);
        if level == LogLevel::Error && message.starts_with("panicked") {
            self.last_panic = Some(message.clone());
        }
        self.lines_this_call += 1;
        if self.lines_this_call > MAX_LINES_PER_CALL {
            self.dropped_lines += 1;
            return;
        }
        let plugin = self.plugin.as_str();
        match level {
            LogLevel::Trace => tracing::trace!(target: "plugin", plugin, "{message}"),
            LogLevel::Debug => tracing::debug!(target: "plugin", plugin, "{message}"),
            LogLevel::Info => tracing::info!(target: "plugin", plugin, "{message}"),
            LogLevel::Warn => tracing::warn!(target: "plugin", plugin, "{message}"),
            LogLevel::Error => tracing::error!(target: "plugin", plugin, "{message}"),
        }
        if self.logs.len() == MAX_KEPT_LOGS {
            self.logs.remove(0);
        }
        self.logs.push(PluginLog { level, message });
    }

    fn metric(&mut self, name: String, value: f64) {
        if self.metrics.len() < MAX_METRICS {
            self.metrics.push((truncate(name), value));
        }
    }
}

impl types::Host for PluginState {}
impl router_types::Host for PluginState {}
impl aux_schedule_types::Host for PluginState {}
impl init_scheme_types::Host for PluginState {}
impl sampler_types::Host for PluginState {}

//! Resource limits of a plugin instance: data, not code paths.

use std::time::Duration;

/// How much a plugin may use. Fuel is deterministic (a run that succeeded once succeeds
/// again); the deadline is a wall-clock guard against a plugin that is slow without
/// looping; the memory cap bounds the instance's linear memories.
#[derive(Clone, Debug, PartialEq)]
pub struct PluginLimits {
    /// Fuel per call (roughly one unit per WebAssembly instruction); `None` = unlimited.
    pub fuel_per_call: Option<u64>,
    /// Wall-clock time per call.
    pub deadline: Duration,
    /// Bytes of linear memory per instance.
    pub memory_bytes: usize,
}

impl PluginLimits {
    /// Default fuel per call: a few hundred million instructions, far above what a
    /// control-plane call needs and small enough to stop a loop within a second.
    pub const DEFAULT_FUEL: u64 = 400_000_000;
    /// Default wall-clock deadline per call.
    pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(1);
    /// Default memory cap per instance.
    pub const DEFAULT_MEMORY: usize = 128 << 20;

    /// Limits for an init scheme's one `plan` call in `recast upcycle`: made once,
    /// before any weight is read, and a large model's plan is thousands of ops (a
    /// JavaScript plan costs about 370K fuel per op, Llama-3-8B into 8 experts is about
    /// 1,000 ops). Twenty times the default fuel, a minute and 512 MiB: still bounded, so
    /// a plugin that loops is stopped.
    pub fn planning() -> Self {
        PluginLimits { fuel_per_call: Some(20 * Self::DEFAULT_FUEL), deadline: Duration::from_secs(60), memory_bytes: 512 << 20 }
    }
}

impl Default for PluginLimits {
    fn default() -> Self {
        PluginLimits { fuel_per_call: Some(Self::DEFAULT_FUEL), deadline: Self::DEFAULT_DEADLINE, memory_bytes: Self::DEFAULT_MEMORY }
    }
}

/// The store's `ResourceLimiter`: refuses growth past the cap and remembers the refusal,
/// so that the trap which follows (a Rust guest aborts on allocation failure) is reported
/// as a memory fault rather than a generic trap.
#[derive(Debug)]
pub(crate) struct MemoryCap {
    cap: usize,
    pub(crate) refused: Option<usize>,
}

impl MemoryCap {
    pub(crate) fn new(cap: usize) -> Self {
        MemoryCap { cap, refused: None }
    }

    pub(crate) fn cap(&self) -> usize {
        self.cap
    }
}

impl wasmtime::ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        if desired > self.cap {
            self.refused = Some(desired);
            return Ok(false);
        }
        Ok(true)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 1 << 20)
    }

    fn instances(&self) -> usize {
        64
    }

    fn memories(&self) -> usize {
        8
    }
}

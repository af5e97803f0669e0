//! Typed plugin failures. Every failure names the plugin, its digest, the call and the
//! step, and says what went wrong; none of them panics the host.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use super::digest::Digest;
use super::kind::PluginKind;

/// A plugin call (or load) that failed.
#[derive(Debug, thiserror::Error)]
pub struct PluginError {
    /// The plugin's name from `info`, or its file when it never got that far.
    pub plugin: String,
    /// The component's sha256, when its bytes were read.
    pub digest: Option<Digest>,
    /// The call that failed: `load`, `configure`, `spec`, `on-step`, ...
    pub call: String,
    /// The training step the call was made for, if any.
    pub step: Option<u64>,
    /// What went wrong.
    pub cause: FaultCause,
}

impl fmt::Display for PluginError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "plugin `{}`", self.plugin)?;
        if let Some(d) = &self.digest {
            write!(f, " ({d})")?;
        }
        write!(f, " failed in `{}`", self.call)?;
        if let Some(step) = self.step {
            write!(f, " at step {step}")?;
        }
        write!(f, ": {}", self.cause)
    }
}

impl PluginError {
    /// A short machine-readable name of the cause, e.g. `out-of-fuel`.
    pub fn code(&self) -> &'static str {
        self.cause.code()
    }
}

/// Why a plugin failed.
#[derive(Debug, thiserror::Error)]
pub enum FaultCause {
    /// The plugin file could not be read.
    #[error("cannot read {path}: {source}")]
    Unreadable { path: PathBuf, source: std::io::Error },
    /// The bytes are not a valid WebAssembly component.
    #[error("not a WebAssembly component: {reason}")]
    NotAComponent { reason: String },
    /// The component exports no Recast plugin interface.
    #[error("not a Recast plugin: it exports {exports}, none of the four plugin kinds of recast:plugins@{supported}")]
    NotAPlugin { exports: String, supported: &'static str },
    /// Built against a contract version this host does not speak.
    #[error("built against recast:plugins@{found}, but this host speaks recast:plugins@{supported}; rebuild the plugin with a matching recast-sdk")]
    WrongVersion { found: String, supported: &'static str },
    /// The component is of another kind than the slot it was loaded into, or its `info`
    /// disagrees with its exports.
    #[error("expected a {expected} plugin, but {found}")]
    WrongKind { expected: PluginKind, found: String },
    /// The component imports something the sandbox does not grant.
    #[error("imports `{import}`, which the sandbox does not grant (plugins may import only recast:plugins/host)")]
    ForbiddenImport { import: String },
    /// A WebAssembly trap: a Rust panic, an out-of-bounds access, `unreachable`.
    #[error("trapped: {reason}{}", panic.as_ref().map(|p| format!(" ({p})")).unwrap_or_default())]
    Trap { reason: String, panic: Option<String> },
    /// The call used up its fuel: deterministic, so it fails the same way every time.
    #[error("out of fuel: the call used all {budget} units of its budget (an endless loop?)")]
    OutOfFuel { budget: u64 },
    /// The call ran past its wall-clock deadline.
    #[error("deadline exceeded: the call ran longer than {limit:?}")]
    Deadline { limit: Duration },
    /// The instance tried to grow its memory past the cap.
    #[error("memory limit: the plugin asked for {requested} bytes of memory, over its cap of {cap} bytes")]
    MemoryLimit { requested: usize, cap: usize },
    /// The plugin returned something the host refuses to use.
    #[error("invalid output: {0}")]
    InvalidOutput(#[from] OutputViolation),
    /// `configure` returned an error.
    #[error("config rejected: {message}")]
    ConfigRejected { message: String },
    /// A call other than `configure` returned an error.
    #[error("returned an error: {message}")]
    Refused { message: String },
    /// An earlier fault left the instance unusable; it must be re-instantiated.
    #[error("the instance is unusable after an earlier fault ({earlier}); reload the plugin")]
    Poisoned { earlier: String },
    /// The runtime failed in a way not caused by the plugin's code.
    #[error("runtime error: {reason}")]
    Runtime { reason: String },
}

impl FaultCause {
    /// A short machine-readable name, e.g. `trap` or `invalid-output`.
    pub fn code(&self) -> &'static str {
        match self {
            FaultCause::Unreadable { .. } => "unreadable",
            FaultCause::NotAComponent { .. } => "not-a-component",
            FaultCause::NotAPlugin { .. } => "not-a-plugin",
            FaultCause::WrongVersion { .. } => "wrong-version",
            FaultCause::WrongKind { .. } => "wrong-kind",
            FaultCause::ForbiddenImport { .. } => "forbidden-import",
            FaultCause::Trap { .. } => "trap",
            FaultCause::OutOfFuel { .. } => "out-of-fuel",
            FaultCause::Deadline { .. } => "deadline",
            FaultCause::MemoryLimit { .. } => "memory-limit",
            FaultCause::InvalidOutput(_) => "invalid-output",
            FaultCause::ConfigRejected { .. } => "config-rejected",
            FaultCause::Refused { .. } => "refused",
            FaultCause::Poisoned { .. } => "poisoned",
            FaultCause::Runtime { .. } => "runtime",
        }
    }
}

/// What exactly was wrong with a plugin's output.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum OutputViolation {
    /// A number that must be finite was NaN or infinite.
    #[error("{field} is {value}, not a finite number")]
    NotFinite { field: String, value: f64 },
    /// A number outside its allowed range.
    #[error("{field} = {value} is out of range ({allowed})")]
    OutOfRange { field: String, value: f64, allowed: String },
    /// An index past the end of what it indexes.
    #[error("{field} = {index} is out of range (must be < {bound})")]
    IndexOutOfRange { field: String, index: u64, bound: u64 },
    /// A list of the wrong length.
    #[error("{field} has {got} entries, expected {expected}")]
    WrongLength { field: String, expected: usize, got: usize },
    /// The same index twice where each must be distinct.
    #[error("{field} lists {index} twice")]
    Duplicate { field: String, index: u64 },
    /// A reference to a tensor or layer that does not exist.
    #[error("{field} refers to unknown {what} `{name}`")]
    Unknown { field: String, what: &'static str, name: String },
    /// Values that do not fit together.
    #[error("{field}: {reason}")]
    Inconsistent { field: String, reason: String },
}

impl OutputViolation {
    /// Check that `value` is finite.
    pub fn finite(field: impl FnOnce() -> String, value: f64) -> Result<(), OutputViolation> {
        if value.is_finite() { Ok(()) } else { Err(OutputViolation::NotFinite { field: field(), value }) }
    }

    /// Check that `value` is finite and within `[lo, hi]` (`hi` may be infinite).
    pub fn within(field: impl Fn() -> String, value: f64, lo: f64, hi: f64, allowed: &str) -> Result<(), OutputViolation> {
        Self::finite(&field, value)?;
        if value < lo || value > hi {
            return Err(OutputViolation::OutOfRange { field: field(), value, allowed: allowed.to_string() });
        }
        Ok(())
    }

    /// Check that `index < bound`.
    pub fn index(field: impl FnOnce() -> String, index: u64, bound: u64) -> Result<(), OutputViolation> {
        if index < bound { Ok(()) } else { Err(OutputViolation::IndexOutOfRange { field: field(), index, bound }) }
    }

    /// Check that a list has `expected` entries.
    pub fn length(field: impl FnOnce() -> String, expected: usize, got: usize) -> Result<(), OutputViolation> {
        if expected == got { Ok(()) } else { Err(OutputViolation::WrongLength { field: field(), expected, got }) }
    }
}

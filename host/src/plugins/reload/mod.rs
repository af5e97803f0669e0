//! Hot reload: a watcher thread notices that a plugin's file (or crate folder, or
//! bundle) changed, waits for the writes to settle, fetches the new component, and
//! vets it off the training thread: the digest must be pinned when the run requires
//! it, the component must be a plugin of the same kind and a compatible WIT version,
//! and `info` and `configure` must succeed on a trial instance. What passes is handed
//! to the trainer as a [`ReloadEvent::Candidate`], which swaps it in at the next step
//! boundary after loading the running version's state into it; what fails is a
//! [`ReloadEvent::Rejected`] and the running version goes on.

mod vet;
mod watch;

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

pub use watch::ReloadWatcher;

use super::{Digest, PluginComponent, PluginKind};

/// How long a file must be quiet before it is read: editors and `cp` write in pieces.
pub const DEBOUNCE: Duration = Duration::from_millis(150);

/// The bytes of a role's component as they are now, and a label naming where they
/// came from.
pub struct Fetched {
    pub label: String,
    pub bytes: Vec<u8>,
}

/// Produces a role's current component: reads a file, rebuilds a crate folder, or
/// opens and verifies a bundle. An error is a rejection reason.
pub type Fetch = Box<dyn FnMut() -> Result<Fetched, String> + Send>;

/// One watched plugin role.
pub struct WatchedPlugin {
    /// The run config's section name: `router`, `aux_schedule` or `sampler`.
    pub role: &'static str,
    /// The kind the role needs.
    pub kind: PluginKind,
    /// Files and folders whose changes mean the component may have changed.
    pub paths: Vec<PathBuf>,
    /// Folders among `paths` are watched recursively when true.
    pub recursive: bool,
    pub fetch: Fetch,
    /// The digest running now; the same bytes again are not a change (the trainer also
    /// ignores a candidate identical to what runs).
    pub running: Digest,
}

/// What the watcher found.
pub enum ReloadEvent {
    /// A new version that passed vetting, ready to swap in.
    Candidate(Candidate),
    /// A new version that did not, and why.
    Rejected(Rejection),
}

/// A vetted new version of a role's plugin.
pub struct Candidate {
    pub role: &'static str,
    pub component: PluginComponent,
    /// The component's bytes, for the other ranks of a multi-process job (they swap in
    /// the version rank 0's watcher found, at the same step).
    pub bytes: std::sync::Arc<Vec<u8>>,
    /// When the first change event arrived.
    pub noticed: Instant,
    /// When the first change event arrived, as wall-clock time for the journal.
    pub noticed_at: SystemTime,
    /// Time spent fetching, compiling and vetting, off the training thread.
    pub vetting: Duration,
}

/// A new version refused before it reached the training thread.
pub struct Rejection {
    pub role: &'static str,
    /// Where it came from.
    pub label: String,
    /// Its sha256, when its bytes could be read.
    pub digest: Option<Digest>,
    pub reason: String,
    pub noticed_at: SystemTime,
}

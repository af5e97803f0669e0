//! The checks a new version passes before it may be swapped in, all off the training
//! thread: pinned digest, kind and WIT version, `info` and `configure` on a trial
//! instance.

use std::path::Path;
use std::sync::Arc;

use super::super::lock::LockFile;
use super::super::{Digest, PluginComponent, PluginEngine, PluginInstance, PluginKind, PluginLimits};
use super::Fetched;

/// What vetting needs besides the component.
pub(super) struct Vetting {
    pub engine: Arc<PluginEngine>,
    pub seed: u64,
    pub limits: PluginLimits,
    /// The lock file, when the run requires pinned digests; re-read for every check so
    /// that `recast lock` during a run takes effect.
    pub lock: Option<std::path::PathBuf>,
}

impl Vetting {
    /// Vet `fetched` for `role`: the component if it may run, else the reason it may not.
    pub fn check(&self, role: &str, kind: PluginKind, fetched: &Fetched, digest: Digest, params: &str) -> Result<PluginComponent, String> {
        if let Some(path) = &self.lock {
            pinned(path, role, &fetched.label, digest)?;
        }
        let component = self.engine.load_bytes(&fetched.label, &fetched.bytes).map_err(|e| e.to_string())?;
        if component.kind() != kind {
            return Err(format!("{} is a {} plugin (world {}), but the {role} slot needs a {kind} plugin (world {})", fetched.label, component.kind(), component.kind().world(), kind.world()));
        }
        PluginInstance::new(&self.engine, &component, kind, params, self.seed, self.limits.clone()).map_err(|e| e.to_string())?;
        Ok(component)
    }
}

fn pinned(path: &Path, role: &str, label: &str, digest: Digest) -> Result<(), String> {
    let lock = LockFile::read(path).map_err(|e| e.to_string())?;
    lock.check(path, role, label, digest).map_err(|e| e.to_string())
}

//! Lock files: the sha256 of every plugin a run config uses, written by `recast lock`.
//! With `require_pinned = true` a run refuses, before step 0 and at every hot reload,
//! any plugin whose digest the lock does not list for its role.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Digest, PluginKind};

/// The lock file's format version.
const LOCK_VERSION: u32 = 1;

/// A lock file.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LockFile {
    /// Format version (1).
    pub version: u32,
    /// One entry per role.
    #[serde(rename = "plugin", default)]
    pub plugins: Vec<PinnedPlugin>,
}

/// The digest pinned for one role of a run config.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PinnedPlugin {
    /// The config section: `router`, `aux_schedule` or `sampler`.
    pub role: String,
    /// The plugin's kind.
    pub kind: PluginKind,
    /// Where the component came from when it was locked (for people; not checked).
    pub source: String,
    /// 64 hex digits.
    pub sha256: String,
}

/// A plugin refused by its lock file.
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("require_pinned = true, but the lock file {path} cannot be read ({source}); write it with `recast lock CONFIG.toml`")]
    NoLock { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    BadLock { path: PathBuf, reason: String },
    #[error("the {role} plugin {label} ({digest}) is not pinned: {path} has no entry for `{role}`; run `recast lock` to pin it")]
    Unpinned { role: String, label: String, digest: Digest, path: PathBuf },
    #[error("the {role} plugin {label} is {digest}, but {path} pins sha256:{pinned}; it changed since it was locked (run `recast lock` again if the change is wanted)")]
    Changed { role: String, label: String, digest: Digest, pinned: String, path: PathBuf },
}

impl LockFile {
    /// A lock of the given pins.
    pub fn new(plugins: Vec<PinnedPlugin>) -> Self {
        LockFile { version: LOCK_VERSION, plugins }
    }

    /// Read and parse `path`.
    pub fn read(path: &Path) -> Result<Self, PinError> {
        let text = std::fs::read_to_string(path).map_err(|source| PinError::NoLock { path: path.to_path_buf(), source })?;
        let bad = |reason: String| PinError::BadLock { path: path.to_path_buf(), reason };
        let lock: LockFile = toml::from_str(&text).map_err(|e| bad(e.to_string().trim_end().to_string()))?;
        if lock.version != LOCK_VERSION {
            return Err(bad(format!("lock format version {} is not {LOCK_VERSION}", lock.version)));
        }
        Ok(lock)
    }

    /// Write atomically, with a header saying what the file is.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let body = toml::to_string(self).map_err(std::io::Error::other)?;
        let text = format!("# Written by `recast lock`: the sha256 of every plugin the run config uses.\n# With `require_pinned = true` the run refuses any other code.\n{body}");
        crate::atomic_file::write(path, text.as_bytes())
    }

    /// Refuse `digest` for `role` unless this lock (read from `path`) pins exactly it.
    pub fn check(&self, path: &Path, role: &str, label: &str, digest: Digest) -> Result<(), PinError> {
        let pinned = self.plugins.iter().find(|p| p.role == role).ok_or_else(|| PinError::Unpinned { role: role.into(), label: label.into(), digest, path: path.to_path_buf() })?;
        if !pinned.sha256.eq_ignore_ascii_case(&digest.to_hex()) {
            return Err(PinError::Changed { role: role.into(), label: label.into(), digest, pinned: pinned.sha256.clone(), path: path.to_path_buf() });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_pinned_digest_passes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("run.lock");
        let good = Digest::of(b"v1");
        LockFile::new(vec![PinnedPlugin { role: "router".into(), kind: PluginKind::Router, source: "x.wasm".into(), sha256: good.to_hex() }]).write(&path).expect("write");
        let lock = LockFile::read(&path).expect("read");
        assert!(lock.check(&path, "router", "x", good).is_ok());
        assert!(matches!(lock.check(&path, "router", "x", Digest::of(b"v2")), Err(PinError::Changed { .. })));
        assert!(matches!(lock.check(&path, "sampler", "y", good), Err(PinError::Unpinned { .. })));
    }
}

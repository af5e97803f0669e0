//! An on-disk cache of compiled components, so that a large component (a Python or
//! JavaScript plugin embeds an interpreter: tens of MB, seconds to compile) is compiled
//! once per version and machine, not once per process. Entries are keyed by the
//! component's sha256 and the engine's compatibility hash, carry a sha256 of their own
//! bytes (a damaged entry is recompiled, never loaded), and are written atomically.
//! `RECAST_CACHE_DIR` moves the cache (default `$XDG_CACHE_HOME/recast` or
//! `~/.cache/recast`); `RECAST_CACHE_DIR=off` turns it off.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;

use wasmtime::Engine;
use wasmtime::component::Component;

use super::digest::Digest;

/// Components smaller than this compile in well under a second: not worth an entry.
const MIN_CACHED_BYTES: usize = 1 << 20;

/// Where compiled components are kept for one engine configuration.
pub(crate) struct CompileCache {
    dir: Option<PathBuf>,
    compat: String,
}

impl CompileCache {
    pub fn new(engine: &Engine) -> Self {
        let dir = match std::env::var_os("RECAST_CACHE_DIR") {
            Some(v) if v == "off" => None,
            Some(v) => Some(PathBuf::from(v)),
            None => std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache"))).map(|d| d.join("recast")),
        };
        let mut h = DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        CompileCache { dir: dir.map(|d| d.join("components")), compat: format!("{:016x}", h.finish()) }
    }

    /// A cache that keeps nothing: every load compiles.
    pub fn disabled(engine: &Engine) -> Self {
        CompileCache { dir: None, ..Self::new(engine) }
    }

    fn entry(&self, digest: Digest, size: usize) -> Option<PathBuf> {
        let dir = self.dir.as_ref().filter(|_| size >= MIN_CACHED_BYTES)?;
        Some(dir.join(format!("{}-{}.cwasm", digest.to_hex(), self.compat)))
    }

    /// The compiled component for `digest`, if a sound entry exists.
    pub fn load(&self, engine: &Engine, digest: Digest, size: usize) -> Option<Component> {
        let bytes = std::fs::read(self.entry(digest, size)?).ok()?;
        let (check, payload) = bytes.split_at_checked(32)?;
        if Digest::of(payload).0 != check {
            return None;
        }
        // SAFETY: the payload is exactly what `store` wrote from `Component::serialize`
        // (its sha256 matches), in a cache only this user writes; wasmtime itself refuses
        // artifacts from another version or configuration.
        unsafe { Component::deserialize(engine, payload) }.ok()
    }

    /// Keep `component` for the next process; failures only cost a recompile later.
    pub fn store(&self, component: &Component, digest: Digest, size: usize) {
        let (Some(path), Ok(payload)) = (self.entry(digest, size), component.serialize()) else { return };
        if let Some(dir) = path.parent()
            && std::fs::create_dir_all(dir).is_ok()
        {
            let mut bytes = Digest::of(&payload).0.to_vec();
            bytes.extend_from_slice(&payload);
            if let Err(e) = crate::atomic_file::write(&path, &bytes) {
                tracing::debug!("cannot cache the compiled component in {}: {e}", path.display());
            }
        }
    }
}

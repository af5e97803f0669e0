//! `recast lock CONFIG.toml`: pin the sha256 of every plugin the config uses.

use std::path::Path;

use anyhow::Context;

use crate::plugins::PluginEngine;
use crate::plugins::lock::{LockFile, PinnedPlugin};
use crate::run::plugins::load_run_plugins;
use crate::train::config::RunConfig;

pub(super) fn run(config: &Path, out: Option<&Path>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(config).with_context(|| format!("cannot read the run config {}", config.display()))?;
    let absolute = std::path::absolute(config).with_context(|| format!("cannot resolve {}", config.display()))?;
    let mut parsed = RunConfig::parse(&text, &absolute)?;
    // Locking writes the pins; it does not need them to match already.
    parsed.require_pinned = false;
    let path = out.map(Path::to_path_buf).or_else(|| parsed.lock_file.clone()).unwrap_or_else(|| absolute.with_extension("lock"));
    let engine = PluginEngine::new()?;
    let plugins = load_run_plugins(&engine, &parsed)?;
    let pins: Vec<PinnedPlugin> =
        plugins.loaded.iter().map(|(role, kind, source, component)| PinnedPlugin { role: role.to_string(), kind: *kind, source: source.clone(), sha256: component.digest().to_hex() }).collect();
    if pins.is_empty() {
        println!("{} uses no plugins; the lock file pins nothing", config.display());
    }
    LockFile::new(pins.clone()).write(&path).with_context(|| format!("cannot write {}", path.display()))?;
    println!("wrote {}", path.display());
    for p in &pins {
        println!("  {:<13} sha256:{}  {}", p.role, p.sha256, p.source);
    }
    Ok(())
}

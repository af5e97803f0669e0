//! The plugins a run config names, loaded for a run: from a reference plugin, a file,
//! a crate folder or a bundle; checked against the lock file when the run requires
//! pinned digests; and described for the hot-reload watcher (what to watch, how to
//! fetch the new bytes).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::plugin_source::{Builtin, find_builtin};
use crate::plugin_build::build_plugins;
use crate::plugin_build::embedded::EmbeddedPlugin;
use crate::plugins::MAX_COMPONENT_BYTES;
use crate::plugins::bundle::{Bundle, BundleLimits, PublicKey};
use crate::plugins::lock::LockFile;
use crate::plugins::reload::{Fetch, Fetched, WatchedPlugin};
use crate::plugins::{PluginComponent, PluginEngine, PluginKind};
use crate::train::config::{PluginRef, RunConfig};
use crate::train::role::Role;
use crate::train::trainer::PluginSet;

/// A run's plugins and how to watch them: what the trainer needs to start, and what the
/// hot-reload watcher and `recast lock` need to follow and pin them.
pub struct RunPlugins {
    /// The components with their parameters, for the trainer.
    pub set: PluginSet,
    /// What to watch for each plugin and how to fetch its new bytes.
    pub watched: Vec<WatchedPlugin>,
    /// Role, kind, where it came from, component: for `recast lock`.
    pub loaded: Vec<(&'static str, PluginKind, String, PluginComponent)>,
}

/// Load every plugin `config` names; with `require_pinned`, refuse any the lock file
/// does not pin. The one place a config's plugin references become components, so a
/// run, a lock file and a benchmark all load the same bytes.
pub fn load_run_plugins(engine: &PluginEngine, config: &RunConfig) -> anyhow::Result<RunPlugins> {
    let trusted = trusted_keys(config)?;
    let mut out = RunPlugins { set: PluginSet::default(), watched: Vec::new(), loaded: Vec::new() };
    for run_role in Role::all() {
        let (role, kind) = (run_role.as_str(), run_role.kind());
        let Some(r) = config.plugins.get(run_role) else { continue };
        let params = toml::to_string(&r.params).with_context(|| format!("[plugins.{role}].params"))?;
        let source = Source::of(r, kind).with_context(|| format!("[plugins.{role}]"))?;
        let mut fetch = source.fetcher(kind, trusted.clone(), config.bundle_limits);
        let fetched = fetch().map_err(anyhow::Error::msg).with_context(|| format!("[plugins.{role}]"))?;
        let component = engine.load_bytes(&fetched.label, &fetched.bytes).with_context(|| format!("[plugins.{role}]: cannot load {}", fetched.label))?;
        if component.kind() != kind {
            bail!("[plugins.{role}]: {} is a {} plugin, not a {kind}", fetched.label, component.kind());
        }
        out.watched.push(WatchedPlugin { role, kind, paths: source.watch_paths(), recursive: true, fetch, running: component.digest() });
        out.loaded.push((role, kind, source.describe(), component.clone()));
        out.set.insert(run_role, component, params);
    }
    for (i, r) in config.plugins.shadow_router.iter().enumerate() {
        let Some(&role) = crate::train::trainer::SHADOW_ROLES.get(i) else { bail!("[[plugins.shadow_router]]: at most {} shadow routers", crate::train::trainer::SHADOW_ROLES.len()) };
        let params = toml::to_string(&r.params).with_context(|| format!("[[plugins.shadow_router]] {i}: params"))?;
        let source = Source::of(r, PluginKind::Router).with_context(|| format!("[[plugins.shadow_router]] {i}"))?;
        let mut fetch = source.fetcher(PluginKind::Router, trusted.clone(), config.bundle_limits);
        let fetched = fetch().map_err(anyhow::Error::msg).with_context(|| format!("[[plugins.shadow_router]] {i}"))?;
        let component = engine.load_bytes(&fetched.label, &fetched.bytes).with_context(|| format!("[[plugins.shadow_router]] {i}: cannot load {}", fetched.label))?;
        if component.kind() != PluginKind::Router {
            bail!("[[plugins.shadow_router]] {i}: {} is a {} plugin, not a router", fetched.label, component.kind());
        }
        out.watched.push(WatchedPlugin { role, kind: PluginKind::Router, paths: source.watch_paths(), recursive: true, fetch, running: component.digest() });
        out.loaded.push((role, PluginKind::Router, source.describe(), component.clone()));
        out.set.insert_shadow(component, params);
    }
    if config.require_pinned {
        let path = config.lock_file.clone().unwrap_or_default();
        let lock = LockFile::read(&path)?;
        for (role, _, _, component) in &out.loaded {
            lock.check(&path, role, component.label(), component.digest())?;
        }
    }
    Ok(out)
}

/// The run's trusted bundle-signing keys.
fn trusted_keys(config: &RunConfig) -> anyhow::Result<Vec<PublicKey>> {
    config.trusted_keys.iter().map(|k| PublicKey::from_config(k, Path::new("")).context("trusted_keys")).collect()
}

/// Where a role's component comes from.
enum Source {
    /// A reference plugin compiled into this binary: fixed for the binary's life.
    Embedded(&'static EmbeddedPlugin),
    /// A `.wasm` file.
    File(PathBuf),
    /// A plugin crate folder (a reference plugin, or `file` naming a folder): rebuilt
    /// when its sources change.
    Crate(PathBuf),
    Bundle {
        path: PathBuf,
        plugin: Option<String>,
    },
}

impl Source {
    fn of(r: &PluginRef, kind: PluginKind) -> anyhow::Result<Self> {
        if let Some(path) = &r.bundle {
            return Ok(Source::Bundle { path: path.clone(), plugin: r.plugin.clone() });
        }
        if let Some(file) = &r.file
            && !file.is_dir()
        {
            if !file.exists() {
                bail!("plugin file {} does not exist", file.display());
            }
            return Ok(Source::File(file.clone()));
        }
        let dir = match (&r.builtin, &r.file) {
            (Some(name), _) => match find_builtin(name, kind)? {
                Builtin::Embedded(plugin) => return Ok(Source::Embedded(plugin)),
                Builtin::Source(dir) => dir,
            },
            (None, Some(dir)) => dir.clone(),
            (None, None) => bail!("name a reference plugin, a plugin file or a bundle"),
        };
        Ok(Source::Crate(dir))
    }

    fn describe(&self) -> String {
        match self {
            Source::Embedded(plugin) => plugin.label(),
            Source::File(p) | Source::Crate(p) => p.display().to_string(),
            Source::Bundle { path, plugin } => format!("{} ({})", path.display(), plugin.as_deref().unwrap_or("its only plugin of this kind")),
        }
    }

    fn watch_paths(&self) -> Vec<PathBuf> {
        match self {
            Source::Embedded(_) => Vec::new(),
            Source::File(p) => vec![p.clone()],
            Source::Crate(dir) => vec![dir.join("src"), dir.join("Cargo.toml")],
            Source::Bundle { path, .. } => vec![path.clone()],
        }
    }

    fn fetcher(&self, kind: PluginKind, trusted: Vec<PublicKey>, limits: BundleLimits) -> Fetch {
        match self {
            Source::Embedded(plugin) => {
                let plugin: &'static EmbeddedPlugin = plugin;
                Box::new(move || Ok(Fetched { label: plugin.label(), bytes: plugin.component().map_err(|e| format!("{e:#}"))?.to_vec() }))
            }
            Source::File(path) => {
                let path = path.clone();
                Box::new(move || {
                    // A regular file only, never blocking: the watcher calls this too, and a
                    // FIFO put in the plugin's place must not hang it.
                    let bytes = crate::regular_file::read(&path, MAX_COMPONENT_BYTES).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    Ok(Fetched { label: path.display().to_string(), bytes })
                })
            }
            Source::Crate(dir) => {
                let dir = dir.clone();
                Box::new(move || {
                    let built = build_plugins(&dir).map_err(|e| format!("cannot build {}: {e:#}", dir.display()))?;
                    let path = built.into_iter().next().map(|b| b.path).ok_or_else(|| format!("building {} produced no component", dir.display()))?;
                    let bytes = crate::regular_file::read(&path, MAX_COMPONENT_BYTES).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                    Ok(Fetched { label: path.display().to_string(), bytes })
                })
            }
            Source::Bundle { path, plugin } => {
                let (path, plugin) = (path.clone(), plugin.clone());
                Box::new(move || {
                    let bundle = Bundle::open_within(&path, &limits).map_err(|e| e.to_string())?;
                    bundle.check_trust(&trusted).map_err(|e| e.to_string())?;
                    let (entry, bytes) = bundle.plugin(kind, plugin.as_deref()).map_err(|e| e.to_string())?;
                    Ok(Fetched { label: format!("{}:{}", path.display(), entry.file), bytes: bytes.to_vec() })
                })
            }
        }
    }
}

//! Building plugins: turn a plugin's source into a component, whatever its language,
//! so a run can name a plugin by its source folder and a Rust program can build one
//! without the `recast` binary. A folder with `Cargo.toml` is Rust (a crate, or a
//! workspace of plugins), one with `pyproject.toml` and a `[tool.recast]` table is Python
//! (componentize-py), one with `package.json` and a `"recast"` key is JavaScript
//! (componentize-js). Every output is loaded once to say whether this host accepts it.

pub mod embedded;
mod javascript;
mod python;
mod rust;
pub mod rustflags;
mod tools;

use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::plugins::{PluginEngine, PluginKind};

/// A plugin component that `build_plugins` wrote.
#[derive(Clone, Debug)]
pub struct BuiltPlugin {
    /// Package name, e.g. `topk-softmax`.
    pub name: String,
    /// The kind, or `None` when this host refuses the component (see `refused`).
    pub kind: Option<PluginKind>,
    /// Why this host would refuse to load the component, if it would.
    pub refused: Option<String>,
    /// The component file.
    pub path: PathBuf,
    /// The component's size, for the build summary.
    pub size_bytes: usize,
}

/// Build the plugin at `path` (any language), or every plugin of the plugin workspace at
/// `path` (its Rust crates, then its Python and JavaScript plugin folders), into
/// components under `<target>/plugins/<name>.wasm`.
pub fn build_plugins(path: &Path) -> anyhow::Result<Vec<BuiltPlugin>> {
    // One engine checks every component this call writes.
    let engine = PluginEngine::new()?;
    if python::is_plugin(path) {
        return Ok(vec![python::build(&engine, path, &out_dir_for(path))?]);
    }
    if javascript::is_plugin(path) {
        return Ok(vec![javascript::build(&engine, path, &out_dir_for(path))?]);
    }
    if !path.join("Cargo.toml").exists() {
        anyhow::bail!("no plugin at {}: expected Cargo.toml (Rust), pyproject.toml with a [tool.recast] table (Python) or package.json with a \"recast\" key (JavaScript)", path.display());
    }
    let mut built = rust::build(&engine, path)?;
    if is_virtual_workspace(path) {
        let out_dir = std::path::absolute(path).with_context(|| format!("cannot resolve {}", path.display()))?.join("target").join("plugins");
        for dir in plugin_folders(path) {
            if python::is_plugin(&dir) {
                built.push(python::build(&engine, &dir, &out_dir)?);
            } else if javascript::is_plugin(&dir) {
                built.push(javascript::build(&engine, &dir, &out_dir)?);
            }
        }
    }
    Ok(built)
}

/// Load `bytes` (written to `path`) once to learn its kind or why this host refuses it.
fn checked(engine: &PluginEngine, name: String, path: PathBuf, bytes: &[u8]) -> anyhow::Result<BuiltPlugin> {
    let (kind, refused) = match engine.load_bytes(&path.display().to_string(), bytes) {
        Ok(component) => (Some(component.kind()), None),
        Err(e) => (None, Some(e.cause.to_string())),
    };
    Ok(BuiltPlugin { name, kind, refused, path, size_bytes: bytes.len() })
}

/// The source tree this library was built from, where the SDK and the reference
/// plugins live: reference plugins are built from source, not shipped as binaries.
pub fn source_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where a non-Rust plugin's component goes: beside the Rust plugins' when the folder
/// sits in a plugin workspace (`<workspace>/<kind>/<name>`), else `<folder>/target/plugins`.
fn out_dir_for(dir: &Path) -> PathBuf {
    match dir.canonicalize().ok().and_then(|d| d.parent().and_then(Path::parent).map(Path::to_path_buf)) {
        Some(ws) if is_virtual_workspace(&ws) => ws.join("target").join("plugins"),
        _ => std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()).join("target").join("plugins"),
    }
}

fn is_virtual_workspace(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("Cargo.toml")).ok().and_then(|t| t.parse::<toml::Table>().ok()).is_some_and(|doc| doc.contains_key("workspace") && !doc.contains_key("package"))
}

/// `<workspace>/<kind>/<name>` folders, sorted.
fn plugin_folders(workspace: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for kind in PluginKind::ALL {
        if let Ok(entries) = std::fs::read_dir(workspace.join(kind.as_str())) {
            out.extend(entries.filter_map(|e| e.ok()).map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    out.sort();
    out
}

/// Read a file the build depends on, with its path in the error.
fn read(path: &Path) -> anyhow::Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))
}

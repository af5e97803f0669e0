//! Finding a plugin's component file: a reference plugin by name (built from
//! `plugins/<kind>/<name>`), a plugin crate folder (built), or a `.wasm`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::plugin_build::{build_plugins, source_root};
use crate::plugins::PluginKind;

/// The component for `builtin` (a reference plugin's name) or `file` (a `.wasm` or a
/// crate folder); exactly one is given. Lets every caller name a plugin the same way a
/// run config does, whether it ships as a binary or as source.
pub fn plugin_file(builtin: Option<&str>, file: Option<&Path>, kind: PluginKind) -> anyhow::Result<PathBuf> {
    let folder = match (builtin, file) {
        (Some(name), _) => builtin_dir(name, kind)?,
        (None, Some(file)) if file.is_dir() => file.to_path_buf(),
        (None, Some(file)) => {
            if !file.exists() {
                bail!("plugin file {} does not exist", file.display());
            }
            return Ok(file.to_path_buf());
        }
        (None, None) => bail!("name a reference plugin or a plugin file"),
    };
    let built = build_plugins(&folder).with_context(|| format!("cannot build {}", folder.display()))?;
    built.into_iter().next().map(|b| b.path).ok_or_else(|| anyhow::anyhow!("building {} produced no component", folder.display()))
}

/// The crate folder of the reference plugin `name` of `kind`: reference plugins ship as
/// source, and an unknown name is answered with the names that exist.
pub fn builtin_dir(name: &str, kind: PluginKind) -> anyhow::Result<PathBuf> {
    let kind_dir = source_root().join("plugins").join(kind.to_string());
    let dir = kind_dir.join(name);
    if !dir.join("Cargo.toml").exists() {
        let mut known: Vec<String> =
            std::fs::read_dir(&kind_dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned())).filter(|n| !n.starts_with('.')).collect()).unwrap_or_default();
        known.sort();
        bail!("no reference {kind} plugin {name:?} (reference {kind} plugins: {})", known.join(", "));
    }
    Ok(dir)
}

/// `--scheme NAME|FILE`: a path if it names an existing file or folder or ends in
/// `.wasm`, else a reference plugin's name. One rule for the command line and recipes,
/// so a scheme means the same thing in both.
pub fn scheme_file(scheme: &str, kind: PluginKind) -> anyhow::Result<PathBuf> {
    let path = Path::new(scheme);
    if path.exists() || scheme.ends_with(".wasm") || scheme.contains('/') { plugin_file(None, Some(path), kind) } else { plugin_file(Some(scheme), None, kind) }
}

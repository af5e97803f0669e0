//! Finding a plugin's component: a reference plugin by name (embedded in this binary,
//! or built from `plugins/<kind>/<name>` in the checkout for the Python and JavaScript
//! ones), a plugin folder (built), or a `.wasm`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::plugin_build::embedded::{self, EmbeddedPlugin};
use crate::plugin_build::{build_plugins, source_root};
use crate::plugins::{MAX_COMPONENT_BYTES, PluginKind};

/// A component's bytes and the name errors and logs give it.
pub struct ComponentBytes {
    /// `builtin:NAME@VERSION` or the file's path.
    pub label: String,
    /// The component.
    pub bytes: Vec<u8>,
}

/// Where the reference plugin `name` of `kind` comes from.
pub enum Builtin {
    /// Compiled into this binary.
    Embedded(&'static EmbeddedPlugin),
    /// Built from its source folder in the checkout this binary was built from (the
    /// Python and JavaScript reference plugins, which need their language's toolchain).
    Source(PathBuf),
}

/// The component for `builtin` (a reference plugin's name) or `file` (a `.wasm` or a
/// plugin folder); exactly one is given. Lets every caller name a plugin the same way a
/// run config does, whether it ships in the binary, as a file or as source.
pub fn plugin_bytes(builtin: Option<&str>, file: Option<&Path>, kind: PluginKind) -> anyhow::Result<ComponentBytes> {
    let folder = match (builtin, file) {
        (Some(name), _) => match find_builtin(name, kind)? {
            Builtin::Embedded(plugin) => return Ok(ComponentBytes { label: plugin.label(), bytes: plugin.component()?.to_vec() }),
            Builtin::Source(dir) => dir,
        },
        (None, Some(file)) if file.is_dir() => file.to_path_buf(),
        (None, Some(file)) => {
            if !file.exists() {
                bail!("plugin file {} does not exist", file.display());
            }
            return read_component(file);
        }
        (None, None) => bail!("name a reference plugin or a plugin file"),
    };
    let built = build_plugins(&folder).with_context(|| format!("cannot build {}", folder.display()))?;
    let path = built.into_iter().next().map(|b| b.path).ok_or_else(|| anyhow::anyhow!("building {} produced no component", folder.display()))?;
    read_component(&path)
}

fn read_component(path: &Path) -> anyhow::Result<ComponentBytes> {
    let bytes = crate::regular_file::read(path, MAX_COMPONENT_BYTES).with_context(|| format!("cannot read {}", path.display()))?;
    Ok(ComponentBytes { label: path.display().to_string(), bytes })
}

/// The reference plugin `name` of `kind`: embedded, else the source folder of a Python or
/// JavaScript one in the checkout. An unknown name is answered with the names that exist.
pub fn find_builtin(name: &str, kind: PluginKind) -> anyhow::Result<Builtin> {
    if let Some(plugin) = embedded::find(name, kind) {
        return Ok(Builtin::Embedded(plugin));
    }
    let kind_dir = source_root().join("plugins").join(kind.to_string());
    let dir = kind_dir.join(name);
    let is_plugin_source = ["pyproject.toml", "package.json"].iter().any(|f| dir.join(f).is_file());
    if is_plugin_source {
        return Ok(Builtin::Source(dir));
    }
    let mut known: Vec<String> = embedded::embedded().iter().filter(|p| p.kind == kind).map(|p| p.name.to_string()).collect();
    if let Ok(entries) = std::fs::read_dir(&kind_dir) {
        known.extend(entries.filter_map(|e| e.ok()).filter(|e| ["pyproject.toml", "package.json"].iter().any(|f| e.path().join(f).is_file())).map(|e| e.file_name().to_string_lossy().into_owned()));
    }
    known.sort();
    known.dedup();
    bail!("no reference {kind} plugin {name:?} (reference {kind} plugins: {})", known.join(", "))
}

/// `--scheme NAME|FILE`: a path if it names an existing file or folder or ends in
/// `.wasm`, else a reference plugin's name. One rule for the command line and recipes,
/// so a scheme means the same thing in both.
pub fn scheme_bytes(scheme: &str, kind: PluginKind) -> anyhow::Result<ComponentBytes> {
    let path = Path::new(scheme);
    if path.exists() || scheme.ends_with(".wasm") || scheme.contains('/') { plugin_bytes(None, Some(path), kind) } else { plugin_bytes(Some(scheme), None, kind) }
}

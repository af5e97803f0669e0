//! Rust plugins: cargo builds the crate for `wasm32-unknown-unknown`, then the core
//! module is wrapped into a component. No WASI adapter is linked in, so the component
//! imports nothing but `recast:plugins`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use super::{BuiltPlugin, checked};
use crate::plugins::PluginEngine;

/// The Rust target plugins are compiled for.
pub const WASM_TARGET: &str = "wasm32-unknown-unknown";

/// Build the plugin crate (or every plugin of the workspace) at `path` into components
/// under `<cargo target dir>/plugins/<name>.wasm`, and say whether this host accepts
/// each one.
pub(super) fn build(engine: &PluginEngine, path: &Path) -> anyhow::Result<Vec<BuiltPlugin>> {
    let manifest = path.join("Cargo.toml");
    let text = std::fs::read_to_string(&manifest).with_context(|| format!("no plugin crate at {}: cannot read {}", path.display(), manifest.display()))?;
    let doc: toml::Table = text.parse().with_context(|| format!("{} is not valid TOML", manifest.display()))?;
    let virtual_workspace = doc.contains_key("workspace") && !doc.contains_key("package");
    ensure_target()?;

    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "--release", "--target", WASM_TARGET, "--message-format=json-render-diagnostics", "--manifest-path"]).arg(&manifest).stdout(Stdio::piped()).stderr(Stdio::inherit());
    if virtual_workspace {
        cmd.arg("--workspace");
    }
    cmd.arg("--config").arg(path_remap_rustflags());
    let mut child = cmd.spawn().context("cannot run cargo (is the Rust toolchain installed?)")?;
    let mut modules = Vec::new();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line.context("reading cargo's output")?;
            if let Some(found) = cdylib_artifact(&line) {
                modules.push(found);
            }
        }
    }
    let status = child.wait().context("waiting for cargo")?;
    if !status.success() {
        bail!("cargo build of {} failed ({status})", path.display());
    }
    if modules.is_empty() {
        bail!("{} built no WebAssembly library: a plugin crate needs `[lib] crate-type = [\"cdylib\"]`", path.display());
    }

    let mut built = Vec::new();
    for (name, module) in modules {
        // <target>/wasm32-unknown-unknown/release/x.wasm -> <target>/plugins/<name>.wasm
        let target_dir = module.ancestors().nth(3).map(Path::to_path_buf).unwrap_or_else(|| path.join("target"));
        let out_dir = target_dir.join("plugins");
        std::fs::create_dir_all(&out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
        let out = out_dir.join(format!("{name}.wasm"));
        let bytes = componentize(&module).with_context(|| format!("turning {} into a component", module.display()))?;
        crate::atomic_file::write(&out, &bytes).with_context(|| format!("cannot write {}", out.display()))?;
        built.push(checked(engine, name, out, &bytes)?);
    }
    Ok(built)
}

fn path_remap_rustflags() -> String {
    super::rustflags::path_remap_config(&super::source_root())
}

/// `(package name, module path)` of a cdylib wasm artifact in one line of cargo's JSON.
fn cdylib_artifact(line: &str) -> Option<(String, PathBuf)> {
    let msg: serde_json::Value = serde_json::from_str(line).ok()?;
    if msg.get("reason")?.as_str()? != "compiler-artifact" {
        return None;
    }
    let target = msg.get("target")?;
    let is_cdylib = target.get("crate_types")?.as_array()?.iter().any(|t| t.as_str() == Some("cdylib"));
    if !is_cdylib {
        return None;
    }
    let file = msg.get("filenames")?.as_array()?.iter().filter_map(|f| f.as_str()).find(|f| f.ends_with(".wasm"))?;
    let name = target.get("name")?.as_str()?.replace('_', "-");
    Some((name, PathBuf::from(file)))
}

/// Wrap a core module (with the component-type section wit-bindgen embedded) into a
/// component.
fn componentize(module: &Path) -> anyhow::Result<Vec<u8>> {
    let bytes = std::fs::read(module).with_context(|| format!("cannot read {}", module.display()))?;
    componentize_module(&bytes)
}

/// Wrap core-module bytes into a component (the embedded reference plugins are stored as
/// core modules and wrapped when first used).
pub(super) fn componentize_module(bytes: &[u8]) -> anyhow::Result<Vec<u8>> {
    wit_component::ComponentEncoder::default().validate(true).module(bytes).and_then(|encoder| encoder.encode()).map_err(|e| anyhow::anyhow!("{e:#}"))
}

/// Install the wasm target with rustup when it is missing.
fn ensure_target() -> anyhow::Result<()> {
    let installed = Command::new("rustup").args(["target", "list", "--installed"]).output();
    match installed {
        Ok(out) if out.status.success() => {
            if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.trim() == WASM_TARGET) {
                return Ok(());
            }
            eprintln!("installing the Rust target {WASM_TARGET} (once)");
            let status = Command::new("rustup").args(["target", "add", WASM_TARGET]).status().context("running rustup")?;
            if !status.success() {
                bail!("`rustup target add {WASM_TARGET}` failed ({status})");
            }
            Ok(())
        }
        // No rustup: the toolchain may still have the target (e.g. a distro rustc).
        _ => Ok(()),
    }
}

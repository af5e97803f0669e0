//! The external tools that build Python and JavaScript plugins, found where
//! `scripts/plugin-tools.sh` installs them (or on PATH), and the build stamps that let an
//! unchanged plugin skip its (slow) rebuild.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::BuiltPlugin;
use crate::plugins::PluginKind;

/// `name`, from the first of `installed` that exists, else from PATH.
pub(super) fn find(name: &str, installed: &[PathBuf]) -> anyhow::Result<PathBuf> {
    if let Some(found) = installed.iter().find(|p| p.is_file()) {
        return Ok(found.clone());
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()));
    on_path.with_context(|| format!("{name} is not installed: run `bash scripts/plugin-tools.sh` (it installs {name} for this checkout)"))
}

/// Run `cmd`, failing with its output when it fails.
pub(super) fn run(mut cmd: Command, what: &str) -> anyhow::Result<String> {
    cmd.env("RUST_BACKTRACE", "0");
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!("{what} failed ({}):\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// sha256 over named inputs (file names and contents, tool versions), in order.
pub(super) fn inputs_digest(parts: &[(String, Vec<u8>)]) -> String {
    let mut h = Sha256::new();
    for (name, bytes) in parts {
        h.update((name.len() as u64).to_le_bytes());
        h.update(name.as_bytes());
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    }
    hex::encode(h.finalize())
}

/// The files directly in `dir` whose names end in `suffix`, sorted, as digest inputs.
pub(super) fn sources(dir: &Path, suffix: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.to_string_lossy().ends_with(suffix))
        .collect();
    names.sort();
    names.iter().map(|p| Ok((p.file_name().unwrap_or_default().to_string_lossy().into_owned(), super::read(p)?))).collect()
}

/// Every `.wit` file of the contract, as digest inputs.
pub(super) fn wit_inputs(wit: &Path) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
    sources(wit, ".wit")
}

/// What a finished build recorded next to its component.
#[derive(Serialize, Deserialize)]
struct Stamp {
    inputs: String,
    kind: Option<PluginKind>,
    refused: Option<String>,
}

fn stamp_path(out: &Path) -> PathBuf {
    out.with_extension("build.json")
}

/// The earlier build of `out` from the same inputs, if there is one.
pub(super) fn up_to_date(name: &str, out: &Path, inputs: &str) -> Option<BuiltPlugin> {
    let stamp: Stamp = serde_json::from_str(&std::fs::read_to_string(stamp_path(out)).ok()?).ok()?;
    let size = std::fs::metadata(out).ok()?.len() as usize;
    (stamp.inputs == inputs).then(|| BuiltPlugin { name: name.to_string(), kind: stamp.kind, refused: stamp.refused, path: out.to_path_buf(), size_bytes: size })
}

/// Record that `built` was made from `inputs`.
pub(super) fn record(built: &BuiltPlugin, inputs: &str) -> anyhow::Result<()> {
    let stamp = Stamp { inputs: inputs.to_string(), kind: built.kind, refused: built.refused.clone() };
    let path = stamp_path(&built.path);
    crate::atomic_file::write(&path, serde_json::to_string(&stamp)?.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

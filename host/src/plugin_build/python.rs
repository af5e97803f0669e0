//! Python plugins: componentize-py bundles CPython, the plugin's modules and Recast's
//! Python SDK into a component for the kind's WIT world. `--stub-wasi` replaces every
//! WASI import with a stub, so the component, like a Rust one, imports nothing but
//! `recast:plugins`: no files, clock, randomness or network.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, bail};

use super::{BuiltPlugin, checked, tools};
use crate::plugins::PluginEngine;
use crate::plugins::PluginKind;

/// Whether `dir` is a Python plugin: a `pyproject.toml` with a `[tool.recast]` table.
pub(super) fn is_plugin(dir: &Path) -> bool {
    manifest(dir).is_ok_and(|doc| doc.get("tool").and_then(|t| t.get("recast")).is_some())
}

fn manifest(dir: &Path) -> anyhow::Result<toml::Table> {
    let path = dir.join("pyproject.toml");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    text.parse().with_context(|| format!("{} is not valid TOML", path.display()))
}

pub(super) fn build(engine: &PluginEngine, dir: &Path, out_dir: &Path) -> anyhow::Result<BuiltPlugin> {
    let doc = manifest(dir)?;
    let file = dir.join("pyproject.toml");
    let name = doc.get("project").and_then(|p| p.get("name")).and_then(|n| n.as_str()).with_context(|| format!("{}: [project] needs a `name`", file.display()))?.to_string();
    let recast = doc.get("tool").and_then(|t| t.get("recast")).with_context(|| format!("{}: no [tool.recast] table", file.display()))?;
    let kind = kind_of(recast.get("kind").and_then(|k| k.as_str()), &file)?;
    let module = recast.get("module").and_then(|m| m.as_str()).unwrap_or("app");
    let root = super::source_root();
    let (wit, sdk) = (root.join("wit"), root.join("sdk").join("python"));
    let tool = tools::find("componentize-py", &[root.join(".venv").join("bin").join("componentize-py")])?;

    let mut version = Command::new(&tool);
    version.arg("--version");
    let mut inputs = vec![("tool".to_string(), tools::run(version, "componentize-py --version")?.into_bytes()), ("world".into(), kind.world().into_bytes())];
    inputs.extend(tools::sources(dir, ".py")?);
    inputs.extend(tools::sources(&sdk, ".py")?);
    inputs.extend(tools::wit_inputs(&wit)?);
    let digest = tools::inputs_digest(&inputs);
    let out = out_dir.join(format!("{name}.wasm"));
    if let Some(done) = tools::up_to_date(&name, &out, &digest) {
        return Ok(done);
    }

    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let tmp = out_dir.join(format!(".{name}.wasm.tmp"));
    let mut cmd = Command::new(&tool);
    cmd.arg("-d").arg(&wit).args(["-w", &kind.world(), "componentize", "--stub-wasi"]).arg("-p").arg(dir).arg("-p").arg(&sdk).arg(module).arg("-o").arg(&tmp);
    eprintln!("building Python plugin `{name}` with componentize-py");
    tools::run(cmd, &format!("componentize-py for {}", dir.display()))?;
    let bytes = super::read(&tmp)?;
    std::fs::rename(&tmp, &out).with_context(|| format!("cannot write {}", out.display()))?;
    let built = checked(engine, name, out, &bytes)?;
    tools::record(&built, &digest)?;
    Ok(built)
}

/// The kind a manifest names.
pub(super) fn kind_of(kind: Option<&str>, file: &Path) -> anyhow::Result<PluginKind> {
    let Some(kind) = kind else { bail!("{}: the recast table needs `kind` (router, aux-schedule, init-scheme or sampler)", file.display()) };
    PluginKind::ALL.into_iter().find(|k| k.as_str() == kind).with_context(|| format!("{}: unknown kind {kind:?} (router, aux-schedule, init-scheme or sampler)", file.display()))
}

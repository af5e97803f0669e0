//! JavaScript plugins: componentize-js embeds the StarlingMonkey engine and the plugin's
//! module (with Recast's JavaScript SDK beside it) into a component for the kind's WIT
//! world. Every WASI feature it can drop is dropped (stdio, random, clocks, http), so
//! the component imports nothing but `recast:plugins`.

use std::path::Path;
use std::process::Command;

use anyhow::Context;

use super::python::kind_of;
use super::{BuiltPlugin, checked, tools};
use crate::plugins::PluginEngine;

/// Whether `dir` is a JavaScript plugin: a `package.json` with a `"recast"` key.
pub(super) fn is_plugin(dir: &Path) -> bool {
    manifest(dir).is_ok_and(|doc| doc.get("recast").is_some())
}

fn manifest(dir: &Path) -> anyhow::Result<serde_json::Value> {
    let path = dir.join("package.json");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))
}

pub(super) fn build(engine: &PluginEngine, dir: &Path, out_dir: &Path) -> anyhow::Result<BuiltPlugin> {
    let doc = manifest(dir)?;
    let file = dir.join("package.json");
    let name = doc["name"].as_str().with_context(|| format!("{}: needs a \"name\"", file.display()))?.to_string();
    let kind = kind_of(doc["recast"]["kind"].as_str(), &file)?;
    let main = doc["main"].as_str().unwrap_or("index.js");
    let root = super::source_root();
    let (wit, sdk) = (root.join("wit"), root.join("sdk").join("js"));
    let tool = tools::find("componentize-js", &[root.join("scripts").join("js-tools").join("node_modules").join(".bin").join("componentize-js")])?;

    let mut version = Command::new(&tool);
    version.arg("--version");
    let mut inputs = vec![("tool".to_string(), tools::run(version, "componentize-js --version")?.into_bytes()), ("world".into(), kind.world().into_bytes()), ("main".into(), main.as_bytes().to_vec())];
    let modules: Vec<(String, Vec<u8>)> = tools::sources(dir, ".js")?.into_iter().chain(tools::sources(&sdk, ".js")?).collect();
    inputs.extend(modules.iter().cloned());
    inputs.extend(tools::wit_inputs(&wit)?);
    let digest = tools::inputs_digest(&inputs);
    let out = out_dir.join(format!("{name}.wasm"));
    if let Some(done) = tools::up_to_date(&name, &out, &digest) {
        return Ok(done);
    }

    // The plugin's modules and the SDK side by side, so `import "./recast-sdk.js"` resolves.
    let stage = tempfile::tempdir().context("cannot create a staging folder")?;
    for (file_name, bytes) in &modules {
        std::fs::write(stage.path().join(file_name), bytes).with_context(|| format!("cannot stage {file_name}"))?;
    }
    std::fs::create_dir_all(out_dir).with_context(|| format!("cannot create {}", out_dir.display()))?;
    let tmp = out_dir.join(format!(".{name}.wasm.tmp"));
    let mut cmd = Command::new(&tool);
    cmd.arg(stage.path().join(main)).arg("-w").arg(&wit).args(["-n", &kind.world(), "-d", "stdio", "random", "clocks", "http", "fetch-event", "-o"]).arg(&tmp);
    eprintln!("building JavaScript plugin `{name}` with componentize-js");
    tools::run(cmd, &format!("componentize-js for {}", dir.display()))?;
    let bytes = super::read(&tmp)?;
    std::fs::rename(&tmp, &out).with_context(|| format!("cannot write {}", out.display()))?;
    let built = checked(engine, name, out, &bytes)?;
    tools::record(&built, &digest)?;
    Ok(built)
}

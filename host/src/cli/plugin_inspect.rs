//! `recast plugin inspect FILE [--json]`.

use std::path::Path;

use crate::plugins::{PluginEngine, PluginInstance, PluginLimits};

pub(super) fn run(file: &Path, json: bool) -> anyhow::Result<()> {
    let engine = PluginEngine::new()?;
    let component = engine.load_file(file)?;
    let meta = PluginInstance::read_meta(&engine, &component, PluginLimits::default())?;
    if json {
        let value = serde_json::json!({
            "kind": meta.kind,
            "name": meta.name,
            "version": meta.version,
            "description": meta.description,
            "wit_version": meta.wit_version,
            "wit_package": format!("recast:plugins@{}", meta.wit_version),
            "sha256": meta.digest.to_hex(),
            "size_bytes": component.size_bytes(),
            "exports": component.exports(),
            "imports": component.imports(),
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("kind:        {}", meta.kind);
    println!("name:        {}", meta.name);
    println!("version:     {}", meta.version);
    println!("description: {}", meta.description);
    println!("wit:         recast:plugins@{}", meta.wit_version);
    println!("sha256:      {}", meta.digest.to_hex());
    println!("size:        {} bytes", component.size_bytes());
    println!("exports:");
    for e in component.exports() {
        println!("  {}: {}", e.name, e.functions.join(", "));
    }
    println!("imports:");
    for i in component.imports() {
        println!("  {i}");
    }
    Ok(())
}

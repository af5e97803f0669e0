//! `recast plugin list [--json]`: the reference plugins this binary carries, with the
//! sha256 a lock file or bundle would pin for each.

use crate::plugin_build::embedded;

pub(super) fn run(json: bool) -> anyhow::Result<()> {
    let mut rows = Vec::new();
    for plugin in embedded::embedded() {
        rows.push((plugin, plugin.digest()?.to_hex()));
    }
    if json {
        let list: Vec<serde_json::Value> =
            rows.iter().map(|(p, sha)| serde_json::json!({ "name": p.name, "kind": p.kind.as_str(), "version": p.version, "sha256": sha, "description": p.description })).collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let width = rows.iter().map(|(p, _)| p.name.len()).max().unwrap_or(4).max(4);
    println!("{:<width$}  {:<12}  {:<8}  sha256", "name", "kind", "version");
    for (p, sha) in &rows {
        println!("{:<width$}  {:<12}  {:<8}  {sha}", p.name, p.kind.as_str(), p.version);
    }
    Ok(())
}

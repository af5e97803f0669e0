//! `recast plugin check FILE [--params TOML]`.

use std::path::Path;

use anyhow::Context;

use crate::plugins::conformance;
use crate::plugins::{PluginEngine, PluginLimits};

pub(super) fn run(file: &Path, params: Option<&str>, limits: PluginLimits) -> anyhow::Result<()> {
    let params = match params {
        Some(p) if Path::new(p).is_file() => std::fs::read_to_string(p).with_context(|| format!("cannot read params file {p}"))?,
        Some(p) => p.to_string(),
        None => String::new(),
    };
    let engine = PluginEngine::new()?;
    let component = engine.load_file(file)?;
    println!("checking {} plugin {} ({})", component.kind(), file.display(), component.digest());
    let result = conformance::check(&engine, &component, &params, limits, |c| {
        let fuel = c.fuel.map(|f| format!("  [fuel {f}]")).unwrap_or_default();
        println!("ok    {:<36} {}{fuel}", c.call, c.detail);
    });
    match result {
        Ok(meta) => {
            println!("all conformance calls passed: {} {} ({})", meta.name, meta.version, meta.kind);
            Ok(())
        }
        Err(e) => {
            println!("FAIL  {:<36} {} [{}]", e.call, e.cause, e.code());
            Err(e.into())
        }
    }
}

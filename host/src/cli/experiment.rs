//! `recast experiment EXPERIMENT.toml --out DIR [--smoke]`: run an experiment with
//! [`crate::experiment::run`], show it on the terminal and print each criterion's
//! verdict. `--data NAME=DIR` runs it on prepared text instead of a built-in domain.

use std::path::Path;

use anyhow::Context;

use super::console::Console;

pub(super) fn run(file: &Path, out: &Path, smoke: bool, data: &[String], sets: &[String]) -> anyhow::Result<()> {
    let mut spec = crate::experiment::read(file)?;
    for arg in sets {
        spec.set(arg).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    }
    for entry in data {
        let (name, dir) = entry.split_once('=').with_context(|| format!("--data {entry:?}: expected NAME=DIR"))?;
        let dir = std::path::absolute(dir).with_context(|| format!("--data {entry:?}"))?;
        if !dir.is_dir() {
            anyhow::bail!("--data {entry:?}: {} is not a folder (make one with `recast data prepare`)", dir.display());
        }
        spec.use_shards(name, &dir).map_err(|e| anyhow::anyhow!("{}: --data {entry:?}: {e}", file.display()))?;
        println!("domain {name}: prepared shards in {}", dir.display());
    }
    println!("claim: {}", spec.claim);
    let verdicts = crate::experiment::run(&spec, file, out, smoke, &mut Console::default())?;
    for v in &verdicts {
        println!("{}: {} ({})", v.outcome.as_str(), v.says, v.figures);
    }
    println!("results: {}", out.join("results.md").display());
    Ok(())
}

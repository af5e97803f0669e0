//! `recast recipe`: run a paper's recipe end to end — pretrain, upcycle, continue, in
//! stages — from one file. Each step writes `OUT/<step>/`; a later step names an earlier
//! one's product as `@<step>` (a training run's final model, an upcycle's output). A
//! rerun skips finished steps and resumes an interrupted training run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::Deserialize;

use super::run_plugins::load_run_plugins;
use super::train::{drive, watch};
use super::upcycle::{UpcycleArgs, run as run_upcycle};
use crate::plugins::PluginEngine;
use crate::train::checkpoint;
use crate::train::config::RunConfig;
use crate::train::trainer::Trainer;
use crate::upcycle::Format;

/// A recipe file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Recipe {
    /// What the recipe reproduces (shown when it starts).
    #[serde(default)]
    pub description: String,
    pub steps: Vec<Step>,
}

/// One step: a training run or an upcycling.
#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Step {
    pub name: String,
    /// A run config (as in `recast train`); `model.path` may be `@<step>`.
    train: Option<Box<RunConfig>>,
    upcycle: Option<UpcycleStep>,
}

#[derive(Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct UpcycleStep {
    /// Source checkpoints: paths or `@<step>`.
    sources: Vec<String>,
    scheme: String,
    #[serde(default)]
    params: toml::Table,
    #[serde(default = "recast_format")]
    format: Format,
    #[serde(default)]
    seed: u64,
}

fn recast_format() -> Format {
    Format::Recast
}

pub(super) fn run(file: &Path, out: &Path, max_steps: Option<u64>) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read the recipe {}", file.display()))?;
    let recipe: Recipe = toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {}", file.display(), e.to_string().trim_end()))?;
    if !recipe.description.is_empty() {
        println!("{}", recipe.description.trim());
    }
    run_steps(&recipe.steps, file, &|step: &Step, _: &str| out.join(&step.name), max_steps)?;
    Ok(())
}

/// Run `steps` (from the file `file`, against which relative paths resolve) in order,
/// each into the folder `dir_of(step, fingerprint)` gives, where the fingerprint is a
/// sha256 of the step's definition with its `@` references resolved, so that equal
/// steps may share a folder. Finished steps are skipped, interrupted training resumed.
/// Returns each step's folder.
pub(super) fn run_steps(steps: &[Step], file: &Path, dir_of: &dyn Fn(&Step, &str) -> PathBuf, max_steps: Option<u64>) -> anyhow::Result<BTreeMap<String, PathBuf>> {
    let absolute = std::path::absolute(file)?;
    let mut products: BTreeMap<String, PathBuf> = BTreeMap::new();
    let mut dirs: BTreeMap<String, PathBuf> = BTreeMap::new();
    let resolve = |r: &str, products: &BTreeMap<String, PathBuf>, step: &str| -> anyhow::Result<PathBuf> {
        match r.strip_prefix('@') {
            Some(name) => products.get(name).cloned().ok_or_else(|| anyhow::anyhow!("{}: step `{step}` uses @{name}, which no earlier step makes", file.display())),
            None => Ok(absolute.parent().unwrap_or(Path::new(".")).join(r)),
        }
    };
    for step in steps {
        let mut definition = toml::to_string(step).context("cannot record the step")?;
        for (name, product) in &products {
            definition = definition.replace(&format!("\"@{name}\""), &format!("{:?}", product.display().to_string()));
        }
        // Prepared data is part of the definition by content: a folder prepared again
        // gets a new run folder instead of the old results.
        for d in step.train.iter().flat_map(|c| &c.data.domains) {
            if let Some(dir) = &d.shards {
                let dir = absolute.parent().unwrap_or(Path::new(".")).join(dir);
                let digest = crate::data::shards::content_digest(&dir).with_context(|| format!("{}: step `{}`, domain {:?}", file.display(), step.name, d.name))?;
                definition.push_str(&format!("\n# data {:?} {digest}", d.name));
            }
        }
        // Absolute, because later steps read this step's product from a config whose
        // relative paths resolve against the recipe file's folder.
        let dir = std::path::absolute(dir_of(step, &crate::plugins::Digest::of(definition.as_bytes()).to_hex()[..12]))?;
        println!("== {}: {} ({})", step.name, if step.train.is_some() { "train" } else { "upcycle" }, dir.display());
        match (&step.train, &step.upcycle) {
            (Some(config), None) => {
                let mut config = (**config).clone();
                if let Some(path) = config.model.path.as_ref().and_then(|p| p.to_str()).filter(|p| p.starts_with('@')) {
                    config.model.path = Some(resolve(path, &products, &step.name)?);
                }
                let config = config.finish(&absolute).with_context(|| format!("recipe step `{}`", step.name))?;
                let final_dir = dir.join("final");
                if final_dir.join("config.json").exists() {
                    println!("already trained: {}", final_dir.display());
                } else {
                    train_step(config, &dir, max_steps).with_context(|| format!("recipe step `{}`", step.name))?;
                }
                let report = crate::report::write(&dir).with_context(|| format!("report of step `{}`", step.name))?;
                println!("report: {}", report.summary_md.display());
                products.insert(step.name.clone(), final_dir);
            }
            (None, Some(u)) => {
                if dir.join("config.json").exists() {
                    println!("already upcycled: {}", dir.display());
                } else {
                    let sources = u.sources.iter().map(|s| resolve(s, &products, &step.name)).collect::<anyhow::Result<Vec<_>>>()?;
                    let params = toml::to_string(&u.params)?;
                    run_upcycle(UpcycleArgs { sources, scheme: u.scheme.clone(), params: Some(params), out: dir.clone(), format: u.format, dtype: None, max_shard_bytes: 5_000_000_000, seed: u.seed })
                        .with_context(|| format!("recipe step `{}`", step.name))?;
                }
                products.insert(step.name.clone(), dir.clone());
            }
            _ => bail!("{}: step `{}` needs exactly one of [steps.train] and [steps.upcycle]", file.display(), step.name),
        }
        dirs.insert(step.name.clone(), dir);
    }
    Ok(dirs)
}

/// Start or resume one training run and drive it to its end (or `max_steps`).
fn train_step(config: RunConfig, dir: &Path, max_steps: Option<u64>) -> anyhow::Result<()> {
    let engine = std::sync::Arc::new(PluginEngine::new()?);
    let plugins = load_run_plugins(&engine, &config)?;
    let mut trainer = if checkpoint::list(dir)?.is_empty() { Trainer::start(config, dir, &plugins.set, engine.clone())? } else { Trainer::resume(config, dir, &plugins.set, engine.clone(), false)? };
    watch(&mut trainer, plugins.watched)?;
    drive(&mut trainer, max_steps)
}

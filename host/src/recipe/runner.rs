//! Running a recipe's steps in order, each into its own folder, skipping finished ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::{Recipe, Step};
use crate::run::upcycle::{CALIBRATION_TOKENS, UpcycleJob, UpcycleObserver, run_upcycle};
use crate::run::{Run, RunObserver, RunOptions};
use crate::train::config::RunConfig;

/// Events of a recipe, on top of those of its training runs and upcyclings; every
/// method does nothing by default.
pub trait RecipeObserver: RunObserver + UpcycleObserver {
    /// `step` begins, writing into `dir`.
    fn on_recipe_step(&mut self, step: &Step, dir: &Path) {
        let _ = (step, dir);
    }
    /// `step` was finished by an earlier run; `product` is what it made.
    fn on_recipe_step_done_before(&mut self, step: &Step, product: &Path) {
        let _ = (step, product);
    }
    /// A training step's report (`summary.md`) was written.
    fn on_report(&mut self, summary: &Path) {
        let _ = summary;
    }
}

/// Shows nothing.
impl RecipeObserver for () {}

impl Recipe {
    /// Run every step into `out/<step>/`, training runs stopped after `max_steps` steps
    /// (for smoke tests); returns each step's folder.
    pub fn run(&self, file: &Path, out: &Path, max_steps: Option<u64>, observer: &mut dyn RecipeObserver) -> anyhow::Result<BTreeMap<String, PathBuf>> {
        run_steps(&self.steps, file, &|step: &Step, _: &str| out.join(&step.name), max_steps, observer)
    }
}

/// Run `steps` (from the file `file`, against which relative paths resolve) in order,
/// each into the folder `dir_of(step, fingerprint)` gives, where the fingerprint is a
/// sha256 of the step's definition with its `@` references resolved, so that equal
/// steps may share a folder. Finished steps are skipped, interrupted training resumed.
/// Returns each step's folder.
pub fn run_steps(steps: &[Step], file: &Path, dir_of: &dyn Fn(&Step, &str) -> PathBuf, max_steps: Option<u64>, observer: &mut dyn RecipeObserver) -> anyhow::Result<BTreeMap<String, PathBuf>> {
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
        observer.on_recipe_step(step, &dir);
        match (&step.train, &step.upcycle) {
            (Some(config), None) => {
                let mut config = (**config).clone();
                if let Some(path) = config.model.path.as_ref().and_then(|p| p.to_str()).filter(|p| p.starts_with('@')) {
                    config.model.path = Some(resolve(path, &products, &step.name)?);
                }
                let config = config.finish(&absolute).with_context(|| format!("recipe step `{}`", step.name))?;
                let final_dir = dir.join("final");
                if final_dir.join("config.json").exists() {
                    observer.on_recipe_step_done_before(step, &final_dir);
                } else {
                    train_step(config, &dir, max_steps, observer).with_context(|| format!("recipe step `{}`", step.name))?;
                }
                let report = crate::report::write(&dir, crate::report::ChartOptions::default()).with_context(|| format!("report of step `{}`", step.name))?;
                observer.on_report(&report.summary_md);
                products.insert(step.name.clone(), final_dir);
            }
            (None, Some(u)) => {
                if dir.join("config.json").exists() {
                    observer.on_recipe_step_done_before(step, &dir);
                } else {
                    let sources = u.sources.iter().map(|s| resolve(s, &products, &step.name)).collect::<anyhow::Result<Vec<_>>>()?;
                    let params = toml::to_string(&u.params)?;
                    let folder = absolute.parent().unwrap_or(Path::new("."));
                    let calibration = u.calibration.iter().map(|c| if c.starts_with("builtin:") { c.clone() } else { folder.join(c).display().to_string() }).collect();
                    let calibration_tokens = u.calibration_tokens.unwrap_or(CALIBRATION_TOKENS);
                    let job = UpcycleJob {
                        sources,
                        scheme: u.scheme.clone(),
                        params: Some(params),
                        out: dir.clone(),
                        format: u.format,
                        dtype: None,
                        max_shard_bytes: 5_000_000_000,
                        seed: u.seed,
                        calibration,
                        calibration_tokens,
                    };
                    run_upcycle(&job, observer).with_context(|| format!("recipe step `{}`", step.name))?;
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
fn train_step(config: RunConfig, dir: &Path, max_steps: Option<u64>, observer: &mut dyn RecipeObserver) -> anyhow::Result<()> {
    Run::open(config, dir, &RunOptions::default())?.finish(max_steps, observer)?;
    Ok(())
}

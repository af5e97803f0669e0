//! Running an experiment: every arm for every seed (steps identical across arms run
//! once and are shared), then the results files and each criterion's verdict.
//! Rerunning skips finished steps and resumes interrupted ones.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::criteria::Verdict;
use super::metric::StepResults;
use super::results::RunResult;
use super::spec::ExperimentSpec;
use super::summary::write_results;
use crate::recipe::{RecipeObserver, Step, run_steps};

/// Events of an experiment, on top of those of its recipes' steps; every method does
/// nothing by default.
pub trait ExperimentObserver: RecipeObserver {
    /// Run `index` (from 1) of `total` begins: `arm` with `seed`.
    fn on_arm(&mut self, index: usize, total: usize, arm: &str, seed: u64) {
        let _ = (index, total, arm, seed);
    }
}

/// Shows nothing.
impl ExperimentObserver for () {}

/// Read and check the experiment at `file`.
pub fn read(file: &Path) -> anyhow::Result<ExperimentSpec> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read the experiment {}", file.display()))?;
    Ok(ExperimentSpec::parse(&text, file)?)
}

/// Run every arm of `spec` (read from `file`, against which relative paths resolve) for
/// every seed into `out`, then write `out/results.md`, `out/results.csv` and the plots;
/// the criteria's verdicts. `smoke` runs seconds-long settings that only prove the
/// pipeline.
pub fn run(spec: &ExperimentSpec, file: &Path, out: &Path, smoke: bool, observer: &mut dyn ExperimentObserver) -> anyhow::Result<Vec<Verdict>> {
    let runs_dir = out.join(if smoke { "smoke-runs" } else { "runs" });
    // The smoke version proves the pipeline, paired statistics included: two seeds do.
    let mut spec = spec.clone();
    if smoke {
        spec.seeds.truncate(2);
    }
    let spec = &spec;
    let total = spec.arms.len() * spec.seeds.len();
    let mut results: BTreeMap<(String, u64), StepResults> = BTreeMap::new();
    for (i, (arm, seed)) in spec.arms.iter().flat_map(|a| spec.seeds.iter().map(move |s| (a, *s))).enumerate() {
        observer.on_arm(i + 1, total, &arm.name, seed);
        let steps: Vec<Step> = spec
            .steps_for(arm, seed, smoke)
            .map_err(|e| anyhow::anyhow!("{}: arm {:?}: {e}", file.display(), arm.name))?
            .into_iter()
            .map(|v| v.try_into())
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}: arm {:?}", file.display(), arm.name))?;
        let dirs = run_steps(&steps, file, &|step: &Step, fingerprint: &str| runs_dir.join(format!("{}-{fingerprint}", step.name)), None, observer)
            .with_context(|| format!("arm {:?}, seed {seed}", arm.name))?;
        if !dirs.contains_key(&spec.evaluate) {
            anyhow::bail!("no step {:?} ran", spec.evaluate);
        }
        let mut steps = StepResults::new();
        for (name, dir) in &dirs {
            let metrics = dir.join("metrics.jsonl");
            if metrics.exists() {
                steps.insert(name.clone(), RunResult::read(dir).with_context(|| format!("cannot read {}", metrics.display()))?);
            }
        }
        results.insert((arm.name.clone(), seed), steps);
    }
    write_results(spec, &results, out, smoke)
}

/// Where an experiment's results go unless told otherwise: `runs/experiments/<file
/// stem>`, so reruns of one experiment find their earlier steps.
pub fn default_out(file: &Path) -> PathBuf {
    PathBuf::from("runs").join("experiments").join(file.file_stem().unwrap_or_default())
}

//! `recast experiment EXPERIMENT.toml --out DIR [--smoke]`: run every arm of an
//! experiment for every seed (steps identical across arms run once and are shared),
//! then write `DIR/results.md`, `DIR/results.csv` and `DIR/loss.png` and print each
//! criterion's verdict. Rerunning skips finished steps and resumes interrupted ones.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context;

use super::recipe::{Step, run_steps};
use crate::experiment::criteria::Verdict;
use crate::experiment::results::{RunResult, mean_std};
use crate::experiment::spec::ExperimentSpec;
use crate::report::charts::{Series, line_chart};

pub(super) fn run(file: &Path, out: &Path, smoke: bool) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read the experiment {}", file.display()))?;
    let spec = ExperimentSpec::parse(&text, file)?;
    println!("claim: {}", spec.claim);
    let runs_dir = out.join(if smoke { "smoke-runs" } else { "runs" });
    let total = spec.arms.len() * spec.seeds.len();
    let mut results: BTreeMap<(String, u64), RunResult> = BTreeMap::new();
    for (i, (arm, seed)) in spec.arms.iter().flat_map(|a| spec.seeds.iter().map(move |s| (a, *s))).enumerate() {
        println!("=== arm {} of {total}: {} (seed {seed})", i + 1, arm.name);
        let steps: Vec<Step> = spec
            .steps_for(arm, seed, smoke)
            .map_err(|e| anyhow::anyhow!("{}: arm {:?}: {e}", file.display(), arm.name))?
            .into_iter()
            .map(|v| v.try_into())
            .collect::<Result<_, _>>()
            .with_context(|| format!("{}: arm {:?}", file.display(), arm.name))?;
        let dirs = run_steps(&steps, file, &|step: &Step, fingerprint: &str| runs_dir.join(format!("{}-{fingerprint}", step.name)), None)
            .with_context(|| format!("arm {:?}, seed {seed}", arm.name))?;
        let dir = dirs.get(&spec.evaluate).with_context(|| format!("no step {:?} ran", spec.evaluate))?;
        let result = RunResult::read(dir).with_context(|| format!("cannot read {}", dir.join("metrics.jsonl").display()))?;
        results.insert((arm.name.clone(), seed), result);
    }
    let verdicts = write_results(&spec, &results, out, smoke)?;
    for v in &verdicts {
        println!("{}: {} ({})", if v.holds { "holds" } else { "does not hold" }, v.says, v.figures);
    }
    println!("results: {}", out.join("results.md").display());
    Ok(())
}

/// Write results.md, results.csv and loss.png; the criteria's verdicts.
fn write_results(spec: &ExperimentSpec, results: &BTreeMap<(String, u64), RunResult>, out: &Path, smoke: bool) -> anyhow::Result<Vec<Verdict>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let arms: Vec<String> = spec.arms.iter().map(|a| a.name.clone()).collect();
    let of = |arm: &str| -> Vec<&RunResult> { spec.seeds.iter().filter_map(|s| results.get(&(arm.to_string(), *s))).collect() };
    let domains: Vec<String> = results.values().next().map(|r| r.final_loss.keys().cloned().collect()).unwrap_or_default();

    let mut csv = format!("arm,seed,{},mean,tokens,seconds,drop_rate,max1_over_max2,maxvio\n", domains.join(","));
    for ((arm, seed), r) in results {
        let cells: Vec<String> = domains.iter().map(|d| r.final_loss.get(d).map(|v| format!("{v:.5}")).unwrap_or_default()).collect();
        let opt = |v: Option<f64>| v.map(|v| format!("{v:.5}")).unwrap_or_default();
        let _ = writeln!(csv, "{arm},{seed},{},{:.5},{},{:.1},{},{},{}", cells.join(","), r.mean_final(), r.tokens, r.seconds, opt(r.drop_rate), opt(r.max1_over_max2), opt(r.maxvio));
    }
    let csv_path = out.join("results.csv");
    crate::atomic_file::write(&csv_path, csv.as_bytes()).with_context(|| format!("cannot write {}", csv_path.display()))?;

    let mut verdicts = Vec::new();
    for c in &spec.criteria {
        let values: BTreeMap<String, f64> = arms.iter().map(|a| (a.clone(), mean_std(&of(a).iter().filter_map(|r| r.metric(&c.metric)).collect::<Vec<_>>()).0)).collect();
        verdicts.push(c.evaluate(&values, &arms));
    }

    let mut md = format!("# {}\n\n", spec.claim);
    if smoke {
        md.push_str("**Smoke run** (`--smoke`): seconds-long settings that only prove the pipeline; the numbers say nothing about the claim.\n\n");
    }
    if !spec.description.is_empty() {
        let _ = writeln!(md, "{}\n", spec.description.trim());
    }
    let _ = writeln!(md, "Seeds: {:?}. Held-out loss (nats per token) at the end of `{}`, mean ± standard deviation over seeds.\n", spec.seeds, spec.evaluate);
    let _ = writeln!(md, "| arm | mean | {} | tokens | time (s) | drop rate | Max1/Max2 | MaxVio |", domains.join(" | "));
    let _ = writeln!(md, "|---|---|{}---|---|---|---|---|", "---|".repeat(domains.len()));
    for arm in &arms {
        let runs = of(arm);
        let ms = |f: &dyn Fn(&RunResult) -> Option<f64>| -> String {
            let v: Vec<f64> = runs.iter().filter_map(|r| f(r)).collect();
            if v.is_empty() {
                return "–".into();
            }
            let (m, s) = mean_std(&v);
            if v.len() > 1 { format!("{m:.4} ± {s:.4}") } else { format!("{m:.4}") }
        };
        let per_domain: Vec<String> = domains.iter().map(|d| ms(&|r| r.final_loss.get(d).copied())).collect();
        let tokens = runs.first().map(|r| r.tokens).unwrap_or(0);
        let seconds = mean_std(&runs.iter().map(|r| r.seconds).collect::<Vec<_>>()).0;
        let _ = writeln!(
            md,
            "| {arm} | {} | {} | {tokens} | {seconds:.0} | {} | {} | {} |",
            ms(&|r| Some(r.mean_final())),
            per_domain.join(" | "),
            ms(&|r| r.drop_rate),
            ms(&|r| r.max1_over_max2),
            ms(&|r| r.maxvio)
        );
    }
    md.push_str("\n## Verdicts\n\n");
    for v in &verdicts {
        let _ = writeln!(md, "- **{}**: {} ({})", if v.holds { "holds" } else { "does not hold" }, v.says, v.figures);
    }
    md.push_str("\n![held-out loss over tokens](loss.png)\n");

    let series: Vec<Series> = arms
        .iter()
        .map(|arm| {
            let runs = of(arm);
            let points = runs.first().map(|first| first.curve.iter().enumerate().map(|(i, (t, _))| (*t, mean_std(&runs.iter().filter_map(|r| r.curve.get(i).map(|p| p.1)).collect::<Vec<_>>()).0)).collect()).unwrap_or_default();
            Series { name: arm.clone(), points, dots: false }
        })
        .collect();
    let png = out.join("loss.png");
    line_chart("held-out loss (mean over domains and seeds)", "tokens", &series, &[]).save_png(&png).with_context(|| format!("cannot write {}", png.display()))?;
    let md_path = out.join("results.md");
    crate::atomic_file::write(&md_path, md.as_bytes()).with_context(|| format!("cannot write {}", md_path.display()))?;
    Ok(verdicts)
}

/// Where `--out` defaults to: `runs/experiments/<file stem>`.
pub(super) fn default_out(file: &Path) -> PathBuf {
    PathBuf::from("runs").join("experiments").join(file.file_stem().unwrap_or_default())
}

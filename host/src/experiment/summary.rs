//! The files an experiment leaves: `results.md` (a table per arm, the gate table, the
//! verdicts), `results.csv` (every step of every arm and seed) and the plots.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;

use super::criteria::{Verdict, figure};
use super::metric::StepResults;
use super::results::{RoutingPoint, RunResult, mean_std};
use super::spec::ExperimentSpec;
use crate::report::charts::{LineChart, Mark, Panel, Series};

/// Write results.md, results.csv and the plots; the criteria's verdicts.
pub(super) fn write_results(spec: &ExperimentSpec, results: &BTreeMap<(String, u64), StepResults>, out: &Path, smoke: bool) -> anyhow::Result<Vec<Verdict>> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let arms: Vec<String> = spec.arms.iter().map(|a| a.name.clone()).collect();
    let of = |arm: &str| evaluated_runs(spec, results, arm);
    let evaluated: Vec<&RunResult> = results.values().filter_map(|r| r.get(&spec.evaluate)).collect();
    let domains: Vec<String> = evaluated.first().map(|r| r.final_loss.keys().cloned().collect()).unwrap_or_default();
    let routed = evaluated.iter().any(|r| !r.routing_curve.is_empty());

    write_csv(results, &spec.evaluate, &domains, &out.join("results.csv"))?;

    let by_arm: BTreeMap<String, Vec<&StepResults>> = arms.iter().map(|a| (a.clone(), seeds_of(spec, results, a))).collect();
    let verdicts: Vec<Verdict> = spec.criteria.iter().map(|c| c.evaluate(&by_arm, &arms, &spec.evaluate)).collect();

    let mut md = format!("# {}\n\n", spec.claim);
    if smoke {
        md.push_str("**Smoke run** (`--smoke`): seconds-long settings that only prove the pipeline; the numbers say nothing about the claim.\n\n");
    }
    if !spec.description.is_empty() {
        let _ = writeln!(md, "{}\n", spec.description.trim());
    }
    let _ = writeln!(md, "Seeds: {:?}. Held-out loss (nats per token) of `{}` before its first step and at its end, mean ± standard deviation over seeds.\n", spec.seeds, spec.evaluate);
    let _ = writeln!(md, "| arm | start | end | {} | tokens | time (s) | drop rate | Max1/Max2 | MaxVio |", domains.join(" | "));
    let _ = writeln!(md, "|---|---|---|{}---|---|---|---|---|", "---|".repeat(domains.len()));
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
            "| {arm} | {} | {} | {} | {tokens} | {seconds:.0} | {} | {} | {} |",
            ms(&|r| r.mean_initial()),
            ms(&|r| Some(r.mean_final())),
            per_domain.join(" | "),
            ms(&|r| r.drop_rate),
            ms(&|r| r.max1_over_max2),
            ms(&|r| r.maxvio)
        );
    }
    md.push_str(&gate_table(&arms, &of));
    md.push_str("\n## Verdicts\n\nPaired by seed: a criterion **holds** when its effect exceeds two standard errors of the per-seed differences, **does not hold** when the opposite effect does, and is **inconclusive** otherwise.\n\n| verdict | claim | read in | figures |\n|---|---|---|---|\n");
    for v in &verdicts {
        let _ = writeln!(md, "| **{}** | {} | {} | {} |", v.outcome.as_str(), v.says, v.window, v.figures);
    }
    md.push_str(&runs_table(results, out));
    md.push_str(&data_table(spec));
    md.push_str("\n![held-out loss over tokens](loss.png)\n");

    // One colour per arm; the line is the mean over seeds, the band mean ± one standard
    // deviation (with two or more seeds).
    let arm_series = |pick: &dyn Fn(&RunResult) -> Curve| -> Vec<Series> {
        arms.iter()
            .enumerate()
            .filter_map(|(colour, arm)| {
                let curves: Vec<Curve> = of(arm).iter().map(|r| pick(r)).collect();
                let (line, band) = seed_spread(&curves);
                (!line.is_empty()).then(|| Series { band: if curves.len() > 1 { band } else { Vec::new() }, ..Series::new(arm.clone(), line, Mark::Line, colour) })
            })
            .collect()
    };
    let save = |file: &str, title: &str, y_label: &str, panels: Vec<Panel>| -> anyhow::Result<()> {
        let chart = LineChart { title: title.into(), x_label: "training tokens".into(), y_label: y_label.into(), panels, log_y: false };
        chart.save(&out.join(file)).map(|_| ()).with_context(|| format!("cannot write the {file} chart"))
    };
    let seeds_note = if spec.seeds.len() > 1 { format!(" (mean over {} seeds, band ± 1 sd)", spec.seeds.len()) } else { String::new() };
    let mut panels: Vec<Panel> = domains
        .iter()
        .map(|d| Panel { title: d.clone(), series: arm_series(&|r| r.domain_curves.get(d).map(|c| c.iter().map(|(t, l)| (*t, Some(*l))).collect()).unwrap_or_default()), markers: Vec::new() })
        .collect();
    if domains.len() > 1 {
        panels.insert(0, Panel { title: "mean over domains".into(), series: arm_series(&|r| r.curve.iter().map(|(t, l)| (*t, Some(*l))).collect()), markers: Vec::new() });
    }
    save("loss", &format!("Held-out loss of {} per domain{seeds_note}", spec.evaluate), "loss (nats per token)", panels)?;
    if routed {
        let one = |pick: fn(&RoutingPoint) -> Option<f64>| vec![Panel { title: String::new(), series: arm_series(&|r| smooth(&r.routing_curve, pick)), markers: Vec::new() }];
        save("drop-rate", &format!("Dropped share of routed assignments, mean over MoE layers{seeds_note}"), "dropped / routed", one(|p| p.drop_rate))?;
        save("gate-sharpness", &format!("Gate sharpness Max1/Max2, mean over MoE layers{seeds_note}"), "Max1 / Max2", one(|p| p.max1_over_max2))?;
        save("expert-load", &format!("Expert load imbalance MaxVio = max load / mean load − 1{seeds_note}"), "MaxVio", one(|p| p.maxvio))?;
        md.push_str("\n![drop rate over tokens](drop-rate.png)\n\n![gate sharpness over tokens](gate-sharpness.png)\n\n![expert load imbalance over tokens](expert-load.png)\n");
    }
    let md_path = out.join("results.md");
    crate::atomic_file::write(&md_path, md.as_bytes()).with_context(|| format!("cannot write {}", md_path.display()))?;
    Ok(verdicts)
}

/// Where every arm's and seed's runs are, step by step (relative to the results).
fn runs_table(results: &BTreeMap<(String, u64), StepResults>, out: &Path) -> String {
    let mut md = String::from("\n## Runs\n\n| arm | seed | step | run folder |\n|---|---|---|---|\n");
    for ((arm, seed), steps) in results {
        for (step, r) in steps {
            let dir = r.run_dir.strip_prefix(out).unwrap_or(&r.run_dir);
            let _ = writeln!(md, "| {arm} | {seed} | {step} | `{}` |", dir.display());
        }
    }
    md
}

/// The data every domain of the experiment came from: a built-in domain, or a prepared
/// folder with its content digest (`--data` replaces built-ins with folders).
fn data_table(spec: &ExperimentSpec) -> String {
    let mut seen = BTreeMap::new();
    for step in &spec.steps {
        let domains = step.get("train").and_then(|t| t.get("data")).and_then(|d| d.get("domains")).and_then(|d| d.as_array());
        for domain in domains.into_iter().flatten() {
            let name = domain.get("name").and_then(|n| n.as_str()).unwrap_or("?").to_string();
            let source = match (domain.get("builtin").and_then(|b| b.as_str()), domain.get("shards").and_then(|s| s.as_str())) {
                (Some(builtin), _) => format!("built-in `{builtin}`"),
                (None, Some(dir)) => match crate::data::shards::content_digest(Path::new(dir)) {
                    Ok(digest) => format!("`{dir}` (sha256 {digest})"),
                    Err(e) => format!("`{dir}` (unreadable: {e})"),
                },
                (None, None) => "–".into(),
            };
            seen.entry(name).or_insert(source);
        }
    }
    let mut md = String::from("\n## Data\n\n| domain | source |\n|---|---|\n");
    for (name, source) in seen {
        let _ = writeln!(md, "| {name} | {source} |");
    }
    md
}

/// The results of every seed of `arm`.
fn seeds_of<'r>(spec: &ExperimentSpec, results: &'r BTreeMap<(String, u64), StepResults>, arm: &str) -> Vec<&'r StepResults> {
    spec.seeds.iter().filter_map(|s| results.get(&(arm.to_string(), *s))).collect()
}

/// The evaluated step's results for every seed of `arm`.
fn evaluated_runs<'r>(spec: &ExperimentSpec, results: &'r BTreeMap<(String, u64), StepResults>, arm: &str) -> Vec<&'r RunResult> {
    seeds_of(spec, results, arm).into_iter().filter_map(|r| r.get(&spec.evaluate)).collect()
}

/// `(tokens, value)` points of one arm's curve; `None` where a step lacks the value.
type Curve = Vec<(f64, Option<f64>)>;

/// One row per arm, seed and training step: every step's numbers, not only the
/// evaluated one's.
fn write_csv(results: &BTreeMap<(String, u64), StepResults>, evaluate: &str, domains: &[String], path: &Path) -> anyhow::Result<()> {
    let opt = |v: Option<f64>| v.map(|v| format!("{v:.5}")).unwrap_or_default();
    let mut csv = format!("arm,seed,step,evaluated,{},mean,initial_mean,tokens,seconds,drop_rate,max1_over_max2,maxvio,run_dir\n", domains.join(","));
    for ((arm, seed), steps) in results {
        for (step, r) in steps {
            let cells: Vec<String> = domains.iter().map(|d| opt(r.final_loss.get(d).copied())).collect();
            let _ = writeln!(
                csv,
                "{arm},{seed},{step},{},{},{:.5},{},{},{:.1},{},{},{},{}",
                step == evaluate,
                cells.join(","),
                r.mean_final(),
                opt(r.mean_initial()),
                r.tokens,
                r.seconds,
                opt(r.drop_rate),
                opt(r.max1_over_max2),
                opt(r.maxvio),
                r.run_dir.display()
            );
        }
    }
    crate::atomic_file::write(path, csv.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

/// The mean gate weight of every expert per domain at the end (mean over MoE layers
/// and seeds), when the evaluated step logged any.
fn gate_table<'r>(arms: &[String], of: &dyn Fn(&str) -> Vec<&'r RunResult>) -> String {
    let mut md = String::new();
    for arm in arms {
        let runs = of(arm);
        let Some(first) = runs.first().filter(|r| !r.gates.is_empty()) else {
            continue;
        };
        if md.is_empty() {
            md.push_str("\nMean gate weight per expert on each domain's held-out text at the end (mean over MoE layers and seeds):\n\n");
        }
        let experts = first.gates.values().next().and_then(|l| l.first()).map_or(0, Vec::len);
        let _ = writeln!(md, "| {arm} | {} |\n|---|{}", (0..experts).map(|e| format!("expert {e}")).collect::<Vec<_>>().join(" | "), "---|".repeat(experts));
        for domain in first.gates.keys() {
            let cells: Vec<String> = (0..experts)
                .map(|e| {
                    let values: Vec<f64> = runs.iter().filter_map(|r| r.gates.get(domain)).flat_map(|layers| layers.iter().filter_map(|l| l.get(e).copied())).collect();
                    figure(mean_std(&values).0)
                })
                .collect();
            let _ = writeln!(md, "| {domain} | {} |", cells.join(" | "));
        }
        md.push('\n');
    }
    md
}

/// Per-step routing values averaged in windows of a twentieth of the run, so the
/// plots show the trend rather than step-to-step noise.
fn smooth(curve: &[RoutingPoint], pick: fn(&RoutingPoint) -> Option<f64>) -> Curve {
    let window = curve.len().div_ceil(20).max(1);
    curve
        .chunks(window)
        .map(|chunk| {
            let values: Vec<f64> = chunk.iter().filter_map(pick).collect();
            let t = chunk.last().map_or(0.0, |p| p.tokens);
            (t, (!values.is_empty()).then(|| mean_std(&values).0))
        })
        .collect()
}

/// `(x, low, high)` points of a shaded band.
type Band = Vec<(f64, f64, f64)>;

/// The mean over seeds at each point of the first curve, and the band mean ± one
/// standard deviation: `(line, band)`.
fn seed_spread(curves: &[Curve]) -> (Vec<(f64, f64)>, Band) {
    let Some(first) = curves.first() else {
        return (Vec::new(), Vec::new());
    };
    let mut line = Vec::new();
    let mut band = Vec::new();
    for (i, (t, _)) in first.iter().enumerate() {
        let values: Vec<f64> = curves.iter().filter_map(|c| c.get(i).and_then(|p| p.1)).collect();
        if values.is_empty() {
            continue;
        }
        let (mean, sd) = mean_std(&values);
        line.push((*t, mean));
        band.push((*t, mean - sd, mean + sd));
    }
    (line, band)
}

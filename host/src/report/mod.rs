//! `recast report RUN_DIR`: plots of a run (loss per domain, expert load per layer over
//! time) as PNG and SVG and a short Markdown summary, from `metrics.jsonl`; and `recast
//! compare`, which overlays several runs per domain.

pub mod charts;
mod compare;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use charts::{ChartError, Heatmaps, LineChart, Mark, Panel, Series};
use serde_json::Value;

pub use compare::compare;

/// The files a report consists of.
pub struct Report {
    pub loss_png: PathBuf,
    pub expert_load_png: Option<PathBuf>,
    pub summary_md: PathBuf,
    /// Every file written (each chart as PNG and SVG, and the summary).
    pub files: Vec<PathBuf>,
}

/// How charts are drawn.
#[derive(Clone, Copy, Debug, Default)]
pub struct ChartOptions {
    /// A logarithmic loss axis.
    pub log_y: bool,
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: no training steps recorded yet")]
    Empty { path: PathBuf },
    #[error(transparent)]
    Chart(#[from] ChartError),
}

/// A centred moving average over `2 × half + 1` points (fewer at the ends), to see the
/// trend through per-batch noise without the lag of an exponential average.
fn smooth(points: &[(f64, f64)], half: usize) -> Vec<(f64, f64)> {
    (0..points.len())
        .map(|i| {
            let window = &points[i.saturating_sub(half)..(i + half + 1).min(points.len())];
            let finite: Vec<f64> = window.iter().map(|p| p.1).filter(|y| y.is_finite()).collect();
            (points[i].0, if finite.is_empty() { f64::NAN } else { finite.iter().sum::<f64>() / finite.len() as f64 })
        })
        .collect()
}

/// The half-width of the moving average of a training-loss line of `n` steps: a
/// fiftieth of the run each side.
fn smoothing(n: usize) -> usize {
    n / 50
}

/// How a smoothed training line is named.
fn train_label(name: &str, half: usize) -> String {
    if half == 0 { format!("{name} train") } else { format!("{name} train (mean of {} steps)", 2 * half + 1) }
}

/// One run's metrics, as the charts need them.
struct RunMetrics {
    records: Vec<Value>,
    /// Per domain, `(step, training loss)` of every step.
    train: BTreeMap<String, Vec<(f64, f64)>>,
    /// Per domain, `(step, validation loss)` of every evaluation.
    valid: BTreeMap<String, Vec<(f64, f64)>>,
}

impl RunMetrics {
    fn read(run_dir: &Path) -> Result<Self, ReportError> {
        let metrics_path = run_dir.join("metrics.jsonl");
        let records = crate::train::metrics::read_all(&metrics_path).map_err(|source| ReportError::Io { path: metrics_path.clone(), source })?;
        if !records.iter().any(|r| r.get("loss").is_some()) {
            return Err(ReportError::Empty { path: metrics_path });
        }
        let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
        let mut train: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        let mut valid: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
        for r in &records {
            for (key, into) in [("domain_loss", &mut train), ("eval", &mut valid)] {
                if let Some(domains) = r.get(key).and_then(Value::as_object) {
                    for (d, l) in domains {
                        into.entry(d.clone()).or_default().push((num(r, "step"), l.as_f64().unwrap_or(f64::NAN)));
                    }
                }
            }
        }
        Ok(Self { records, train, valid })
    }

    fn steps(&self) -> Vec<&Value> {
        self.records.iter().filter(|r| r.get("loss").is_some()).collect()
    }

    fn evals(&self) -> Vec<&Value> {
        self.records.iter().filter(|r| r.get("eval").is_some()).collect()
    }

    /// Every domain, train or validation, in name order.
    fn domains(&self) -> Vec<String> {
        let mut all: Vec<String> = self.train.keys().chain(self.valid.keys()).cloned().collect();
        all.sort();
        all.dedup();
        all
    }
}

/// Write `RUN_DIR/report/`: `loss` and `expert_load` charts (PNG and SVG) and
/// `summary.md`.
pub fn write(run_dir: &Path, options: ChartOptions) -> Result<Report, ReportError> {
    let metrics = RunMetrics::read(run_dir)?;
    let (steps, evals) = (metrics.steps(), metrics.evals());
    let out = run_dir.join("report");
    std::fs::create_dir_all(&out).map_err(|source| ReportError::Io { path: out.clone(), source })?;
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let mut files = Vec::new();

    // Loss curves: one colour per domain, its smoothed training loss as a line and its
    // validation loss as dots.
    let mut series = Vec::new();
    for (colour, domain) in metrics.domains().iter().enumerate() {
        if let Some(points) = metrics.train.get(domain) {
            let half = smoothing(points.len());
            series.push(Series::new(train_label(domain, half), smooth(points, half), Mark::Line, colour));
        }
        if let Some(points) = metrics.valid.get(domain) {
            series.push(Series::new(format!("{domain} validation"), points.clone(), Mark::Dots, colour));
        }
    }
    let stages = stage_starts(run_dir);
    let markers: Vec<(f64, String)> = stages.iter().map(|(step, name)| (*step as f64, name.clone())).collect();
    let chart = LineChart {
        title: format!("Loss per domain: {}", run_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()),
        x_label: "step".into(),
        y_label: "loss (nats per token)".into(),
        panels: vec![Panel { title: String::new(), series, markers }],
        log_y: options.log_y,
    };
    let [loss_png, loss_svg] = chart.save(&out.join("loss"))?;
    files.extend([loss_png.clone(), loss_svg]);

    // Expert load per layer over time, as each expert's share relative to an even share.
    let loads = load_shares(&steps, |r| r.get("layers"));
    let first = num(steps[0], "step");
    let last = num(steps[steps.len() - 1], "step");
    let expert_load_png = if loads.is_empty() {
        None
    } else {
        let heatmaps = Heatmaps {
            title: "Expert load share per layer over steps".into(),
            x_label: "step".into(),
            scale: "colour: the expert's share of routed tokens ÷ an even share, white 0 to dark blue 2 or more".into(),
            groups: loads.into_iter().map(|(l, g)| (format!("layer {l}"), g)).collect(),
            x_range: (first, last),
        };
        let [png, svg] = heatmaps.save(&out.join("expert_load"))?;
        files.extend([png.clone(), svg]);
        Some(png)
    };

    // Live against shadow routers' loads, layer by layer, when the run had shadows.
    let shadows: std::collections::BTreeSet<String> = steps.iter().filter_map(|r| r.get("shadow_routers")?.as_object()).flat_map(|m| m.keys().cloned()).collect();
    if !shadows.is_empty() {
        let live = load_shares(&steps, |r| r.get("layers"));
        let per_shadow: Vec<(String, LoadShares)> = shadows.iter().map(|role| (role.clone(), load_shares(&steps, |r| r.get("shadow_routers")?.get(role)?.get("layers")))).collect();
        let mut groups = Vec::new();
        for (l, grid) in live {
            groups.push((format!("layer {l} live"), grid));
            for (role, grids) in &per_shadow {
                if let Some(grid) = grids.get(&l) {
                    groups.push((format!("layer {l} {role}"), grid.clone()));
                }
            }
        }
        let heatmaps = Heatmaps {
            title: "Expert load share: live router against shadow routers".into(),
            x_label: "step".into(),
            scale: "colour: the expert's share of routed tokens ÷ an even share, white 0 to dark blue 2 or more".into(),
            groups,
            x_range: (first, last),
        };
        let [png, svg] = heatmaps.save(&out.join("shadow_load"))?;
        files.extend([png, svg]);
    }

    let summary_md = out.join("summary.md");
    let text = summary(run_dir, &steps, &evals, &stages, expert_load_png.is_some());
    crate::atomic_file::write(&summary_md, text.as_bytes()).map_err(|source| ReportError::Io { path: summary_md.clone(), source })?;
    files.push(summary_md.clone());
    Ok(Report { loss_png, expert_load_png, summary_md, files })
}

/// Per layer, per expert, the load shares over the steps.
type LoadShares = BTreeMap<u64, Vec<Vec<f64>>>;

/// Per layer, per expert, its load share over the steps (÷ an even share, halved so
/// that 2× even is the darkest colour), from the per-layer records `layers_of` finds in
/// each step record.
fn load_shares<'a>(steps: &[&'a Value], layers_of: impl Fn(&'a Value) -> Option<&'a Value>) -> LoadShares {
    let mut loads = LoadShares::new();
    for r in steps {
        for layer in layers_of(r).and_then(Value::as_array).into_iter().flatten() {
            let l = layer.get("layer").and_then(Value::as_u64).unwrap_or(0);
            let load: Vec<f64> = layer.get("expert_load").and_then(Value::as_array).map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
            let total: f64 = load.iter().sum();
            let experts = load.len().max(1) as f64;
            let grid = loads.entry(l).or_insert_with(|| vec![Vec::new(); load.len()]);
            for (e, c) in load.iter().enumerate() {
                if let Some(row) = grid.get_mut(e) {
                    row.push(if total > 0.0 { c / total * experts / 2.0 } else { 0.0 });
                }
            }
        }
    }
    loads
}

/// `(step, name)` of every stage start in `RUN_DIR/journal.jsonl`.
fn stage_starts(run_dir: &Path) -> Vec<(u64, String)> {
    let records = crate::train::metrics::read_all(&run_dir.join("journal.jsonl")).unwrap_or_default();
    records
        .iter()
        .filter(|r| r.get("event").and_then(Value::as_str) == Some("stage"))
        .map(|r| (r.get("step").and_then(Value::as_u64).unwrap_or(0), r.get("name").and_then(Value::as_str).unwrap_or("").to_string()))
        .collect()
}

fn summary(run_dir: &Path, steps: &[&Value], evals: &[&Value], stages: &[(u64, String)], has_load: bool) -> String {
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    let last = steps[steps.len() - 1];
    let mean = |k: &str| steps.iter().map(|r| num(r, k)).sum::<f64>() / steps.len() as f64;
    let step_ms = mean("step_ms");
    let plugin_ms = mean("plugin_ms");
    let mut s = String::new();
    let _ = writeln!(s, "# Run report: {}\n", run_dir.display());
    let _ = writeln!(s, "- steps recorded: {} (last step {})", steps.len(), num(last, "step"));
    let _ = writeln!(s, "- final training loss: {:.4}", num(last, "loss"));
    let _ = writeln!(s, "- mean step time: {step_ms:.1} ms, {:.0} tokens/s", mean("tokens_per_s"));
    let _ = writeln!(s, "- plugin time: {plugin_ms:.3} ms per step ({:.3} % of step time)\n", 100.0 * plugin_ms / step_ms.max(1e-9));
    if !stages.is_empty() {
        let _ = writeln!(s, "| stage | starts at step |\n|---|---|");
        for (step, name) in stages {
            let _ = writeln!(s, "| {name} | {step} |");
        }
        s.push('\n');
    }
    if let (Some(first), Some(final_eval)) = (evals.first(), evals.last()) {
        let _ = writeln!(s, "| domain | valid loss at step {} | valid loss at step {} | perplexity |", num(first, "step"), num(final_eval, "step"));
        let _ = writeln!(s, "|---|---|---|---|");
        if let (Some(a), Some(b)) = (first["eval"].as_object(), final_eval["eval"].as_object()) {
            for (d, l) in b {
                let l = l.as_f64().unwrap_or(f64::NAN);
                let _ = writeln!(s, "| {d} | {:.4} | {l:.4} | {:.3} |", a.get(d).and_then(Value::as_f64).unwrap_or(f64::NAN), l.exp());
            }
        }
        s.push('\n');
    }
    if let Some(layers) = last.get("layers").and_then(Value::as_array).filter(|l| !l.is_empty()) {
        let _ = writeln!(s, "| layer | expert load (last step) | max load / mean − 1 | dropped | gate entropy |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for l in layers {
            let load: Vec<f64> = l["expert_load"].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default();
            let mean = load.iter().sum::<f64>() / load.len().max(1) as f64;
            let max = load.iter().cloned().fold(0.0, f64::max);
            let _ = writeln!(s, "| {} | {:?} | {:.3} | {} | {:.3} |", l["layer"], load.iter().map(|x| *x as u64).collect::<Vec<_>>(), max / mean.max(1e-9) - 1.0, l["dropped"], num(l, "gate_entropy"));
        }
        s.push('\n');
    }
    let _ = writeln!(s, "![loss](loss.png) ([SVG](loss.svg))");
    if has_load {
        let _ = writeln!(s, "\n![expert load](expert_load.png) ([SVG](expert_load.svg))");
    }
    s
}

//! `recast report RUN_DIR`: PNG plots of a run (loss per domain, expert load per layer
//! over time) and a short Markdown summary, from `metrics.jsonl`.

pub mod canvas;
pub mod charts;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use charts::{Series, heatmaps, line_chart};
use serde_json::Value;

/// The files a report consists of.
pub struct Report {
    pub loss_png: PathBuf,
    pub expert_load_png: Option<PathBuf>,
    pub summary_md: PathBuf,
}

/// Why a report could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: no training steps recorded yet")]
    Empty { path: PathBuf },
}

/// Exponential moving average, to see a trend through per-batch noise.
fn smooth(points: &[(f64, f64)], alpha: f64) -> Vec<(f64, f64)> {
    let mut acc: Option<f64> = None;
    points
        .iter()
        .map(|&(x, y)| {
            let v = acc.map_or(y, |a| a + alpha * (y - a));
            acc = Some(v);
            (x, v)
        })
        .collect()
}

/// Write `RUN_DIR/report/{loss.png, expert_load.png, summary.md}`.
pub fn write(run_dir: &Path) -> Result<Report, ReportError> {
    let metrics_path = run_dir.join("metrics.jsonl");
    let records = crate::train::metrics::read_all(&metrics_path).map_err(|source| ReportError::Io { path: metrics_path.clone(), source })?;
    let steps: Vec<&Value> = records.iter().filter(|r| r.get("loss").is_some()).collect();
    let evals: Vec<&Value> = records.iter().filter(|r| r.get("eval").is_some()).collect();
    if steps.is_empty() {
        return Err(ReportError::Empty { path: metrics_path });
    }
    let out = run_dir.join("report");
    std::fs::create_dir_all(&out).map_err(|source| ReportError::Io { path: out.clone(), source })?;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io { path, source }
    };
    let num = |v: &Value, k: &str| v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);

    // Loss curves: smoothed training loss per domain, validation loss as markers.
    let mut train: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in &steps {
        if let Some(domains) = r.get("domain_loss").and_then(Value::as_object) {
            for (d, l) in domains {
                train.entry(d.clone()).or_default().push((num(r, "step"), l.as_f64().unwrap_or(f64::NAN)));
            }
        }
    }
    let mut valid: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for r in &evals {
        if let Some(domains) = r.get("eval").and_then(Value::as_object) {
            for (d, l) in domains {
                valid.entry(d.clone()).or_default().push((num(r, "step"), l.as_f64().unwrap_or(f64::NAN)));
            }
        }
    }
    let mut series: Vec<Series> = train.iter().map(|(d, p)| Series { name: format!("{d} train"), points: smooth(p, 0.1), dots: false }).collect();
    series.extend(valid.iter().map(|(d, p)| Series { name: format!("{d} valid"), points: p.clone(), dots: true }));
    let stages = stage_starts(run_dir);
    let markers: Vec<(f64, String)> = stages.iter().map(|(step, name)| (*step as f64, name.clone())).collect();
    let loss_png = out.join("loss.png");
    line_chart("Loss per domain (train: EMA 0.1; valid: dots)", "step", &series, &markers).save_png(&loss_png).map_err(io(&loss_png))?;

    // Expert load per layer over time, as each expert's share relative to an even share.
    let mut loads: BTreeMap<u64, Vec<Vec<f64>>> = BTreeMap::new();
    for r in &steps {
        for layer in r.get("layers").and_then(Value::as_array).into_iter().flatten() {
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
    let first = num(steps[0], "step");
    let last = num(steps[steps.len() - 1], "step");
    let expert_load_png = if loads.is_empty() {
        None
    } else {
        let groups: Vec<(String, Vec<Vec<f64>>)> = loads.into_iter().map(|(l, g)| (format!("layer {l}"), g)).collect();
        let path = out.join("expert_load.png");
        heatmaps("Expert load share per layer over steps", &groups, (first, last)).save_png(&path).map_err(io(&path))?;
        Some(path)
    };

    let summary_md = out.join("summary.md");
    let text = summary(run_dir, &steps, &evals, &stages, expert_load_png.is_some());
    crate::atomic_file::write(&summary_md, text.as_bytes()).map_err(io(&summary_md))?;
    Ok(Report { loss_png, expert_load_png, summary_md })
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
    let _ = writeln!(s, "![loss](loss.png)");
    if has_load {
        let _ = writeln!(s, "\n![expert load](expert_load.png)");
    }
    s
}

//! `recast compare RUN... --out DIR`: several runs overlaid, one panel per domain, one
//! colour per run (its smoothed training loss as a line, its validation loss as dots),
//! and a table of each run's last validation loss per domain, for runs made outside an
//! experiment.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use super::charts::{LineChart, Mark, Panel, Series};
use super::{ChartOptions, ReportError, RunMetrics, smooth, smoothing, train_label};

/// Write `out/loss.png`, `out/loss.svg` and `out/compare.md`; returns their paths.
pub fn compare(runs: &[PathBuf], out: &Path, options: ChartOptions) -> Result<Vec<PathBuf>, ReportError> {
    let metrics: Vec<RunMetrics> = runs.iter().map(|r| RunMetrics::read(r)).collect::<Result<_, _>>()?;
    let names = run_names(runs);
    let mut domains: Vec<String> = metrics.iter().flat_map(|m| m.domains()).collect();
    domains.sort();
    domains.dedup();
    std::fs::create_dir_all(out).map_err(|source| ReportError::Io { path: out.to_path_buf(), source })?;

    let panels = domains
        .iter()
        .map(|domain| {
            let mut series = Vec::new();
            for (colour, (m, name)) in metrics.iter().zip(&names).enumerate() {
                if let Some(points) = m.train.get(domain) {
                    let half = smoothing(points.len());
                    series.push(Series::new(train_label(name, half), smooth(points, half), Mark::Line, colour));
                }
                if let Some(points) = m.valid.get(domain) {
                    series.push(Series::new(format!("{name} validation"), points.clone(), Mark::Dots, colour));
                }
            }
            Panel { title: domain.clone(), series, markers: Vec::new() }
        })
        .collect();
    let chart = LineChart { title: format!("Loss per domain: {}", names.join(" vs ")), x_label: "step".into(), y_label: "loss (nats per token)".into(), panels, log_y: options.log_y };
    let [png, svg] = chart.save(&out.join("loss"))?;

    let mut md = String::from("# Runs compared\n\nThe last validation loss of each run per domain (nats per token), at its last evaluation.\n\n");
    let _ = writeln!(md, "| run | folder | last step | {} |", domains.join(" | "));
    let _ = writeln!(md, "|---|---|---|{}", "---|".repeat(domains.len()));
    for ((m, name), dir) in metrics.iter().zip(&names).zip(runs) {
        let last_step = m.steps().last().and_then(|r| r.get("step")).and_then(|s| s.as_u64()).unwrap_or(0);
        let cells: Vec<String> = domains.iter().map(|d| m.valid.get(d).and_then(|v| v.last()).map_or("–".into(), |(step, loss)| format!("{loss:.4} (step {step})"))).collect();
        let _ = writeln!(md, "| {name} | `{}` | {last_step} | {} |", dir.display(), cells.join(" | "));
    }
    md.push_str("\n![loss per domain](loss.png)\n");
    let md_path = out.join("compare.md");
    crate::atomic_file::write(&md_path, md.as_bytes()).map_err(|source| ReportError::Io { path: md_path.clone(), source })?;
    Ok(vec![png, svg, md_path])
}

/// Each run's folder name, or its whole path where two runs share a name.
fn run_names(runs: &[PathBuf]) -> Vec<String> {
    let short: Vec<String> = runs.iter().map(|r| r.file_name().map_or_else(|| r.display().to_string(), |n| n.to_string_lossy().into_owned())).collect();
    short.iter().zip(runs).map(|(name, path)| if short.iter().filter(|n| *n == name).count() > 1 { path.display().to_string() } else { name.clone() }).collect()
}

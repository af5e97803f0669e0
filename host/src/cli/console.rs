//! How the command line shows a run, a recipe and an experiment: a progress bar on a
//! terminal, else a line every tenth of the run, and one line per event worth keeping.

use std::io::IsTerminal;
use std::path::Path;

use indicatif::{ProgressBar, ProgressStyle};

use super::upcycle::UpcycleBar;
use crate::experiment::ExperimentObserver;
use crate::recipe::{RecipeObserver, Step};
use crate::run::upcycle::UpcycleObserver;
use crate::run::{Evaluation, Exported, RunObserver};
use crate::train::trainer::StepReport;
use crate::upcycle::UpcycleReport;

/// Prints a run's (recipe's, experiment's) events to the terminal.
#[derive(Default)]
pub(super) struct Console {
    bar: Option<ProgressBar>,
    report_every: u64,
    upcycle: UpcycleBar,
}

impl RunObserver for Console {
    fn on_start(&mut self, at: u64, total: u64) {
        self.bar = progress_bar(total, at);
        self.report_every = (total / 10).max(1);
    }

    fn on_step(&mut self, r: &StepReport, total: u64) {
        let tokens_per_s = r.tokens as f64 / r.elapsed.as_secs_f64().max(1e-9);
        match &self.bar {
            Some(bar) => {
                bar.set_position(r.step);
                bar.set_message(format!("loss {:.4}  {:.0} tok/s", r.loss, tokens_per_s));
            }
            None if r.step.is_multiple_of(self.report_every) => println!("step {}/{total}  loss {:.4}  lr {:.2e}  {:.0} tok/s", r.step, r.loss, r.lr, tokens_per_s),
            None => {}
        }
    }

    fn on_eval(&mut self, evaluation: &Evaluation) {
        let parts: Vec<String> = evaluation.losses.iter().map(|(d, l)| format!("{d} {l:.4} (ppl {:.2})", l.exp())).collect();
        let line = format!("step {}: validation loss {}", evaluation.step, parts.join(", "));
        match &self.bar {
            Some(bar) => bar.println(line),
            None => println!("{line}"),
        }
    }

    fn on_steps_done(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }

    fn on_stopped(&mut self, checkpoint: &Path) {
        println!("checkpoint: {}", checkpoint.display());
    }

    fn on_export(&mut self, exported: &Exported) {
        println!("final model: {} ({})", exported.dir.display(), exported.format);
    }
}

impl UpcycleObserver for Console {
    fn on_upcycle_start(&mut self, scheme: &str) {
        self.upcycle.on_upcycle_start(scheme);
    }

    fn on_upcycle_progress(&mut self, done: usize, total: usize) {
        self.upcycle.on_upcycle_progress(done, total);
    }

    fn on_upcycle_done(&mut self, report: &UpcycleReport) {
        self.upcycle.on_upcycle_done(report);
    }
}

impl RecipeObserver for Console {
    fn on_recipe_step(&mut self, step: &Step, dir: &Path) {
        println!("== {}: {} ({})", step.name, step.kind(), dir.display());
    }

    fn on_recipe_step_done_before(&mut self, step: &Step, product: &Path) {
        println!("already {}: {}", if step.train.is_some() { "trained" } else { "upcycled" }, product.display());
    }

    fn on_report(&mut self, summary: &Path) {
        println!("report: {}", summary.display());
    }
}

impl ExperimentObserver for Console {
    fn on_arm(&mut self, index: usize, total: usize, arm: &str, seed: u64) {
        println!("=== arm {index} of {total}: {arm} (seed {seed})");
    }
}

fn progress_bar(total: u64, at: u64) -> Option<ProgressBar> {
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = ProgressBar::new(total).with_position(at);
    let style = ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {msg}  eta {eta}").map(|s| s.progress_chars("=> "));
    if let Ok(style) = style {
        bar.set_style(style);
    }
    Some(bar)
}

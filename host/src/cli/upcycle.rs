//! `recast upcycle`: run an init-scheme plugin on dense (or MoE) checkpoints with
//! [`crate::run::upcycle`] and show a progress bar over the plan's ops.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

use crate::run::upcycle::{UpcycleJob, UpcycleObserver, run_upcycle};
use crate::upcycle::UpcycleReport;

pub(super) fn run(job: UpcycleJob) -> anyhow::Result<()> {
    run_upcycle(&job, &mut UpcycleBar::default())?;
    Ok(())
}

/// A progress bar over the plan's ops (on a terminal), then a summary of the output.
#[derive(Default)]
pub(super) struct UpcycleBar {
    bar: Option<ProgressBar>,
}

impl UpcycleObserver for UpcycleBar {
    fn on_upcycle_start(&mut self, scheme: &str) {
        self.bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(0);
            if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{bar:30}] op {pos}/{len}  eta {eta}") {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(format!("upcycling with {scheme}"));
            bar
        });
    }

    fn on_upcycle_progress(&mut self, done: usize, total: usize) {
        if let Some(bar) = &self.bar {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    }

    fn on_upcycle_done(&mut self, report: &UpcycleReport) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
        let moe = report.config.moe.as_ref().map_or("dense".to_string(), |m| format!("{} experts top-{}, {} MoE layers", m.num_experts, m.top_k, m.moe_layers.iter().filter(|x| **x).count()));
        println!("{} ({moe}): {} tensors, {:.1} MB in {} ops", report.config.architecture.hf_class(), report.tensors, report.bytes as f64 / 1e6, report.ops);
        println!("wrote {}", report.out.display());
    }
}

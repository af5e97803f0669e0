//! What a run tells whoever drives it: the library never prints, so the command line
//! (a progress bar), a notebook or a test each show a run's progress their own way.

use std::path::{Path, PathBuf};

use crate::train::trainer::StepReport;

/// Held-out loss per domain at one step.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    /// The optimizer steps done when the evaluation ran.
    pub step: u64,
    /// `(domain, mean loss in nats per token)`, in the config's domain order.
    pub losses: Vec<(String, f32)>,
}

/// Where the final model went and in which format, so a caller can load it with the
/// right reader.
#[derive(Clone, Debug, PartialEq)]
pub struct Exported {
    /// The folder written (`RUN_DIR/final`).
    pub dir: PathBuf,
    /// The Hugging Face class, or why the model is in Recast's own format instead.
    pub format: String,
}

/// Events of a training run, in order: `on_start`, then per step `on_step` (with
/// `on_eval` and `on_checkpoint` where they fall), `on_steps_done`, the final
/// `on_eval` when the schedule is finished, `on_stopped`, and `on_export` when the
/// final model is written. Every method does nothing by default, so an observer
/// implements only what it shows.
pub trait RunObserver {
    /// Training begins at step `at` of `total` (the config's `train.steps`).
    fn on_start(&mut self, at: u64, total: u64) {
        let _ = (at, total);
    }
    /// A step finished; `total` is the config's `train.steps`.
    fn on_step(&mut self, report: &StepReport, total: u64) {
        let _ = (report, total);
    }
    /// The held-out loss was measured.
    fn on_eval(&mut self, evaluation: &Evaluation) {
        let _ = evaluation;
    }
    /// A checkpoint was written.
    fn on_checkpoint(&mut self, dir: &Path) {
        let _ = dir;
    }
    /// No more steps will run in this call (the final evaluation may follow).
    fn on_steps_done(&mut self) {}
    /// The run stopped; `checkpoint` holds everything it did.
    fn on_stopped(&mut self, checkpoint: &Path) {
        let _ = checkpoint;
    }
    /// The final model was written.
    fn on_export(&mut self, exported: &Exported) {
        let _ = exported;
    }
}

/// Shows nothing: for callers that only want the results.
impl RunObserver for () {}

//! Train the tiny MoE of `examples/tiny-moe.toml` from Rust, through the same
//! [`recast::run::Run`] the `recast train` command uses: the config's reference
//! plugins are built from source, a few steps run on the built-in data, and the last
//! step's loss is printed.
//!
//! ```sh
//! cargo run --release --example train_tiny_moe -- [STEPS] [RUN_DIR]
//! ```
//!
//! Without `RUN_DIR` the run goes to a fresh temporary folder, removed at the end; with
//! it, the run stays there (a second call with the same folder resumes it).

use std::path::{Path, PathBuf};

use recast::run::{Evaluation, Run, RunObserver, RunOptions};
use recast::train::trainer::StepReport;

/// Prints one line per step and per evaluation: an observer only implements the events
/// it wants to show.
struct Lines;

impl RunObserver for Lines {
    fn on_step(&mut self, report: &StepReport, total: u64) {
        println!("step {}/{total}  loss {:.4}", report.step, report.loss);
    }

    fn on_eval(&mut self, evaluation: &Evaluation) {
        let losses: Vec<String> = evaluation.losses.iter().map(|(domain, loss)| format!("{domain} {loss:.4}")).collect();
        println!("step {}: held-out loss {}", evaluation.step, losses.join(", "));
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let steps: u64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
    let given: Option<PathBuf> = args.next().map(PathBuf::from);
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/tiny-moe.toml");

    let temp = tempfile::tempdir()?;
    let run_dir = given.clone().unwrap_or_else(|| temp.path().join("tiny-moe"));
    let options = RunOptions::default();
    let mut run = if run_dir.join("config.toml").exists() { Run::resume(&run_dir, &options)? } else { Run::start(&config, &run_dir, &options)? };

    // Stop after `steps` more steps; the learning-rate schedule still spans the config's 300.
    let trained = run.train(Some(run.step() + steps), &mut Lines)?;
    match trained.loss {
        Some(loss) => println!("final loss after step {}: {loss:.4}", trained.step),
        None => println!("no steps ran: the run had already finished at step {}", trained.step),
    }
    if given.is_some() {
        println!("checkpoint: {}", trained.checkpoint.display());
    }
    Ok(())
}

//! `recast train` and `recast eval`: open a [`Run`] from the arguments and show it on
//! the terminal.

use std::path::Path;

use anyhow::bail;

use super::console::Console;
use crate::run::{Run, RunOptions};

pub(super) fn run(config: Option<&Path>, out: Option<&Path>, resume: Option<&Path>, max_steps: Option<u64>, options: RunOptions) -> anyhow::Result<()> {
    let mut run = match (config, out, resume) {
        (Some(config), Some(out), None) => Run::start(config, out, &options)?,
        (None, None, Some(run_dir)) => Run::resume(run_dir, &options)?,
        _ => bail!("give a config and --out to start a run, or --resume RUN_DIR to continue one"),
    };
    if run.trainer().writes() {
        run.finish(max_steps, &mut Console::default())?;
    } else {
        // The other ranks of a multi-process job train quietly: rank 0 shows the job.
        run.finish(max_steps, &mut ())?;
    }
    Ok(())
}

pub(super) fn eval(run_dir: &Path, tokens: Option<usize>) -> anyhow::Result<()> {
    let sets = tokens.map(|n| format!("train.eval_tokens={n}")).into_iter().collect();
    let mut run = Run::load(run_dir, &RunOptions { sets, ..RunOptions::default() })?;
    let evaluation = run.evaluate()?;
    let per_domain = run.trainer().config.train.eval_tokens();
    println!("step {} of {} ({per_domain} validation tokens per domain at most)", evaluation.step, run_dir.display());
    println!("{:<16} {:>10} {:>12}", "domain", "loss", "perplexity");
    for (d, l) in evaluation.losses {
        println!("{d:<16} {l:>10.4} {:>12.3}", l.exp());
    }
    Ok(())
}

//! `recast train` and `recast eval`: run the loop with a progress bar, evaluations and
//! checkpoints; resume a run; evaluate a run's newest checkpoint.

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use super::run_plugins::load_run_plugins;
use crate::model::checkpoint::{Format, WriteOptions, write as write_hf};
use crate::plugins::PluginEngine;
use crate::train::checkpoint;
use crate::train::config::RunConfig;
use crate::train::trainer::{PluginSet, Trainer};

/// Where a run's config lives inside the run folder.
const RUN_CONFIG: &str = "config.toml";

pub(super) fn run(config: Option<&Path>, out: Option<&Path>, resume: Option<&Path>, max_steps: Option<u64>, allow_plugin_change: bool) -> anyhow::Result<()> {
    let engine = std::sync::Arc::new(PluginEngine::new()?);
    let (mut trainer, watched) = match (config, out, resume) {
        (Some(config), Some(out), None) => {
            let text = std::fs::read_to_string(config).with_context(|| format!("cannot read the run config {}", config.display()))?;
            let absolute = std::path::absolute(config).with_context(|| format!("cannot resolve {}", config.display()))?;
            let parsed = RunConfig::parse(&text, &absolute)?;
            if !checkpoint::list(out)?.is_empty() {
                bail!("{} already holds a run with checkpoints; resume it with `recast train --resume {}` or choose another --out", out.display(), out.display());
            }
            let plugins = load_run_plugins(&engine, &parsed)?;
            // A start that fails leaves no half-made run folder behind to block the next
            // try with the same --out.
            let fresh = std::fs::read_dir(out).map_or(true, |mut entries| entries.next().is_none());
            match Trainer::start(parsed, out, &plugins.set, engine.clone()) {
                Ok(trainer) => (trainer, plugins.watched),
                Err(e) => {
                    if fresh {
                        let _ = std::fs::remove_dir_all(out);
                    }
                    return Err(anyhow::Error::new(e).context(format!("cannot start the run in {}", out.display())));
                }
            }
        }
        (None, None, Some(run_dir)) => {
            let path = run_dir.join(RUN_CONFIG);
            let text = std::fs::read_to_string(&path).with_context(|| format!("{} is not a run folder: cannot read {}", run_dir.display(), path.display()))?;
            let parsed = RunConfig::parse(&text, &path)?;
            let plugins = load_run_plugins(&engine, &parsed)?;
            (Trainer::resume(parsed, run_dir, &plugins.set, engine.clone(), allow_plugin_change).with_context(|| format!("cannot resume {}", run_dir.display()))?, plugins.watched)
        }
        _ => bail!("give a config and --out to start a run, or --resume RUN_DIR to continue one"),
    };
    watch(&mut trainer, watched)?;
    drive(&mut trainer, max_steps)
}

/// Start hot reload of the run's plugins, unless the config turned it off.
pub(super) fn watch(trainer: &mut Trainer, watched: Vec<crate::plugins::reload::WatchedPlugin>) -> anyhow::Result<()> {
    if trainer.config.hot_reload {
        trainer.watch(watched)?;
    }
    Ok(())
}

pub(super) fn drive(trainer: &mut Trainer, max_steps: Option<u64>) -> anyhow::Result<()> {
    let total = trainer.config.train.steps;
    let stop_at = max_steps.map_or(total, |m| m.min(total));
    let t = trainer.config.train.clone();
    let bar = progress_bar(total, trainer.step);
    let report_every = (total / 10).max(1);
    let mut last_checkpoint = None;
    if trainer.step == 0 && t.eval_every > 0 {
        print_eval(trainer, bar.as_ref())?;
    }
    while trainer.step < stop_at {
        let r = trainer.train_step()?;
        last_checkpoint = None;
        let tokens_per_s = r.tokens as f64 / r.elapsed.as_secs_f64().max(1e-9);
        match &bar {
            Some(bar) => {
                bar.set_position(r.step);
                bar.set_message(format!("loss {:.4}  {:.0} tok/s", r.loss, tokens_per_s));
            }
            None if r.step % report_every == 0 => println!("step {}/{total}  loss {:.4}  lr {:.2e}  {:.0} tok/s", r.step, r.loss, r.lr, tokens_per_s),
            None => {}
        }
        tracing::debug!(step = r.step, loss = r.loss, lr = r.lr, grad_norm = r.grad_norm, plugin_us = r.plugin_time.as_micros() as u64, "step");
        if t.eval_every > 0 && r.step % t.eval_every == 0 && r.step < total {
            print_eval(trainer, bar.as_ref())?;
        }
        if t.checkpoint_every > 0 && r.step % t.checkpoint_every == 0 {
            last_checkpoint = Some(trainer.save_checkpoint()?);
        }
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    if trainer.step >= total {
        print_eval(trainer, None)?;
    }
    let dir = match last_checkpoint {
        Some(d) => d,
        None => trainer.save_checkpoint()?,
    };
    println!("checkpoint: {}", dir.display());
    if trainer.step >= total {
        export(trainer)?;
    }
    Ok(())
}

fn print_eval(trainer: &mut Trainer, bar: Option<&ProgressBar>) -> anyhow::Result<()> {
    let losses = trainer.evaluate()?;
    let parts: Vec<String> = losses.iter().map(|(d, l)| format!("{d} {l:.4} (ppl {:.2})", l.exp())).collect();
    let line = format!("step {}: validation loss {}", trainer.step, parts.join(", "));
    match bar {
        Some(bar) => bar.println(line),
        None => println!("{line}"),
    }
    Ok(())
}

/// Write the trained weights to `RUN_DIR/final`: as a Hugging Face checkpoint where the
/// family can express the model, else in Recast's own format.
pub(super) fn export(trainer: &Trainer) -> anyhow::Result<std::path::PathBuf> {
    let dir = trainer.run_dir.join("final");
    let hf = write_hf(&dir, &trainer.model_config, trainer.params(), &WriteOptions::default());
    let format = match hf {
        Ok(()) => trainer.model_config.architecture.hf_class().to_string(),
        Err(e) => {
            write_hf(&dir, &trainer.model_config, trainer.params(), &WriteOptions { format: Format::Recast, ..WriteOptions::default() })?;
            format!("Recast format; not Hugging Face: {e}")
        }
    };
    println!("final model: {} ({format})", dir.display());
    Ok(dir)
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

/// Build or load the plugins a config names (checked against the lock file when the
/// config requires pinned digests).
pub(super) fn load_plugins(engine: &PluginEngine, config: &RunConfig) -> anyhow::Result<PluginSet> {
    Ok(load_run_plugins(engine, config)?.set)
}

pub(super) fn eval(run_dir: &Path) -> anyhow::Result<()> {
    let engine = std::sync::Arc::new(PluginEngine::new()?);
    let path = run_dir.join(RUN_CONFIG);
    let text = std::fs::read_to_string(&path).with_context(|| format!("{} is not a run folder: cannot read {}", run_dir.display(), path.display()))?;
    let parsed = RunConfig::parse(&text, &path)?;
    let plugins = load_plugins(&engine, &parsed)?;
    let mut trainer = Trainer::resume(parsed, run_dir, &plugins, engine.clone(), false).with_context(|| format!("cannot load {}", run_dir.display()))?;
    let losses = trainer.evaluate()?;
    println!("step {} of {}", trainer.step, run_dir.display());
    println!("{:<16} {:>10} {:>12}", "domain", "loss", "perplexity");
    for (d, l) in losses {
        println!("{d:<16} {l:>10.4} {:>12.3}", l.exp());
    }
    Ok(())
}

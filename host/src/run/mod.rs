//! A whole training run from Rust: load a run config, load the plugins it names, train,
//! evaluate and export — what `recast train` and `recast eval` do, without the binary,
//! so a program, a notebook kernel or a test can drive a run and read its results.
//!
//! ```no_run
//! use recast::run::{Run, RunOptions};
//!
//! // Start a fresh run in runs/tiny-moe (its plugins are built from source on first use).
//! let mut run = Run::start("examples/tiny-moe.toml", "runs/tiny-moe", &RunOptions::default())?;
//! // Twenty steps with periodic evaluations and checkpoints; `()` shows nothing.
//! let trained = run.train(Some(20), &mut ())?;
//! println!("step {}: loss {:?}, checkpoint {}", trained.step, trained.loss, trained.checkpoint.display());
//! for (domain, loss) in run.evaluate()?.losses {
//!     println!("{domain}: {loss:.4}");
//! }
//! // Later: continue where it stopped, to the end of the schedule, and write the model.
//! let mut run = Run::resume("runs/tiny-moe", &RunOptions::default())?;
//! run.finish(None, &mut ())?;
//! # Ok::<(), recast::run::RunError>(())
//! ```
//!
//! [`plugins`] turns a config's plugin references into components, [`plugin_source`]
//! finds reference plugins, and [`upcycle`] runs an init scheme named the way a config
//! names plugins.

mod error;
mod observer;
pub mod plugin_source;
pub mod plugins;
pub mod upcycle;

use std::path::{Path, PathBuf};
use std::sync::Arc;

pub use error::RunError;
pub use observer::{Evaluation, Exported, RunObserver};

use crate::model::checkpoint::{Format, WriteOptions, write as write_hf};
use crate::plugins::PluginEngine;
use crate::plugins::reload::WatchedPlugin;
use crate::train::checkpoint;
use crate::train::config::RunConfig;
use crate::train::trainer::Trainer;
use plugins::{RunPlugins, load_run_plugins};

/// Where a run's config lives inside the run folder.
const RUN_CONFIG: &str = "config.toml";

/// Choices for opening a run that its config does not make.
#[derive(Clone, Default)]
pub struct RunOptions {
    /// On resume, run plugins whose code differs from the checkpoint's, giving them the
    /// saved plugin state (journaled); without it such a resume is refused, because the
    /// new code may not understand the old state.
    pub allow_plugin_change: bool,
    /// A plugin engine to share with other runs in this process (components compile
    /// once per engine); `None` makes one for this run.
    pub engine: Option<Arc<PluginEngine>>,
    /// The `[distributed]` layout to train with instead of the config's: on resume, the
    /// checkpoint (whole on rank 0, whatever layout wrote it) is resharded to it, so a
    /// run continues on another number of processes or another split of the experts.
    pub layout: Option<crate::distributed::LayoutOverride>,
    /// `KEY.PATH=VALUE` overrides of the config (`--set`), applied in order to the
    /// config's TOML before it is checked; on resume they are recorded in the run's
    /// `config.toml`.
    pub sets: Vec<String>,
}

impl RunOptions {
    fn engine(&self) -> Result<Arc<PluginEngine>, RunError> {
        Ok(match &self.engine {
            Some(engine) => engine.clone(),
            None => Arc::new(PluginEngine::new()?),
        })
    }
}

/// What a call to [`Run::train`] did, so a caller can decide what comes next without
/// reading the run folder.
#[derive(Clone, Debug, PartialEq)]
pub struct Trained {
    /// The optimizer steps done in the whole run.
    pub step: u64,
    /// Whether the run reached the end of its schedule (`train.steps`).
    pub finished: bool,
    /// The checkpoint that holds the run as it stopped.
    pub checkpoint: PathBuf,
    /// The training loss of the last step this call ran (`None` if it ran none).
    pub loss: Option<f32>,
}

/// One training run, open on its run folder: a trainer with its model, optimizer,
/// data and plugins. Each step of a run's life is one method, so a caller can train in
/// pieces, evaluate between them and export when it chooses.
pub struct Run {
    trainer: Trainer,
    /// The plugins to hot-reload, until training first starts (evaluating a run does
    /// not watch its sources).
    watched: Option<Vec<WatchedPlugin>>,
}

impl Run {
    /// Start a fresh run of the config at `config` in the folder `out`, which must not
    /// already hold a run's checkpoints (resume that one instead). A start that fails
    /// leaves no half-made run folder behind to block the next try with the same `out`.
    pub fn start(config: impl AsRef<Path>, out: impl AsRef<Path>, options: &RunOptions) -> Result<Self, RunError> {
        let (config, out) = (config.as_ref(), out.as_ref());
        let engine = options.engine()?;
        let text = std::fs::read_to_string(config).map_err(|source| RunError::ReadConfig { path: config.to_path_buf(), source })?;
        let text = crate::train::config::overrides::apply(&text, &options.sets)?;
        let absolute = std::path::absolute(config).map_err(|source| RunError::Resolve { path: config.to_path_buf(), source })?;
        let mut parsed = RunConfig::parse(&text, &absolute)?;
        if let Some(layout) = &options.layout {
            layout.apply(&mut parsed.distributed);
        }
        if !checkpoint::list(out)?.is_empty() {
            return Err(RunError::AlreadyStarted { out: out.to_path_buf() });
        }
        let plugins = load_plugins(&engine, &parsed)?;
        let fresh = std::fs::read_dir(out).map_or(true, |mut entries| entries.next().is_none());
        match Trainer::start(parsed, out, &plugins.set, engine) {
            Ok(trainer) => Ok(Run { trainer, watched: Some(plugins.watched) }),
            Err(source) => {
                // Only the rank that writes the folder removes it (rank 0; the only one
                // without a launcher).
                if fresh && crate::distributed::launch::LaunchEnv::detect().rank == 0 {
                    let _ = std::fs::remove_dir_all(out);
                }
                Err(RunError::Start { out: out.to_path_buf(), source })
            }
        }
    }

    /// Continue the run in `run_dir` from its newest checkpoint, with the config the run
    /// folder holds (so a resumed run is the run that was started).
    pub fn resume(run_dir: impl AsRef<Path>, options: &RunOptions) -> Result<Self, RunError> {
        let run_dir = run_dir.as_ref();
        let engine = options.engine()?;
        let mut config = read_run_config(run_dir, &options.sets)?;
        if let Some(layout) = &options.layout {
            layout.apply(&mut config.distributed);
        }
        let plugins = load_plugins(&engine, &config)?;
        let text = (!options.sets.is_empty()).then(|| toml::to_string(&config));
        let trainer = Trainer::resume(config, run_dir, &plugins.set, engine, options.allow_plugin_change).map_err(|source| RunError::Resume { run_dir: run_dir.to_path_buf(), source })?;
        // The overrides hold from now on: later resumes read them from the run folder.
        if let Some(text) = text
            && trainer.writes()
        {
            let path = run_dir.join(RUN_CONFIG);
            let text = text.map_err(|e| RunError::Override(crate::train::config::overrides::OverrideError::Config(e.to_string())))?;
            crate::atomic_file::write(&path, text.as_bytes()).map_err(|source| RunError::ReadConfig { path, source })?;
        }
        Ok(Run { trainer, watched: Some(plugins.watched) })
    }

    /// Open the newest checkpoint of the run in `run_dir` to evaluate or export it, not
    /// to train: plugins must be the checkpoint's and their sources are not watched.
    pub fn load(run_dir: impl AsRef<Path>, options: &RunOptions) -> Result<Self, RunError> {
        let run_dir = run_dir.as_ref();
        let engine = options.engine()?;
        let config = read_run_config(run_dir, &options.sets)?;
        let plugins = load_plugins(&engine, &config)?;
        let trainer = Trainer::resume(config, run_dir, &plugins.set, engine, false).map_err(|source| RunError::Load { run_dir: run_dir.to_path_buf(), source })?;
        Ok(Run { trainer, watched: None })
    }

    /// Replay traced step `step` of the run in `run_dir` (`recast replay`): reopen the
    /// run as it was before that step without writing anything (from the newest
    /// checkpoint at or before it, the steps after that run again in memory), run the
    /// step's forward pass with the recorded routing, and report every token the live
    /// router would send elsewhere.
    pub fn replay(run_dir: impl AsRef<Path>, step: u64, options: &RunOptions) -> Result<crate::train::trainer::ReplayReport, RunError> {
        let run_dir = run_dir.as_ref();
        let path = crate::train::routing_trace::path(run_dir, step, None);
        if !path.is_file() {
            let traced = crate::train::routing_trace::steps(run_dir);
            let have = match traced.is_empty() {
                true => "the run has no routing trace; trace one with `[trace] routing = { every = N }` in its config".to_string(),
                false => format!("traced steps: {}", traced.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")),
            };
            return Err(RunError::Replay { run_dir: run_dir.to_path_buf(), reason: format!("no trace of step {step} ({}); {have}", path.display()) });
        }
        let trace = crate::train::routing_trace::read(&path).map_err(|e| RunError::Replay { run_dir: run_dir.to_path_buf(), reason: e.to_string() })?;
        let engine = options.engine()?;
        let config = read_run_config(run_dir, &options.sets)?;
        let plugins = load_plugins(&engine, &config)?;
        let mut trainer = Trainer::reopen_at(config, run_dir, step.saturating_sub(1), &plugins.set, engine).map_err(|source| RunError::Load { run_dir: run_dir.to_path_buf(), source })?;
        trainer.replay_step(&trace).map_err(|source| RunError::Load { run_dir: run_dir.to_path_buf(), source })
    }

    /// Start the run `config` describes in `dir`, or continue it from its newest
    /// checkpoint if `dir` already holds one: a config made in code (a recipe's step)
    /// reruns to where it left off.
    pub fn open(config: RunConfig, dir: impl AsRef<Path>, options: &RunOptions) -> Result<Self, RunError> {
        let dir = dir.as_ref();
        let engine = options.engine()?;
        let plugins = load_plugins(&engine, &config)?;
        let trainer =
            if checkpoint::list(dir)?.is_empty() { Trainer::start(config, dir, &plugins.set, engine)? } else { Trainer::resume(config, dir, &plugins.set, engine, options.allow_plugin_change)? };
        Ok(Run { trainer, watched: Some(plugins.watched) })
    }

    /// Train until `max_steps` steps are done (the schedule still spans the config's
    /// `train.steps`) or the schedule ends, evaluating and checkpointing as the config
    /// says; the final evaluation runs when the schedule ends. Always leaves a
    /// checkpoint of where it stopped, so the run can be resumed.
    pub fn train(&mut self, max_steps: Option<u64>, observer: &mut dyn RunObserver) -> Result<Trained, RunError> {
        if let Some(watched) = self.watched.take()
            && self.trainer.config.hot_reload
        {
            self.trainer.watch(watched)?;
        }
        let total = self.trainer.config.train.steps;
        let stop_at = max_steps.map_or(total, |m| m.min(total));
        let (eval_every, checkpoint_every) = (self.trainer.config.train.eval_every, self.trainer.config.train.checkpoint_every);
        observer.on_start(self.trainer.step, total);
        let mut last_checkpoint = None;
        let mut loss = None;
        if self.trainer.step == 0 && eval_every > 0 {
            observer.on_eval(&self.evaluate()?);
        }
        while self.trainer.step < stop_at {
            let r = self.trainer.train_step()?;
            last_checkpoint = None;
            loss = Some(r.loss);
            observer.on_step(&r, total);
            tracing::debug!(step = r.step, loss = r.loss, lr = r.lr, grad_norm = r.grad_norm, plugin_us = r.plugin_time.as_micros() as u64, "step");
            if eval_every > 0 && r.step % eval_every == 0 && r.step < total {
                observer.on_eval(&self.evaluate()?);
            }
            if checkpoint_every > 0 && r.step % checkpoint_every == 0 {
                last_checkpoint = Some(self.checkpoint(observer)?);
            }
        }
        observer.on_steps_done();
        let finished = self.trainer.step >= total;
        if finished {
            observer.on_eval(&self.evaluate()?);
        }
        let checkpoint = match last_checkpoint {
            Some(dir) => dir,
            None => self.checkpoint(observer)?,
        };
        observer.on_stopped(&checkpoint);
        Ok(Trained { step: self.trainer.step, finished, checkpoint, loss })
    }

    /// [`train`](Self::train), then [`export`](Self::export) the final model if the
    /// schedule ended: what `recast train` does.
    pub fn finish(&mut self, max_steps: Option<u64>, observer: &mut dyn RunObserver) -> Result<Trained, RunError> {
        let trained = self.train(max_steps, observer)?;
        if trained.finished {
            observer.on_export(&self.export()?);
        }
        Ok(trained)
    }

    /// The held-out loss per domain now.
    pub fn evaluate(&mut self) -> Result<Evaluation, RunError> {
        let losses = self.trainer.evaluate()?;
        Ok(Evaluation { step: self.trainer.step, losses })
    }

    /// Write a checkpoint of the run as it is now.
    fn checkpoint(&mut self, observer: &mut dyn RunObserver) -> Result<PathBuf, RunError> {
        let dir = self.trainer.save_checkpoint()?;
        observer.on_checkpoint(&dir);
        Ok(dir)
    }

    /// Write the trained weights to `RUN_DIR/final`: as a Hugging Face checkpoint where
    /// the family can express the model (so transformers loads it), else in Recast's
    /// own format.
    pub fn export(&self) -> Result<Exported, RunError> {
        let trainer = &self.trainer;
        let dir = trainer.run_dir.join("final");
        let Some(params) = trainer.export_weights()? else {
            return Ok(Exported { dir, format: "written by rank 0".into() });
        };
        let format = match write_hf(&dir, &trainer.model_config, &params, &WriteOptions::default()) {
            Ok(()) => trainer.model_config.architecture.hf_class().to_string(),
            Err(e) => {
                write_hf(&dir, &trainer.model_config, &params, &WriteOptions { format: Format::Recast, ..WriteOptions::default() })?;
                format!("Recast format; not Hugging Face: {e}")
            }
        };
        // The tokenizer and generation files: from the checkpoint the run started from,
        // else the run's tokenizer.json.
        let companions = match (&trainer.config.model.path, trainer.config.tokenizer.as_str()) {
            (Some(model), _) => crate::model::checkpoint::companions::copy_companions(model, &dir).map(|_| ()),
            (None, "byte") => Ok(()),
            (None, file) => std::fs::read(file).and_then(|bytes| crate::atomic_file::write(&dir.join("tokenizer.json"), &bytes)),
        };
        companions.map_err(|source| RunError::Companions { dir: dir.clone(), source })?;
        Ok(Exported { dir, format })
    }

    /// The optimizer steps done so far.
    pub fn step(&self) -> u64 {
        self.trainer.step
    }

    /// The run folder (checkpoints, `metrics.jsonl`, the final model).
    pub fn run_dir(&self) -> &Path {
        &self.trainer.run_dir
    }

    /// The trainer, for what this type does not wrap (single steps, parameters).
    pub fn trainer(&self) -> &Trainer {
        &self.trainer
    }

    /// The trainer, mutably, for single steps and other fine-grained control.
    pub fn trainer_mut(&mut self) -> &mut Trainer {
        &mut self.trainer
    }
}

/// The config a run folder holds.
fn read_run_config(run_dir: &Path, sets: &[String]) -> Result<RunConfig, RunError> {
    let path = run_dir.join(RUN_CONFIG);
    let text = std::fs::read_to_string(&path).map_err(|source| RunError::NotARunFolder { run_dir: run_dir.to_path_buf(), path: path.clone(), source })?;
    let text = crate::train::config::overrides::apply(&text, sets)?;
    Ok(RunConfig::parse(&text, &path)?)
}

fn load_plugins(engine: &PluginEngine, config: &RunConfig) -> Result<RunPlugins, RunError> {
    load_run_plugins(engine, config).map_err(RunError::Plugins)
}

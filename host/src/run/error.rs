//! Why a run could not be opened, trained, evaluated or exported. Each variant says
//! what Recast was doing; the cause it wraps says what went wrong, so the command line
//! prints the same chain it printed before the run moved into the library.

use std::path::PathBuf;

use crate::model::error::ModelError;
use crate::plugins::PluginError;
use crate::train::checkpoint::CheckpointError;
use crate::train::config::ConfigError;
use crate::train::trainer::TrainError;

/// Why a [`Run`](super::Run) step failed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The run config file could not be read.
    #[error("cannot read the run config {}", path.display())]
    ReadConfig { path: PathBuf, source: std::io::Error },
    /// The run config's path could not be made absolute (its relative paths resolve
    /// against its folder).
    #[error("cannot resolve {}", path.display())]
    Resolve { path: PathBuf, source: std::io::Error },
    /// The folder has no readable `config.toml`, so it is not a run.
    #[error("{} is not a run folder: cannot read {}", run_dir.display(), path.display())]
    NotARunFolder { run_dir: PathBuf, path: PathBuf, source: std::io::Error },
    /// Starting into a folder that already holds checkpoints would mix two runs.
    #[error("{} already holds a run with checkpoints; resume it with `recast train --resume {}` or choose another --out", out.display(), out.display())]
    AlreadyStarted { out: PathBuf },
    /// The run config is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The tokenizer files could not be copied next to the exported model.
    #[error("cannot copy the tokenizer files into {}", dir.display())]
    Companions { dir: PathBuf, source: std::io::Error },
    /// A `--set` override cannot be applied.
    #[error(transparent)]
    Override(#[from] crate::train::config::overrides::OverrideError),
    /// The plugin engine could not be created.
    #[error(transparent)]
    Engine(#[from] PluginError),
    /// A plugin the config names could not be found, built, loaded or pinned; the
    /// chain names the `[plugins.<role>]` section.
    #[error(transparent)]
    Plugins(anyhow::Error),
    /// The trainer could not start in a fresh folder.
    #[error("cannot start the run in {}", out.display())]
    Start { out: PathBuf, source: TrainError },
    /// The trainer could not continue from the folder's newest checkpoint.
    #[error("cannot resume {}", run_dir.display())]
    Resume { run_dir: PathBuf, source: TrainError },
    /// The folder's newest checkpoint could not be loaded for evaluation.
    #[error("cannot load {}", run_dir.display())]
    Load { run_dir: PathBuf, source: TrainError },
    /// A traced step cannot be replayed.
    #[error("{}: {reason}", run_dir.display())]
    Replay { run_dir: PathBuf, reason: String },
    /// The run's checkpoints could not be listed.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A training step, an evaluation or a checkpoint failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// The final model could not be written.
    #[error(transparent)]
    Export(#[from] ModelError),
}

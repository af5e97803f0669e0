//! # Recast
//!
//! Upcycle dense transformers into Mixture-of-Experts models and keep training them,
//! with every research decision — routing policy, auxiliary-loss schedule,
//! initialisation scheme, data sampler — a sandboxed WebAssembly plugin.
//!
//! This crate is the native host, and the `recast` binary is a thin layer over it:
//! [`run`] trains a run config end to end (config → plugins → train → evaluate →
//! export), [`recipe`] and [`experiment`] chain runs, [`upcycle`] executes an init
//! scheme's plan. Underneath, [`contract`] holds the plain types shared with plugins,
//! [`plugins`] the sandboxed runtime (one [`plugins::Kind`] per plugin kind), [`model`]
//! the decoder and its checkpoints, [`moe`] the MoE layer (router → dispatcher → experts
//! → combine), [`cpu`] and [`cuda`] the kernels behind it, [`train`] the loop, [`data`]
//! tokenizers and batches, and [`cli`] the command line.
//!
//! ```no_run
//! use recast::run::{Run, RunOptions};
//! let mut run = Run::start("examples/tiny-moe.toml", "runs/tiny-moe", &RunOptions::default())?;
//! let trained = run.finish(None, &mut ())?;
//! println!("loss {:?} at step {}", trained.loss, trained.step);
//! # Ok::<(), recast::run::RunError>(())
//! ```

// `PluginError` carries plugin, digest, call, step and cause (~170 bytes); errors are
// the cold path, so returning it unboxed costs nothing that matters.
#![allow(clippy::result_large_err)]

pub mod atomic_file;
pub mod cli;
pub mod contract;
pub mod cpu;
pub mod cuda;
pub mod data;
pub mod distributed;
pub mod experiment;
pub mod memory;
pub mod model;
pub mod moe;
pub mod plugin_build;
pub mod plugins;
pub mod recipe;
pub mod regular_file;
pub mod report;
pub mod run;
pub mod train;
pub mod upcycle;

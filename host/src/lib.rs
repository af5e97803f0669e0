//! # Recast
//!
//! Upcycle dense transformers into Mixture-of-Experts models and keep training them,
//! with every research decision — routing policy, auxiliary-loss schedule,
//! initialisation scheme, data sampler — a sandboxed WebAssembly plugin.
//!
//! This crate is the native host: [`plugins`] is the sandboxed plugin runtime, [`model`]
//! the decoder and its checkpoints, [`moe`] the MoE layer that executes a router's
//! spec, and [`cli`] the `recast` command line.

// `PluginError` carries plugin, digest, call, step and cause (~170 bytes); errors are
// the cold path, so returning it unboxed costs nothing that matters.
#![allow(clippy::result_large_err)]

pub mod atomic_file;
pub mod cli;
pub mod contract;
pub mod cpu;
pub mod cuda;
pub mod data;
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

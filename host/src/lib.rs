//! # Recast
//!
//! Upcycle dense transformers into Mixture-of-Experts models and keep training them,
//! with every research decision — routing policy, auxiliary-loss schedule,
//! initialisation scheme, data sampler — a sandboxed WebAssembly plugin.
//!
//! This crate is the native host: [`plugins`] is the sandboxed plugin runtime, [`moe`]
//! the natively executed routing, and [`cli`] the `recast` command line.

pub mod cli;
pub mod moe;
pub mod plugins;

//! Continued pretraining of a dense or MoE model with plugins steering every step: the
//! run config, the loop, AdamW, learning-rate schedules, atomic checkpoints with
//! bit-exact resume, and the metrics log.

pub mod checkpoint;
pub mod config;
pub mod metrics;
pub mod optimizer;
pub mod role;
pub mod routing_trace;
pub mod schedule;
pub mod tensorboard;
pub mod trainer;

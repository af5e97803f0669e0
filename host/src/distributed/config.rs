//! The run config's `[distributed]` section: how the launcher's processes split into
//! data-parallel and expert-parallel groups, and which engine carries the collectives.

use serde::{Deserialize, Serialize};

/// Which engine carries the collectives.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// NCCL for CUDA tensors, MPI otherwise.
    #[default]
    Auto,
    /// MPI (Open MPI) on the CPU.
    Mpi,
    /// NCCL on GPUs.
    Nccl,
}

/// `[distributed]`: `data_parallel × expert_parallel` must equal the launcher's world
/// size; without the section every rank is data parallel.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistributedConfig {
    /// Data-parallel replicas (default: world size / `expert_parallel`).
    pub data_parallel: Option<usize>,
    /// Ranks each MoE layer's experts are partitioned over (default 1).
    pub expert_parallel: Option<usize>,
    /// The collectives' engine.
    #[serde(default)]
    pub backend: Backend,
    /// `1`: ZeRO stage 1, each data-parallel replica keeps the AdamW moments of its share
    /// of the parameters only, updates that share, and the replicas exchange the updated
    /// weights; `0` (default): every replica keeps all moments.
    #[serde(default)]
    pub zero: u8,
}

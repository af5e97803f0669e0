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
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
    /// Seconds a rank waits in one collective before it ends the job (a rank stopped
    /// answering without exiting); 1800 unless set.
    #[serde(default = "default_collective_timeout_s")]
    pub collective_timeout_s: u64,
}

fn default_collective_timeout_s() -> u64 {
    1800
}

impl Default for DistributedConfig {
    fn default() -> Self {
        DistributedConfig { data_parallel: None, expert_parallel: None, backend: Backend::Auto, zero: 0, collective_timeout_s: default_collective_timeout_s() }
    }
}

/// `recast train --data-parallel N --expert-parallel M`: a layout that replaces the
/// config's for this launch (a resumed run is resharded to it). A flag not given keeps
/// the config's value, except that a new `expert_parallel` alone lets the data-parallel
/// size follow the world again.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LayoutOverride {
    /// Data-parallel replicas.
    pub data_parallel: Option<usize>,
    /// Expert-parallel ranks.
    pub expert_parallel: Option<usize>,
}

impl LayoutOverride {
    /// Write this layout into `config`.
    pub fn apply(&self, config: &mut DistributedConfig) {
        if let Some(ep) = self.expert_parallel {
            config.expert_parallel = Some(ep);
            config.data_parallel = None;
        }
        if let Some(dp) = self.data_parallel {
            config.data_parallel = Some(dp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_override_replaces_the_layout_it_names() {
        let mut config = DistributedConfig { data_parallel: Some(2), expert_parallel: Some(2), ..Default::default() };
        LayoutOverride { data_parallel: None, expert_parallel: Some(1) }.apply(&mut config);
        assert_eq!((config.data_parallel, config.expert_parallel), (None, Some(1)));
        LayoutOverride { data_parallel: Some(4), expert_parallel: None }.apply(&mut config);
        assert_eq!((config.data_parallel, config.expert_parallel), (Some(4), Some(1)));
    }
}

//! How the ranks of a job split into groups, as Megatron-Core lays them out: expert
//! parallelism over consecutive ranks (inside a node's fast links), data parallelism
//! across those groups. Expert weights are reduced over the ranks that hold the same
//! experts (the expert-data-parallel group); everything else over all data-parallel
//! replicas.

use std::ops::Range;

use super::config::DistributedConfig;

/// Why ranks cannot be laid out as asked.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    /// The groups do not multiply to the world.
    #[error("[distributed]: data_parallel ({dp}) × expert_parallel ({ep}) = {} but the launcher started {world} process(es); set [distributed] in the config or pass --data-parallel/--expert-parallel to `recast train` (a resumed run is resharded to them)", dp * ep)]
    WorldMismatch { dp: usize, ep: usize, world: usize },
    /// A group of zero ranks.
    #[error("[distributed].{key} must be at least 1")]
    Zero { key: &'static str },
    /// The experts do not split evenly over the expert-parallel ranks.
    #[error("{experts} experts do not split evenly over expert_parallel = {ep} ranks")]
    Experts { experts: usize, ep: usize },
}

/// One rank's place in the job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Processes in the job.
    pub world: usize,
    /// This process's rank.
    pub rank: usize,
    /// Data-parallel replicas.
    pub data_parallel: usize,
    /// Ranks sharing each MoE layer's experts.
    pub expert_parallel: usize,
}

impl Layout {
    /// The layout `config` asks for, checked against the `world` the launcher started.
    pub fn new(world: usize, rank: usize, config: &DistributedConfig) -> Result<Self, LayoutError> {
        let ep = config.expert_parallel.unwrap_or(1);
        if ep == 0 {
            return Err(LayoutError::Zero { key: "expert_parallel" });
        }
        let dp = match config.data_parallel {
            Some(0) => return Err(LayoutError::Zero { key: "data_parallel" }),
            Some(dp) => dp,
            None => world / ep,
        };
        if dp.checked_mul(ep) != Some(world) {
            return Err(LayoutError::WorldMismatch { dp, ep, world });
        }
        Ok(Layout { world, rank, data_parallel: dp, expert_parallel: ep })
    }

    /// A single process.
    pub fn single() -> Self {
        Layout { world: 1, rank: 0, data_parallel: 1, expert_parallel: 1 }
    }

    /// This rank's index inside its expert-parallel group.
    pub fn expert_rank(&self) -> usize {
        self.rank % self.expert_parallel
    }

    /// This rank's data-parallel replica.
    pub fn data_rank(&self) -> usize {
        self.rank / self.expert_parallel
    }

    /// The ranks that split the experts with this one (same replica), in order.
    pub fn expert_group(&self) -> Vec<usize> {
        let first = self.data_rank() * self.expert_parallel;
        (first..first + self.expert_parallel).collect()
    }

    /// The ranks that hold the same experts as this one (one per replica), in order:
    /// expert gradients are reduced over these only.
    pub fn expert_data_group(&self) -> Vec<usize> {
        (0..self.data_parallel).map(|d| d * self.expert_parallel + self.expert_rank()).collect()
    }

    /// The experts of a layer with `experts` experts that this rank computes.
    pub fn local_experts(&self, experts: usize) -> Result<Range<usize>, LayoutError> {
        if !experts.is_multiple_of(self.expert_parallel) {
            return Err(LayoutError::Experts { experts, ep: self.expert_parallel });
        }
        let per = experts / self.expert_parallel;
        Ok(self.expert_rank() * per..(self.expert_rank() + 1) * per)
    }

    /// This rank's share of a global batch of `sequences`: the range of sequences it
    /// trains on, so that the ranks together see the batch one process would. Every
    /// rank has its own share (the ranks of an expert-parallel group too: they split the
    /// experts, not the tokens), as Megatron-Core's data parallelism spans the world.
    pub fn batch_share(&self, sequences: usize) -> Range<usize> {
        let per = sequences / self.world;
        self.rank * per..(self.rank + 1) * per
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dp: Option<usize>, ep: Option<usize>) -> DistributedConfig {
        DistributedConfig { data_parallel: dp, expert_parallel: ep, ..Default::default() }
    }

    #[test]
    fn groups_follow_megatron_expert_parallel_inside_data_parallel_across() {
        // 8 ranks, 2 replicas of 4 expert-parallel ranks.
        let l = Layout::new(8, 6, &config(None, Some(4))).expect("layout");
        assert_eq!((l.data_parallel, l.data_rank(), l.expert_rank()), (2, 1, 2));
        assert_eq!(l.expert_group(), [4, 5, 6, 7]);
        assert_eq!(l.expert_data_group(), [2, 6]);
        assert_eq!(l.local_experts(16), Ok(8..12));
        assert_eq!(l.batch_share(32), 24..28);
        assert_eq!(Layout::new(4, 0, &config(None, None)).map(|l| l.data_parallel), Ok(4));
    }

    #[test]
    fn impossible_layouts_are_named() {
        let e = Layout::new(4, 0, &config(Some(3), Some(1))).unwrap_err();
        assert!(e.to_string().starts_with("[distributed]: data_parallel (3) × expert_parallel (1) = 3 but the launcher started 4 process(es); "), "{e}");
        assert_eq!(Layout::new(2, 0, &config(None, Some(0))), Err(LayoutError::Zero { key: "expert_parallel" }));
        assert!(Layout::new(2, 0, &config(None, Some(2))).expect("layout").local_experts(3).is_err());
        assert!(Layout::new(3, 0, &config(None, Some(2))).is_err());
    }
}

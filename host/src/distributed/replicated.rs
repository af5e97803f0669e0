//! The MoE dispatcher of a data-parallel replica: every routed row stays local (each
//! replica holds all experts), but the expert loads the load-balancing loss weighs by are
//! those of the whole batch, summed over the replicas, so the loss and its gradient are
//! the ones a single process training on the whole batch computes.

use std::fmt;
use std::sync::Arc;

use candle_core::{Result, Tensor};

use super::Communicator;
use crate::moe::dispatcher::{Dispatch, LocalDispatcher, TokenDispatcher};
use crate::moe::selection::Selection;

/// Local dispatch with batch-wide loads.
pub struct ReplicatedDispatcher {
    comm: Arc<dyn Communicator>,
}

impl ReplicatedDispatcher {
    /// Sum loads over all ranks of `comm` (the data-parallel replicas).
    pub fn new(comm: Arc<dyn Communicator>) -> Self {
        ReplicatedDispatcher { comm }
    }
}

impl fmt::Debug for ReplicatedDispatcher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReplicatedDispatcher({} ranks)", self.comm.size())
    }
}

impl TokenDispatcher for ReplicatedDispatcher {
    fn name(&self) -> &'static str {
        "replicated"
    }

    fn dispatch(&self, x: &Tensor, selection: &Selection) -> Result<Box<dyn Dispatch>> {
        LocalDispatcher.dispatch(x, selection)
    }

    fn batch_load(&self, local: &[u32]) -> Result<Vec<u32>> {
        // Counts are exact in f64 far beyond any batch.
        let mut sums: Vec<f64> = local.iter().map(|&c| c as f64).collect();
        self.comm.all_reduce_sum_f64(&mut sums).map_err(|e| candle_core::Error::Msg(format!("expert loads over the replicas: {e}")))?;
        Ok(sums.into_iter().map(|c| c as u32).collect())
    }
}

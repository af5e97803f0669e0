//! Moving tokens to experts and back (Megatron-Core's `token_dispatcher.py`): the
//! dispatch gathers the routed rows grouped by expert, so each expert's rows are
//! contiguous, and its combine sums the experts' outputs back into the tokens,
//! weighted by the gates. Never a loop over tokens.
//!
//! [`LocalDispatcher`] keeps every row in this process: f32 on the CPU the gather and
//! the weighted sum are Recast's own parallel ops ([`crate::cpu::token_rows`]),
//! otherwise candle's `index_select` and `index_add`. The expert-parallel dispatcher
//! ([`crate::distributed::ExpertParallelDispatcher`]) implements the same traits: its
//! [`Dispatch::run_experts`] sends rows to the processes that hold their experts, runs
//! this process's experts on what arrived and sends the results back.

use std::fmt;

use candle_core::{Result, Tensor};

use super::experts::ExpertCompute;
use super::selection::Selection;
use crate::cpu::op_io::is_f32_cpu;
use crate::cpu::token_rows::{self, TokenRows};
use crate::model::ffn::Ffn;

/// How a layer's routed rows reach their experts and come back.
///
/// Nothing here assumes the rows stay in this process: [`Dispatch::run_experts`] may
/// compute them anywhere, and only returns one output row per routed row of the local
/// tokens, in the order [`Dispatch::combine`] expects.
pub trait TokenDispatcher: Send + Sync + fmt::Debug {
    /// A short name for logs and benchmarks.
    fn name(&self) -> &'static str;

    /// Sends the rows of `x` (`[T, d]`) the `selection` routed to their experts.
    fn dispatch(&self, x: &Tensor, selection: &Selection) -> Result<Box<dyn Dispatch>>;

    /// Whether every expert runs in this process, so a backend may fuse routing,
    /// dispatch and experts into one kernel (the CUDA path); an expert-parallel
    /// dispatcher says no, and the layer routes on the host.
    fn keeps_rows_local(&self) -> bool {
        true
    }
}

/// One micro-batch's dispatched rows, and the way back.
pub trait Dispatch {
    /// Every routed row's expert output (`[N, d]`, one row per routed slot of the local
    /// tokens, grouped by expert), computed by `compute` on the layer's routed `experts`
    /// (all of them; an expert-parallel dispatch runs only this process's share and
    /// receives the rest).
    fn run_experts(&self, compute: &dyn ExpertCompute, experts: &[Ffn]) -> Result<Tensor>;

    /// `Σ_e gate · FFN_e(x)` for every local token (`[T, d]`), from the experts'
    /// outputs [`Self::run_experts`] returned and the combine weights `gates` (indexed by
    /// the selection's slots); tokens nobody took (dropped, or unchosen under expert
    /// choice) get zeros.
    fn combine(&self, expert_rows: &Tensor, gates: &Tensor) -> Result<Tensor>;
}

/// Every routed row stays in this process.
#[derive(Clone, Copy, Debug, Default)]
pub struct LocalDispatcher;

impl TokenDispatcher for LocalDispatcher {
    fn name(&self) -> &'static str {
        "local"
    }

    fn dispatch(&self, x: &Tensor, selection: &Selection) -> Result<Box<dyn Dispatch>> {
        Ok(Box::new(self.gather(x, selection)?))
    }
}

impl LocalDispatcher {
    /// The routed rows of `x` grouped by expert, and the way back to the tokens.
    pub(crate) fn gather(&self, x: &Tensor, selection: &Selection) -> Result<LocalDispatch> {
        let device = x.device();
        let tokens = Tensor::from_slice(&selection.tokens, selection.tokens.len(), device)?;
        let slots = Tensor::from_slice(&selection.slots, selection.slots.len(), device)?;
        // The token-to-rows map of the parallel CPU ops, on the CPU only; used where
        // the tokens are f32 matrices.
        let map = if device.is_cpu() { Some(TokenRows::new(&selection.tokens, x.dim(0)?)?) } else { None };
        let map = map.filter(|_| is_f32_cpu(x) && x.rank() == 2);
        let rows = match (&map, selection.tokens.is_empty()) {
            (_, true) => x.narrow(0, 0, 0)?,
            (Some(map), false) => token_rows::gather(x, map)?,
            (None, false) => x.index_select(&tokens, 0)?,
        };
        Ok(LocalDispatch { x: x.clone(), rows, tokens, slots, counts: selection.counts.clone(), map })
    }
}

/// [`LocalDispatcher`]'s rows and index tensors, built once from a [`Selection`].
pub(crate) struct LocalDispatch {
    /// The tokens (for the output's shape, dtype and device).
    x: Tensor,
    /// The routed rows, grouped by expert.
    rows: Tensor,
    /// Token of each routed row.
    tokens: Tensor,
    /// Index of each routed row's combine weight in the gate vector.
    slots: Tensor,
    /// Routed rows per expert.
    counts: Vec<usize>,
    /// The rows of every token, where the gather took the CPU op.
    map: Option<TokenRows>,
}

impl LocalDispatch {
    /// The routed rows of the local tokens, grouped by expert (`[N, d]`).
    pub(crate) fn rows(&self) -> &Tensor {
        &self.rows
    }
}

impl Dispatch for LocalDispatch {
    fn run_experts(&self, compute: &dyn ExpertCompute, experts: &[Ffn]) -> Result<Tensor> {
        if self.rows.dim(0)? == 0 {
            return Ok(self.rows.clone());
        }
        compute.forward(&self.rows, &self.counts, experts)
    }

    fn combine(&self, expert_rows: &Tensor, gates: &Tensor) -> Result<Tensor> {
        let x = &self.x;
        if self.tokens.dim(0)? == 0 {
            return x.zeros_like().map(|z| z.detach());
        }
        let weights = gates.index_select(&self.slots, 0)?.to_dtype(x.dtype())?;
        match &self.map {
            Some(map) if is_f32_cpu(gates) && is_f32_cpu(expert_rows) => token_rows::combine(expert_rows, &weights, map),
            _ => x.zeros_like()?.detach().index_add(&self.tokens, &expert_rows.broadcast_mul(&weights.unsqueeze(1)?)?, 0),
        }
    }
}

//! Moving tokens to experts and back (Megatron-Core's `token_dispatcher.py`): the
//! dispatch gathers the routed rows grouped by expert, so each expert's rows are
//! contiguous, and its combine sums the experts' outputs back into the tokens,
//! weighted by the gates. Never a loop over tokens.
//!
//! [`LocalDispatcher`] keeps every row in this process: f32 on the CPU the gather and
//! the weighted sum are Recast's own parallel ops ([`crate::cpu::token_rows`]),
//! otherwise candle's `index_select` and `index_add`. An expert-parallel dispatcher
//! (all-to-all across processes) implements the same traits: its dispatch sends rows to
//! the processes that hold their experts and returns the rows this process's experts
//! compute, its combine sends the results back.

use std::fmt;

use candle_core::{Result, Tensor};

use super::selection::Selection;
use crate::cpu::op_io::is_f32_cpu;
use crate::cpu::token_rows::{self, TokenRows};

/// How a layer's routed rows reach their experts and come back.
///
/// Nothing here assumes the rows stay in this process: [`Dispatch::rows`] are the rows
/// *this process's* experts compute (their number need not be the number of routed
/// slots of the local tokens), and only [`Dispatch::combine`] turns expert outputs back
/// into the local tokens' rows.
pub trait TokenDispatcher: Send + Sync + fmt::Debug {
    /// A short name for logs and benchmarks.
    fn name(&self) -> &'static str;

    /// Sends the rows of `x` (`[T, d]`) the `selection` routed to their experts.
    fn dispatch(&self, x: &Tensor, selection: &Selection) -> Result<Box<dyn Dispatch>>;

    /// The expert loads of the whole batch the local tokens belong to, which the
    /// load-balancing loss weighs the router's probabilities by: the local loads in one
    /// process; summed over the data-parallel replicas when the batch is split across
    /// processes, so the loss is the one a single process would compute.
    fn batch_load(&self, local: &[u32]) -> Result<Vec<u32>> {
        Ok(local.to_vec())
    }
}

/// One micro-batch's dispatched rows, and the way back.
pub trait Dispatch {
    /// The rows the local experts compute, grouped by expert (`[N, d]`).
    fn rows(&self) -> &Tensor;

    /// Rows per local expert, in expert order (summing to `N`).
    fn counts(&self) -> &[usize];

    /// `Σ_e gate · FFN_e(x)` for every local token (`[T, d]`), from the experts'
    /// outputs for [`Self::rows`] (`[N, d]`, same order) and the combine weights `gates`
    /// (indexed by the selection's slots); tokens nobody took (dropped, or unchosen under
    /// expert choice) get zeros.
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
        Ok(Box::new(LocalDispatch { x: x.clone(), rows, tokens, slots, counts: selection.counts.clone(), map }))
    }
}

/// [`LocalDispatcher`]'s rows and index tensors, built once from a [`Selection`].
struct LocalDispatch {
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

impl Dispatch for LocalDispatch {
    fn rows(&self) -> &Tensor {
        &self.rows
    }

    fn counts(&self) -> &[usize] {
        &self.counts
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

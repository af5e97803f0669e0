//! Moving tokens to experts and back: one gather of the routed rows (grouped by expert,
//! so each expert's rows are contiguous), per-expert GEMMs on those rows, and one
//! weighted scatter-add into the output. Never a loop over tokens. On the BLAS path the
//! experts run as three grouped ops ([`grouped`]); elsewhere one by one.

use candle_core::{Device, Result, Tensor};

use super::grouped;
use super::selection::Selection;
use crate::model::ffn::Ffn;

/// Index tensors for one micro-batch's dispatch, built once from a [`Selection`].
pub struct Dispatch {
    /// Token of each routed row, grouped by expert.
    tokens: Tensor,
    /// Index of each routed row's combine weight in the gate vector.
    slots: Tensor,
    /// Routed rows per expert.
    counts: Vec<usize>,
}

impl Dispatch {
    /// Prepare the index tensors on `device`.
    pub fn new(selection: &Selection, device: &Device) -> Result<Self> {
        Ok(Self {
            tokens: Tensor::from_slice(&selection.tokens, selection.tokens.len(), device)?,
            slots: Tensor::from_slice(&selection.slots, selection.slots.len(), device)?,
            counts: selection.counts.clone(),
        })
    }

    /// `Σ_e gate · FFN_e(x)` over the routed rows, as `[T, d]`; tokens nobody took
    /// (dropped, or unchosen under expert choice) get zeros.
    pub fn run(&self, x: &Tensor, gates: &Tensor, experts: &[Ffn]) -> Result<Tensor> {
        let out = x.zeros_like()?.detach();
        if self.tokens.dim(0)? == 0 {
            return Ok(out);
        }
        let routed = x.index_select(&self.tokens, 0)?;
        let expert_out = match grouped::experts_forward(&routed, &self.counts, experts)? {
            Some(out) => out,
            None => {
                let mut outputs = Vec::with_capacity(experts.len());
                let mut start = 0;
                for (expert, &n) in experts.iter().zip(&self.counts) {
                    if n > 0 {
                        outputs.push(expert.forward(&routed.narrow(0, start, n)?)?);
                    }
                    start += n;
                }
                Tensor::cat(&outputs, 0)?
            }
        };
        let weights = gates.index_select(&self.slots, 0)?.to_dtype(x.dtype())?.unsqueeze(1)?;
        out.index_add(&self.tokens, &expert_out.broadcast_mul(&weights)?, 0)
    }
}

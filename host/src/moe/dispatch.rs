//! Moving tokens to experts and back: one gather of the routed rows (grouped by expert,
//! so each expert's rows are contiguous), per-expert GEMMs on those rows, and one
//! weighted sum back into the tokens. Never a loop over tokens. On the BLAS path the
//! experts run as grouped ops ([`grouped`]); elsewhere one by one. f32 on the CPU, the
//! gather and the weighted sum are Recast's own parallel ops (`token_rows`); otherwise
//! candle's `index_select` and `index_add`.

use candle_core::{DType, Device, Result, Tensor};

use super::grouped;
use super::selection::Selection;
use super::token_rows::{self, TokenRows};
use crate::model::ffn::Ffn;

/// Index tensors for one micro-batch's dispatch, built once from a [`Selection`].
pub struct Dispatch {
    /// Token of each routed row, grouped by expert.
    tokens: Tensor,
    /// Index of each routed row's combine weight in the gate vector.
    slots: Tensor,
    /// Routed rows per expert.
    counts: Vec<usize>,
    /// The rows of every token, for the CPU ops (built on the CPU only).
    token_rows: Option<TokenRows>,
}

impl Dispatch {
    /// Prepare the index tensors for `tokens` tokens on `device`; on the CPU also the
    /// token-to-rows map the parallel gather and combine need.
    pub fn new(selection: &Selection, tokens: usize, device: &Device) -> Result<Self> {
        Ok(Self {
            tokens: Tensor::from_slice(&selection.tokens, selection.tokens.len(), device)?,
            slots: Tensor::from_slice(&selection.slots, selection.slots.len(), device)?,
            counts: selection.counts.clone(),
            token_rows: if device.is_cpu() { Some(TokenRows::new(&selection.tokens, tokens)?) } else { None },
        })
    }

    /// `Σ_e gate · FFN_e(x)` over the routed rows, as `[T, d]`; tokens nobody took
    /// (dropped, or unchosen under expert choice) get zeros.
    pub fn run(&self, x: &Tensor, gates: &Tensor, experts: &[Ffn]) -> Result<Tensor> {
        if self.tokens.dim(0)? == 0 {
            return x.zeros_like().map(|z| z.detach());
        }
        let f32_cpu = |t: &Tensor| t.dtype() == DType::F32 && t.device().is_cpu();
        let map = self.token_rows.as_ref().filter(|_| f32_cpu(x) && f32_cpu(gates) && x.rank() == 2);
        let routed = match map {
            Some(map) => token_rows::gather(x, map)?,
            None => x.index_select(&self.tokens, 0)?,
        };
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
        let weights = gates.index_select(&self.slots, 0)?.to_dtype(x.dtype())?;
        match map {
            Some(map) if f32_cpu(&expert_out) => token_rows::combine(&expert_out, &weights, map),
            _ => x.zeros_like()?.detach().index_add(&self.tokens, &expert_out.broadcast_mul(&weights.unsqueeze(1)?)?, 0),
        }
    }
}

//! The SwiGLU feed-forward network: dense MLPs, routed experts and shared experts are
//! all one of these, each with its own width.

use candle_core::{Result, Tensor};

use super::ops::linear;
use crate::cpu::swiglu::swiglu;

/// `FFN(x) = (silu(x W_gateᵀ) ⊙ x W_upᵀ) W_downᵀ` with Hugging Face layouts
/// (`gate`, `up`: `[width, d]`; `down`: `[d, width]`).
#[derive(Clone)]
pub struct Ffn {
    pub gate: Tensor,
    pub up: Tensor,
    pub down: Tensor,
}

impl Ffn {
    /// `x`: `[n, d]` → `[n, d]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let hidden = swiglu(&linear(x, &self.gate, None)?, &linear(x, &self.up, None)?)?;
        linear(&hidden, &self.down, None)
    }

    /// The intermediate width.
    pub fn width(&self) -> usize {
        self.gate.dims()[0]
    }
}

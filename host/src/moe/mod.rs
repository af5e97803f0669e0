//! The MoE layer, split by role as in Megatron-Core's `transformer/moe/`: [`spec`] (what
//! to execute), [`gates`] (differentiable scores and combine weights), [`selection`]
//! (top-k, expert choice, capacity and drops), [`dispatch`] (gather, expert GEMMs,
//! weighted sum back to the tokens; on the CPU through `token_rows`' parallel ops and
//! [`grouped`]'s BLAS experts, chunked in `fused_experts` for mixed precision),
//! [`losses`], [`stats`], and [`layer`] wiring them together.
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use recast::model::ffn::Ffn;
//! use recast::moe::{layer::MoeLayer, spec::RouterSpec};
//! # fn main() -> candle_core::Result<()> {
//! let w = |rows: usize, cols: usize| Tensor::randn(0f32, 0.1, (rows, cols), &Device::Cpu);
//! let experts = (0..4).map(|_| Ok(Ffn { gate: w(32, 16)?, up: w(32, 16)?, down: w(16, 32)? })).collect::<candle_core::Result<Vec<_>>>()?;
//! let layer = MoeLayer {
//!     layer: 0,
//!     router: w(4, 16)?,
//!     experts,
//!     shared: vec![],
//!     shared_gate: None,
//!     spec: RouterSpec::softmax_topk(2),
//!     selection_bias: vec![0.0; 4],
//!     coefficients: Default::default(),
//! };
//! let out = layer.forward(&w(10, 16)?)?;
//! assert_eq!(out.output.dims(), &[10, 16]);
//! assert_eq!(out.stats.expert_load.iter().sum::<u32>(), 20); // 10 tokens x top-2
//! # Ok(()) }
//! ```

pub mod dispatch;
mod fused_experts;
pub mod gates;
pub mod grouped;
pub mod layer;
pub mod losses;
pub mod router;
pub mod selection;
pub mod spec;
pub mod stats;
mod token_rows;

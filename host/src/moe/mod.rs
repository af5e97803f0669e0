//! The MoE layer, split by role as in Megatron-Core's `transformer/moe/`
//! (router → dispatcher → experts → combine):
//!
//! - routing: [`spec`] (what to execute), [`gates`] (differentiable scores and combine
//!   weights), [`selection`] (top-k, expert choice, capacity and drops), [`router`] (a
//!   plain-slice reference for the per-token escape hatch);
//! - [`dispatcher`]: the [`dispatcher::TokenDispatcher`] seam that gathers the routed rows
//!   grouped by expert and combines the experts' outputs back into the tokens
//!   ([`dispatcher::LocalDispatcher`] today; an all-to-all dispatcher across processes
//!   next);
//! - [`experts`]: the [`experts::ExpertCompute`] seam (CPU grouped f32, CPU fused bf16,
//!   one expert at a time, and the CUDA backend, which also fuses routing);
//! - [`backend`]: which dispatcher and experts a layer runs, chosen once from the device,
//!   dtype and matmul path;
//! - [`losses`], [`stats`], and [`layer`] wiring them together.
//!
//! The kernels are elsewhere: the CPU ops in [`crate::cpu`], the CUDA ones in
//! [`crate::cuda`]; nothing here depends on which device runs.
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

pub mod backend;
pub mod dispatcher;
pub mod experts;
pub mod gates;
pub mod layer;
pub mod losses;
pub mod router;
pub mod routing_record;
pub mod selection;
pub mod spec;
pub mod stats;

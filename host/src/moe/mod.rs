//! The MoE layer, split by role as in Megatron-Core's `transformer/moe/`: [`spec`] (what
//! to execute), [`gates`] (differentiable scores and combine weights), [`selection`]
//! (top-k, expert choice, capacity and drops), [`dispatch`] (gather, expert GEMMs,
//! scatter-add), [`losses`], [`stats`], and [`layer`] wiring them together.
//!
//! ```
//! use candle_core::{Device, DType, Tensor};
//! use recast::model::ffn::Ffn;
//! use recast::moe::{layer::MoeLayer, spec};
//! # fn main() -> candle_core::Result<()> {
//! let dev = Device::Cpu;
//! let ffn = || -> candle_core::Result<Ffn> { Ok(Ffn { gate: Tensor::randn(0f32, 0.1, (32, 16), &dev)?, up: Tensor::randn(0f32, 0.1, (32, 16), &dev)?, down: Tensor::randn(0f32, 0.1, (16, 32), &dev)? }) };
//! let mut spec = spec::RouterSpec { top_k: 2, ..moe_default() };
//! # fn moe_default() -> spec::RouterSpec { spec::checkpoint_default(&recast::model::config::MoeConfig { num_experts: 4, top_k: 2, expert_intermediate: vec![32; 4], shared_expert_intermediate: vec![], shared_expert_gate: false, normalize_top_k: true, moe_layers: vec![true], router_aux_loss_coef: 0.0 }) }
//! let layer = MoeLayer { layer: 0, router: Tensor::randn(0f32, 1.0, (4, 16), &dev)?, experts: (0..4).map(|_| ffn()).collect::<candle_core::Result<_>>()?, shared: vec![], shared_gate: None, spec, selection_bias: vec![0.0; 4], coefficients: Default::default() };
//! let out = layer.forward(&Tensor::randn(0f32, 1.0, (10, 16), &dev)?)?;
//! assert_eq!(out.output.dims(), &[10, 16]);
//! assert_eq!(out.stats.expert_load.iter().sum::<u32>(), 20);
//! # Ok(()) }
//! ```

pub mod dispatch;
pub mod gates;
pub mod layer;
pub mod losses;
pub mod router;
pub mod selection;
pub mod spec;
pub mod stats;

//! The MoE layer on CUDA, behind the `cuda` feature: Recast's kernels (`kernels/*.cu`,
//! compiled to PTX at build time) wrapped as candle custom ops with a backward, so the
//! same model code trains on CPU or GPU. [`layer`] runs a whole routed-expert block with
//! them: fused router, permute, experts on contiguous rows (cuBLAS per expert), weighted
//! combine. Everything else in the model runs on candle's CUDA ops.
//!
//! The CPU path (`moe/`) is the reference the device tests (`tests.rs`, run on the GPU
//! machine by `scripts/device-check.sh`) compare every op and the whole layer against.

pub mod combine;
pub mod kernels;
pub mod layer;
pub mod permute;
pub mod router;

#[cfg(test)]
mod tests;

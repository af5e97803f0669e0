//! The MoE layer on CUDA, behind the `cuda` feature: Recast's kernels (`kernels/*.cu`,
//! compiled to PTX at build time) wrapped as candle custom ops with a backward, so the
//! same model code trains on CPU or GPU. `layer` runs a whole routed-expert block with
//! them: fused router, permute, experts on contiguous rows (cuBLAS per expert), weighted
//! combine; `backend` offers it to the MoE layer as an
//! [`ExpertCompute`](crate::moe::experts::ExpertCompute). Everything else in the model
//! runs on candle's CUDA ops.
//!
//! This module is the only place that knows whether the build has CUDA: without the
//! feature the same entry points ([`BUILT`], [`open_device`], [`experts_backend`])
//! exist and say that it has not, so no caller needs a `#[cfg]`.
//!
//! The CPU path (`moe/`, `cpu/`) is the reference the device tests (`tests.rs`, run on
//! the GPU machine by `scripts/device-check.sh`) compare every op and the whole layer
//! against.

#[cfg(feature = "cuda")]
mod backend;
#[cfg(feature = "cuda")]
pub mod combine;
#[cfg(feature = "cuda")]
pub mod kernels;
#[cfg(feature = "cuda")]
pub mod layer;
#[cfg(feature = "cuda")]
pub mod permute;
#[cfg(feature = "cuda")]
pub mod router;

#[cfg(all(test, feature = "cuda"))]
mod tests;

#[cfg(not(feature = "cuda"))]
mod dummy;

#[cfg(feature = "cuda")]
pub use backend::{BUILT, CudaExperts, experts_backend, open_device};
#[cfg(not(feature = "cuda"))]
pub use dummy::{BUILT, experts_backend, open_device};

//! The CUDA entry points of a build without the `cuda` feature: they say there is no
//! CUDA, so callers need no `#[cfg]` (no tensor can be on a CUDA device in this build).

use std::sync::Arc;

use candle_core::{Device, Result};

use crate::moe::experts::ExpertCompute;

/// This build has no CUDA.
pub const BUILT: bool = false;

/// Always `None`: this build cannot open a CUDA device.
pub fn open_device(ordinal: usize) -> Option<Result<Device>> {
    let _ = ordinal;
    None
}

/// Always `None`: there is no CUDA experts backend in this build.
pub fn experts_backend() -> Option<Arc<dyn ExpertCompute>> {
    None
}

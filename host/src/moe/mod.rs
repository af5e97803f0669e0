//! The MoE layer's native side. For now: router execution for token-choice top-k, the
//! reference the per-token `route` escape hatch is checked and timed against.

pub mod router;

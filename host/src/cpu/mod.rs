//! Recast's CPU kernels: the ops under the model and the MoE layer that candle's CPU
//! backend runs too slowly, each a candle custom op with its backward, so the model code
//! stays the same on every device. [`matmul`] is every linear layer's product (candle or
//! a BLAS loaded at run time, f32 or mixed precision); [`attention`], [`rms_norm`],
//! [`rope`] and [`swiglu`] are the model's fused ops, and [`lm_head_loss`] its head and
//! loss; [`token_rows`], [`grouped_experts`] and [`fused_experts`] are the MoE layer's
//! (gather and combine of routed rows, all experts over their grouped rows in f32 and in
//! mixed precision).
//! [`features`] says once which vector units the CPU has; [`exp`] and `op_io` are what
//! the kernels share; [`released_weights`] lets the experts' ops drop their
//! concatenated weights between forward and backward.
//!
//! Nothing here knows about routing or the model's layout: `model/` and `moe/` decide
//! when an op applies and call it.

pub mod attention;
pub mod exp;
pub mod features;
pub mod fused_experts;
pub mod grouped_experts;
pub mod lm_head_loss;
pub mod matmul;
pub(crate) mod op_io;
pub mod released_weights;
pub mod rms_norm;
pub mod rope;
pub mod swiglu;
pub mod token_rows;

//! The dense or MoE decoder (Llama / Qwen2 / Mistral / Mixtral / Qwen2-MoE) on
//! candle-core tensors, forward and backward, and its Hugging Face checkpoints.
//!
//! ```no_run
//! use candle_core::DType;
//! use recast::model::{checkpoint, transformer::Transformer};
//! # fn main() -> Result<(), recast::model::error::ModelError> {
//! let ckpt = checkpoint::read(std::path::Path::new("tiny-mixtral"), DType::F32)?;
//! let model = Transformer::new(&ckpt.config, &ckpt.params, "tiny-mixtral")?;
//! let out = model.forward(&[1, 5, 9, 2], 1)?;
//! println!("{:?}", out.logits.dims()); // [4, vocab]
//! # Ok(()) }
//! ```

pub mod attention;
pub mod attention_core;
pub mod checkpoint;
pub mod compute_device;
pub mod config;
pub mod error;
pub mod ffn;
pub mod fused;
pub mod hf_config;
pub mod init;
pub mod loss;
pub mod matmul;
pub(crate) mod op_inputs;
pub mod ops;
pub mod params;
pub mod rope;
pub mod swiglu;
#[cfg(test)]
pub(crate) mod test_tensors;
pub mod transformer;

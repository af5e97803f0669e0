//! The dense or MoE decoder (Llama / Qwen2 / Mistral / Mixtral / Qwen2-MoE) on
//! candle-core tensors, forward and backward, and its Hugging Face checkpoints. The
//! layers here say what is computed; the CPU kernels under them are in [`crate::cpu`],
//! the MoE layer in [`crate::moe`].
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
pub mod checkpoint;
pub mod compute_device;
pub mod config;
pub mod error;
pub mod ffn;
pub mod hf_config;
pub mod init;
pub mod loss;
pub mod ops;
pub mod params;
pub mod rope;
#[cfg(test)]
pub(crate) mod test_tensors;
pub mod training_pass;
pub mod transformer;

//! Hugging Face checkpoints in and out: `config.json` plus safetensors, single-file or
//! sharded with `model.safetensors.index.json`. Reads are memory-mapped; writes are
//! atomic per file.

pub mod bytes;
pub mod companions;
pub mod names;
mod read;
mod write;

pub use read::{Checkpoint, CheckpointReader, TensorLocation, read};
pub use write::{Format, WriteOptions, write, write_tensors};

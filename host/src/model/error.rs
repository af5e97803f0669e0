//! Why a model could not be read, built, run or written. Every variant names the file
//! and tensor involved where there is one, so a user can find the broken piece.

use std::path::PathBuf;

/// A model error.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Config { path: PathBuf, reason: String },
    #[error("{path}: not a readable safetensors file: {reason}")]
    Safetensors { path: PathBuf, reason: String },
    #[error("{path}: no `model.safetensors` or `model.safetensors.index.json` (Recast reads safetensors checkpoints only)")]
    NoWeights { path: PathBuf },
    #[error("tensor `{name}` is missing (looked in {looked_in})")]
    MissingTensor { name: String, looked_in: String },
    #[error("{path}: tensor `{name}` has shape {found:?}, the config implies {expected:?}")]
    ShapeMismatch { path: PathBuf, name: String, expected: Vec<usize>, found: Vec<usize> },
    #[error("{path}: tensor `{name}` has dtype {dtype}; weights must be F32, F16, BF16 or F64")]
    WrongDtype { path: PathBuf, name: String, dtype: String },
    #[error("{path}: tensors the {architecture} config does not account for: {names}")]
    UnexpectedTensors { path: PathBuf, architecture: String, names: String },
    #[error("{path}: the index maps `{name}` to {file}, which {reason}")]
    BadIndex { path: PathBuf, name: String, file: String, reason: String },
    #[error("cannot write {what}: {reason}")]
    Unwritable { what: String, reason: String },
    #[error("token id {id} at position {position} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange { id: u32, position: usize, vocab: usize },
    /// A request the model cannot serve: too long for its positions, too large for this
    /// machine's memory, or tokens that do not split into the batch.
    #[error("{0}")]
    Request(String),
    #[error("tensor computation failed: {0}")]
    Tensor(#[from] candle_core::Error),
}

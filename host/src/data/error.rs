//! Why data could not be prepared or read. Every variant names the file involved.

use std::path::PathBuf;

/// A data error.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("tokenizer {path}: {reason}")]
    Tokenizer { path: PathBuf, reason: String },
    #[error("unknown built-in domain {name:?} (built-in domains: {known})")]
    UnknownBuiltin { name: String, known: String },
    #[error("domain {domain:?}: {reason}")]
    Domain { domain: String, reason: String },
}

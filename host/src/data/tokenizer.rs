//! Text to token ids: a built-in byte-level tokenizer (vocabulary 256, nothing to
//! download) or a Hugging Face `tokenizer.json` through the `tokenizers` crate.

use std::path::{Path, PathBuf};

use sha2::Digest;

use super::error::DataError;

/// A tokenizer.
pub enum Tokenizer {
    /// Every UTF-8 byte is a token.
    Byte,
    /// A Hugging Face tokenizer loaded from `tokenizer.json`, with the sha256 of that
    /// file: its identity, whatever path names it.
    HuggingFace { path: PathBuf, sha256: String, inner: Box<tokenizers::Tokenizer> },
}

impl Tokenizer {
    /// `"byte"` or the path of a `tokenizer.json`.
    pub fn from_spec(spec: &str) -> Result<Self, DataError> {
        if spec == "byte" {
            return Ok(Tokenizer::Byte);
        }
        let path = Path::new(spec);
        if !path.is_file() {
            return Err(DataError::Tokenizer { path: path.into(), reason: "no such file (give \"byte\" or the path of a tokenizer.json)".into() });
        }
        let bytes = std::fs::read(path).map_err(|source| DataError::Io { path: path.into(), source })?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes).map_err(|e| DataError::Tokenizer { path: path.into(), reason: e.to_string() })?;
        let sha256 = hex::encode(sha2::Sha256::digest(&bytes));
        Ok(Tokenizer::HuggingFace { path: path.into(), sha256, inner: Box::new(inner) })
    }

    /// How a run config or shard metadata names this tokenizer.
    pub fn spec(&self) -> String {
        match self {
            Tokenizer::Byte => "byte".into(),
            Tokenizer::HuggingFace { path, .. } => path.display().to_string(),
        }
    }

    /// What identifies this tokenizer: `byte`, or the sha256 of its `tokenizer.json`.
    pub fn identity(&self) -> &str {
        match self {
            Tokenizer::Byte => "byte",
            Tokenizer::HuggingFace { sha256, .. } => sha256,
        }
    }

    /// Number of token ids (the model's vocabulary must be at least this).
    pub fn vocab_size(&self) -> usize {
        match self {
            Tokenizer::Byte => 256,
            Tokenizer::HuggingFace { inner, .. } => inner.get_vocab_size(true),
        }
    }

    /// Token ids of `text`.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, DataError> {
        match self {
            Tokenizer::Byte => Ok(text.bytes().map(u32::from).collect()),
            Tokenizer::HuggingFace { path, inner, .. } => Ok(inner.encode(text, false).map_err(|e| DataError::Tokenizer { path: path.clone(), reason: e.to_string() })?.get_ids().to_vec()),
        }
    }

    /// Text of `ids` (lossy for byte tokens that split a character).
    pub fn decode(&self, ids: &[u32]) -> String {
        match self {
            Tokenizer::Byte => String::from_utf8_lossy(&ids.iter().map(|&i| i as u8).collect::<Vec<u8>>()).into_owned(),
            Tokenizer::HuggingFace { inner, .. } => inner.decode(ids, false).unwrap_or_default(),
        }
    }
}

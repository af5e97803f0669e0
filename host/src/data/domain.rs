//! A data domain as training sees it: its token splits, wherever they came from.

use std::path::Path;

use super::builtin::{BUILTIN_DOMAINS, generate};
use super::error::DataError;
use super::shards::{TokenStore, open_domain};
use super::tokenizer::Tokenizer;

/// Bytes of generated text per built-in domain's training split (validation: 1/16).
pub const BUILTIN_TRAIN_BYTES: usize = 1 << 20;

/// One domain's splits.
pub struct Domain {
    pub name: String,
    pub train: TokenStore,
    pub valid: TokenStore,
}

impl Domain {
    /// Generate the built-in domain `which`, tokenised with `tokenizer`.
    pub fn builtin(name: &str, which: &str, tokenizer: &Tokenizer, seed: u64) -> Result<Self, DataError> {
        let unknown = || DataError::UnknownBuiltin { name: which.into(), known: BUILTIN_DOMAINS.join(", ") };
        let train = generate(which, BUILTIN_TRAIN_BYTES, seed).ok_or_else(unknown)?;
        let valid = generate(which, BUILTIN_TRAIN_BYTES / 16, seed ^ 0x0076_616c_6964).ok_or_else(unknown)?;
        Ok(Domain { name: name.into(), train: TokenStore::Owned(tokenizer.encode(&train)?), valid: TokenStore::Owned(tokenizer.encode(&valid)?) })
    }

    /// Open a folder written by `recast data prepare`; its tokenizer must be `tokenizer`.
    pub fn from_shards(name: &str, dir: &Path, tokenizer: &Tokenizer) -> Result<Self, DataError> {
        let (meta, train, valid) = open_domain(dir)?;
        // The same tokenizer is the same content, whatever path names it; folders from
        // before the digest was recorded are matched by the path they recorded.
        let same = match &meta.tokenizer_sha256 {
            Some(identity) => identity == tokenizer.identity(),
            None => meta.tokenizer == tokenizer.spec(),
        };
        if !same || meta.vocab_size != tokenizer.vocab_size() {
            return Err(DataError::Invalid {
                path: dir.join("meta.json"),
                reason: format!("prepared with tokenizer {:?} (vocabulary {}), but the run uses {:?} (vocabulary {})", meta.tokenizer, meta.vocab_size, tokenizer.spec(), tokenizer.vocab_size()),
            });
        }
        Ok(Domain { name: name.into(), train, valid })
    }

    /// Check both splits can hold a sequence of `seq + 1` tokens.
    pub fn check_length(&self, seq: usize) -> Result<(), DataError> {
        for (split, store) in [("train", &self.train), ("validation", &self.valid)] {
            if store.len() < seq + 1 {
                return Err(DataError::Domain { domain: self.name.clone(), reason: format!("its {split} split has {} tokens, fewer than one sequence of {}", store.len(), seq + 1) });
            }
        }
        Ok(())
    }
}

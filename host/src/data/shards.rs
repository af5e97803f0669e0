//! Token shards on disk: per domain a folder with `train.bin` and `valid.bin` (u32
//! little-endian token ids) and `meta.json`. Read memory-mapped.

use std::fs::File;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::Digest;

use super::error::DataError;

/// `meta.json` of a domain folder.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShardMeta {
    pub domain: String,
    /// The tokenizer spec (`byte` or a tokenizer.json path).
    pub tokenizer: String,
    pub vocab_size: usize,
    /// `byte`, or the sha256 of the `tokenizer.json`: a run naming the same file by
    /// another path is the same tokenizer. Absent in folders from before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_sha256: Option<String>,
    /// sha256 of `train.bin` and `valid.bin`, so results made from this folder can tell
    /// when it was prepared again. Absent in folders from before they were recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub train_sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid_sha256: Option<String>,
    pub train_tokens: u64,
    pub valid_tokens: u64,
    /// The files the tokens came from.
    pub sources: Vec<String>,
}

/// Token ids of one split, in memory or memory-mapped.
pub enum TokenStore {
    Owned(Vec<u32>),
    Mapped { path: PathBuf, map: memmap2::Mmap },
}

impl TokenStore {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        match self {
            TokenStore::Owned(v) => v.len(),
            TokenStore::Mapped { map, .. } => map.len() / 4,
        }
    }

    /// Whether there are no tokens.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Append tokens `start .. start + n` to `out`.
    pub fn copy_window(&self, start: usize, n: usize, out: &mut Vec<u32>) {
        match self {
            TokenStore::Owned(v) => out.extend_from_slice(&v[start..start + n]),
            TokenStore::Mapped { map, .. } => out.extend(map[start * 4..(start + n) * 4].chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        }
    }

    /// Map `path` (a file of u32 LE ids).
    pub fn open(path: &Path) -> Result<Self, DataError> {
        let file = File::open(path).map_err(|source| DataError::Io { path: path.into(), source })?;
        // SAFETY: read-only map of a file Recast wrote; see model::checkpoint::read.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| DataError::Io { path: path.into(), source })?;
        if map.len() % 4 != 0 {
            return Err(DataError::Invalid { path: path.into(), reason: format!("{} bytes is not a whole number of u32 token ids (truncated?)", map.len()) });
        }
        Ok(TokenStore::Mapped { path: path.into(), map })
    }
}

/// Write one split; returns the sha256 of the bytes written.
pub fn write_split(path: &Path, tokens: &[u32]) -> Result<String, DataError> {
    let bytes: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
    crate::atomic_file::write(path, &bytes).map_err(|source| DataError::Io { path: path.into(), source })?;
    Ok(hex::encode(sha2::Sha256::digest(&bytes)))
}

/// A digest of the domain folder `dir`'s content: its `meta.json` (which records the
/// splits' sha256) or, for folders from before that, the split files themselves.
/// Re-preparing a folder changes it; moving it does not.
pub fn content_digest(dir: &Path) -> Result<String, DataError> {
    let meta_path = dir.join("meta.json");
    let meta = read_meta(dir)?;
    let mut hasher = sha2::Sha256::new();
    hasher.update(&meta);
    let parsed: ShardMeta = serde_json::from_slice(&meta).map_err(|e| DataError::Invalid { path: meta_path, reason: e.to_string() })?;
    if parsed.train_sha256.is_none() || parsed.valid_sha256.is_none() {
        for name in ["train.bin", "valid.bin"] {
            let path = dir.join(name);
            let mut file = File::open(&path).map_err(|source| DataError::Io { path: path.clone(), source })?;
            std::io::copy(&mut file, &mut hasher).map_err(|source| DataError::Io { path, source })?;
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The bytes of `dir/meta.json`; a folder without one is named as never prepared.
fn read_meta(dir: &Path) -> Result<Vec<u8>, DataError> {
    let meta_path = dir.join("meta.json");
    std::fs::read(&meta_path).map_err(|source| match source.kind() {
        std::io::ErrorKind::NotFound => DataError::Invalid {
            path: dir.to_path_buf(),
            reason: "not a data folder made by `recast data prepare` (it has no meta.json); make one with `recast data prepare --out DIR --domain NAME=FILES`".into(),
        },
        _ => DataError::Io { path: meta_path, source },
    })
}

/// Read a domain folder's metadata and map its splits.
pub fn open_domain(dir: &Path) -> Result<(ShardMeta, TokenStore, TokenStore), DataError> {
    let meta_path = dir.join("meta.json");
    let text = read_meta(dir)?;
    let meta: ShardMeta = serde_json::from_slice(&text).map_err(|e| DataError::Invalid { path: meta_path.clone(), reason: e.to_string() })?;
    let train = TokenStore::open(&dir.join("train.bin"))?;
    let valid = TokenStore::open(&dir.join("valid.bin"))?;
    for (store, want, name) in [(&train, meta.train_tokens, "train.bin"), (&valid, meta.valid_tokens, "valid.bin")] {
        if store.len() as u64 != want {
            return Err(DataError::Invalid { path: dir.join(name), reason: format!("holds {} tokens, meta.json says {want}", store.len()) });
        }
    }
    Ok((meta, train, valid))
}

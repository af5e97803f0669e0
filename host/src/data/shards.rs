//! Token shards on disk: per domain a folder with `train.bin` and `valid.bin`
//! (little-endian token ids: u16 when the vocabulary fits, half the bytes of u32) and
//! `meta.json`, which says the width. Read memory-mapped.

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
    /// Bytes per token id in the split files: 2 (u16, vocabularies up to 65,536) or 4
    /// (u32; folders from before the width was recorded).
    #[serde(default = "u32_width")]
    pub token_bytes: usize,
    /// The files the tokens came from.
    pub sources: Vec<String>,
}

fn u32_width() -> usize {
    4
}

/// The narrowest token width (2 or 4 bytes) that holds every id below `vocab_size`.
pub fn token_bytes_for(vocab_size: usize) -> usize {
    if vocab_size <= 1 << 16 { 2 } else { 4 }
}

/// Token ids of one split, in memory or memory-mapped.
pub enum TokenStore {
    Owned(Vec<u32>),
    /// A split file of `width`-byte little-endian ids.
    Mapped {
        path: PathBuf,
        map: memmap2::Mmap,
        width: usize,
    },
}

impl TokenStore {
    /// Number of tokens.
    pub fn len(&self) -> usize {
        match self {
            TokenStore::Owned(v) => v.len(),
            TokenStore::Mapped { map, width, .. } => map.len() / width,
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
            TokenStore::Mapped { map, width: 2, .. } => out.extend(map[start * 2..(start + n) * 2].chunks_exact(2).map(|b| u32::from(u16::from_le_bytes([b[0], b[1]])))),
            TokenStore::Mapped { map, .. } => out.extend(map[start * 4..(start + n) * 4].chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        }
    }

    /// Map `path` (a file of `width`-byte LE ids, 2 or 4).
    pub fn open(path: &Path, width: usize) -> Result<Self, DataError> {
        if width != 2 && width != 4 {
            return Err(DataError::Invalid { path: path.into(), reason: format!("token_bytes {width} in meta.json: expected 2 (u16) or 4 (u32)") });
        }
        let file = File::open(path).map_err(|source| DataError::Io { path: path.into(), source })?;
        // SAFETY: read-only map of a file Recast wrote; see model::checkpoint::read.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| DataError::Io { path: path.into(), source })?;
        if map.len() % width != 0 {
            return Err(DataError::Invalid { path: path.into(), reason: format!("{} bytes is not a whole number of {width}-byte token ids (truncated?)", map.len()) });
        }
        Ok(TokenStore::Mapped { path: path.into(), map, width })
    }
}

/// Write one split with `width`-byte ids (2 or 4; every id must fit); returns the
/// sha256 of the bytes written.
pub fn write_split(path: &Path, tokens: &[u32], width: usize) -> Result<String, DataError> {
    let bytes: Vec<u8> = match width {
        2 => tokens
            .iter()
            .map(|&t| u16::try_from(t).map(u16::to_le_bytes))
            .collect::<Result<Vec<_>, _>>()
            .map(|b| b.concat())
            .map_err(|_| DataError::Invalid { path: path.into(), reason: "a token id does not fit in u16".into() })?,
        _ => tokens.iter().flat_map(|t| t.to_le_bytes()).collect(),
    };
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
    let train = TokenStore::open(&dir.join("train.bin"), meta.token_bytes)?;
    let valid = TokenStore::open(&dir.join("valid.bin"), meta.token_bytes)?;
    for (store, want, name) in [(&train, meta.train_tokens, "train.bin"), (&valid, meta.valid_tokens, "valid.bin")] {
        if store.len() as u64 != want {
            return Err(DataError::Invalid { path: dir.join(name), reason: format!("holds {} tokens, meta.json says {want}", store.len()) });
        }
    }
    Ok((meta, train, valid))
}

#[cfg(test)]
mod tests {
    use super::{open_domain, token_bytes_for, write_split};

    /// Folders from before the width was recorded hold u32 ids and still open; new ones
    /// hold u16 when the vocabulary fits, and an id that does not fit is refused.
    #[test]
    fn u16_and_legacy_u32_splits_read_back_the_same_ids() {
        assert_eq!((token_bytes_for(256), token_bytes_for(65_536), token_bytes_for(65_537)), (2, 2, 4));
        let ids: Vec<u32> = vec![0, 1, 255, 65_535, 7];
        for width in [2, 4] {
            let dir = tempfile::tempdir().expect("tempdir");
            write_split(&dir.path().join("train.bin"), &ids, width).expect("train");
            write_split(&dir.path().join("valid.bin"), &ids[..2], width).expect("valid");
            let width_field = if width == 2 { ",\"token_bytes\":2" } else { "" };
            let meta = format!("{{\"domain\":\"d\",\"tokenizer\":\"x\",\"vocab_size\":65536,\"train_tokens\":5,\"valid_tokens\":2{width_field},\"sources\":[]}}");
            std::fs::write(dir.path().join("meta.json"), meta).expect("meta");
            let (_, train, valid) = open_domain(dir.path()).expect("open");
            let mut got = Vec::new();
            train.copy_window(0, 5, &mut got);
            valid.copy_window(0, 2, &mut got);
            assert_eq!(got, [ids.clone(), ids[..2].to_vec()].concat(), "width {width}");
            assert_eq!(std::fs::metadata(dir.path().join("train.bin")).expect("size").len(), 5 * width as u64);
        }
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(write_split(&dir.path().join("x.bin"), &[70_000], 2).is_err());
    }
}

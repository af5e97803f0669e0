//! `recast data prepare`: text files, JSONL files (one field per line) and directories
//! of source files into per-domain token shards with a train/validation split.

use std::path::{Path, PathBuf};

use super::error::DataError;
use super::shards::{ShardMeta, write_split};
use super::tokenizer::Tokenizer;

/// One domain's inputs.
pub struct DomainInput {
    pub name: String,
    pub paths: Vec<PathBuf>,
}

/// What was written for one domain.
pub struct PreparedDomain {
    pub dir: PathBuf,
    pub meta: ShardMeta,
}

/// Tokenise every domain into `out/<name>/`; the last `valid_fraction` of each domain's
/// tokens form its validation split. `jsonl_field` is the field read from `.jsonl` lines.
pub fn prepare(inputs: &[DomainInput], tokenizer: &Tokenizer, jsonl_field: &str, valid_fraction: f64, out: &Path) -> Result<Vec<PreparedDomain>, DataError> {
    if !(0.0..1.0).contains(&valid_fraction) || valid_fraction == 0.0 {
        return Err(DataError::Invalid { path: out.into(), reason: format!("validation fraction {valid_fraction} must be in (0, 1)") });
    }
    let separator = tokenizer.encode("\n\n")?;
    let mut prepared = Vec::new();
    for input in inputs {
        let mut files = Vec::new();
        for path in &input.paths {
            collect_files(path, &mut files)?;
        }
        let mut tokens = Vec::new();
        for file in &files {
            for doc in documents(file, jsonl_field)? {
                tokens.extend(tokenizer.encode(&doc)?);
                tokens.extend_from_slice(&separator);
            }
        }
        let valid_len = ((tokens.len() as f64) * valid_fraction).ceil() as usize;
        if tokens.len() < 2 || valid_len == 0 || valid_len >= tokens.len() {
            return Err(DataError::Domain { domain: input.name.clone(), reason: format!("{} tokens from {} files are too few to split into train and validation", tokens.len(), files.len()) });
        }
        let (train, valid) = tokens.split_at(tokens.len() - valid_len);
        let dir = out.join(&input.name);
        std::fs::create_dir_all(&dir).map_err(|source| DataError::Io { path: dir.clone(), source })?;
        let train_sha256 = write_split(&dir.join("train.bin"), train)?;
        let valid_sha256 = write_split(&dir.join("valid.bin"), valid)?;
        let meta = ShardMeta {
            domain: input.name.clone(),
            tokenizer: tokenizer.spec(),
            vocab_size: tokenizer.vocab_size(),
            tokenizer_sha256: Some(tokenizer.identity().to_string()),
            train_sha256: Some(train_sha256),
            valid_sha256: Some(valid_sha256),
            train_tokens: train.len() as u64,
            valid_tokens: valid.len() as u64,
            sources: files.iter().map(|f| f.display().to_string()).collect(),
        };
        let json = serde_json::to_string_pretty(&meta).map_err(|e| DataError::Invalid { path: dir.clone(), reason: e.to_string() })?;
        crate::atomic_file::write(&dir.join("meta.json"), json.as_bytes()).map_err(|source| DataError::Io { path: dir.join("meta.json"), source })?;
        prepared.push(PreparedDomain { dir, meta });
    }
    Ok(prepared)
}

/// Files under `path` in name order; hidden entries and build folders are skipped.
fn collect_files(path: &Path, out: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let meta = std::fs::metadata(path).map_err(|source| DataError::Io { path: path.into(), source })?;
    if meta.is_file() {
        out.push(path.into());
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path).map_err(|source| DataError::Io { path: path.into(), source })?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for entry in entries {
        let name = entry.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with('.') || name == "target" || name == "node_modules" {
            continue;
        }
        if entry.is_dir() {
            collect_files(&entry, out)?;
        } else if std::fs::read(&entry).map(|b| std::str::from_utf8(&b).is_ok()).unwrap_or(false) {
            out.push(entry);
        }
    }
    Ok(())
}

/// The documents of one file: each line's `field` for `.jsonl`, else the whole text.
fn documents(path: &Path, field: &str) -> Result<Vec<String>, DataError> {
    let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.into(), source })?;
    if path.extension().is_some_and(|e| e == "jsonl") {
        let mut docs = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let value: serde_json::Value = serde_json::from_str(line).map_err(|e| DataError::Invalid { path: path.into(), reason: format!("line {}: not JSON: {e}", i + 1) })?;
            match value.get(field).and_then(|v| v.as_str()) {
                Some(s) => docs.push(s.to_string()),
                None => return Err(DataError::Invalid { path: path.into(), reason: format!("line {}: no string field {field:?}", i + 1) }),
            }
        }
        return Ok(docs);
    }
    Ok(vec![text])
}

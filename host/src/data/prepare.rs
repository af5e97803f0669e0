//! `recast data prepare`: text files, JSONL files (plain, gzipped or zstd; one field
//! per line), Parquet files (one text column) and directories of them into per-domain
//! token shards. The documents of
//! a domain are shuffled with a seed, and whole documents sampled that way form its
//! validation split, so held-out text is a sample of the domain, not the tail of the
//! last file in name order.

use std::path::{Path, PathBuf};

use super::documents::{InputFormat, read_documents};
use super::error::DataError;
use super::shards::{ShardMeta, token_bytes_for, write_split};
use super::tokenizer::Tokenizer;
use crate::model::init::SplitMix64;

/// One domain's inputs.
pub struct DomainInput {
    pub name: String,
    pub paths: Vec<PathBuf>,
}

/// How documents are read and split.
pub struct PrepareOptions {
    /// The field of each JSONL line that holds the text.
    pub jsonl_field: String,
    /// The share of each domain's tokens held out for validation, in whole documents.
    pub valid_fraction: f64,
    /// Inside folders, only files whose name matches one of these (all when empty);
    /// files named on the command line are always read.
    pub include: Vec<glob::Pattern>,
    /// Seeds the shuffle of the documents.
    pub seed: u64,
}

/// What was written for one domain.
pub struct PreparedDomain {
    pub dir: PathBuf,
    pub meta: ShardMeta,
    /// Files inside the folders that were not read: not UTF-8 text (binary files).
    pub skipped: Vec<PathBuf>,
    /// Documents in the validation split, of all documents.
    pub valid_documents: usize,
    pub documents: usize,
}

/// What `prepare` reports as it goes, for a progress bar; every method defaults to
/// nothing.
pub trait PrepareObserver {
    /// A domain starts: `files` files to read, `bytes` bytes in all.
    fn on_domain(&mut self, _domain: &str, _files: usize, _bytes: u64) {}
    /// One more file of the current domain was read and tokenised (`bytes` long).
    fn on_file(&mut self, _file: &Path, _bytes: u64) {}
}

/// Shows nothing.
impl PrepareObserver for () {}

/// Tokenise every domain into `out/<name>/`.
pub fn prepare(inputs: &[DomainInput], tokenizer: &Tokenizer, options: &PrepareOptions, out: &Path, observer: &mut dyn PrepareObserver) -> Result<Vec<PreparedDomain>, DataError> {
    let valid_fraction = options.valid_fraction;
    if !(0.0..1.0).contains(&valid_fraction) || valid_fraction == 0.0 {
        return Err(DataError::Invalid { path: out.into(), reason: format!("validation fraction {valid_fraction} must be in (0, 1)") });
    }
    let separator = tokenizer.encode("\n\n")?;
    let mut prepared = Vec::new();
    for input in inputs {
        let (mut files, mut skipped) = (Vec::new(), Vec::new());
        for path in &input.paths {
            collect_files(path, &options.include, true, &mut files, &mut skipped)?;
        }
        let sizes: Vec<u64> = files.iter().map(|f| std::fs::metadata(f).map_or(0, |m| m.len())).collect();
        observer.on_domain(&input.name, files.len(), sizes.iter().sum());
        let mut docs: Vec<Vec<u32>> = Vec::new();
        for (file, bytes) in files.iter().zip(&sizes) {
            for doc in read_documents(file, &options.jsonl_field)? {
                let mut tokens = tokenizer.encode(&doc)?;
                tokens.extend_from_slice(&separator);
                docs.push(tokens);
            }
            observer.on_file(file, *bytes);
        }
        let (total, documents) = (docs.iter().map(Vec::len).sum::<usize>(), docs.len());
        let (train, valid, valid_documents) = split(docs, valid_fraction, options.seed);
        if train.is_empty() || valid.is_empty() {
            return Err(DataError::Domain { domain: input.name.clone(), reason: format!("{total} tokens from {} files are too few to split into train and validation", files.len()) });
        }
        let dir = out.join(&input.name);
        std::fs::create_dir_all(&dir).map_err(|source| DataError::Io { path: dir.clone(), source })?;
        let token_bytes = token_bytes_for(tokenizer.vocab_size());
        let train_sha256 = write_split(&dir.join("train.bin"), &train, token_bytes)?;
        let valid_sha256 = write_split(&dir.join("valid.bin"), &valid, token_bytes)?;
        let meta = ShardMeta {
            domain: input.name.clone(),
            tokenizer: tokenizer.spec(),
            vocab_size: tokenizer.vocab_size(),
            tokenizer_sha256: Some(tokenizer.identity().to_string()),
            train_sha256: Some(train_sha256),
            valid_sha256: Some(valid_sha256),
            train_tokens: train.len() as u64,
            valid_tokens: valid.len() as u64,
            token_bytes,
            sources: files.iter().map(|f| f.display().to_string()).collect(),
        };
        let json = serde_json::to_string_pretty(&meta).map_err(|e| DataError::Invalid { path: dir.clone(), reason: e.to_string() })?;
        crate::atomic_file::write(&dir.join("meta.json"), json.as_bytes()).map_err(|source| DataError::Io { path: dir.join("meta.json"), source })?;
        prepared.push(PreparedDomain { dir, meta, skipped, valid_documents, documents });
    }
    Ok(prepared)
}

/// The train and validation tokens of `docs`: the documents in an order shuffled with
/// `seed`, the first ones into validation until they hold `valid_fraction` of the
/// tokens (at least one document, never all). A domain of one document is split inside
/// it (its tail is held out). Returns the number of validation documents too.
fn split(mut docs: Vec<Vec<u32>>, valid_fraction: f64, seed: u64) -> (Vec<u32>, Vec<u32>, usize) {
    let total: usize = docs.iter().map(Vec::len).sum();
    let wanted = ((total as f64) * valid_fraction).ceil() as usize;
    if docs.len() < 2 {
        let all = docs.concat();
        let cut = all.len().saturating_sub(wanted.max(1));
        return (all[..cut].to_vec(), all[cut..].to_vec(), usize::from(!all.is_empty()));
    }
    let mut rng = SplitMix64(seed);
    for i in (1..docs.len()).rev() {
        let j = (rng.next_u64() % (i as u64 + 1)) as usize;
        docs.swap(i, j);
    }
    let (mut valid, mut taken) = (Vec::new(), 0);
    while taken < docs.len() - 1 && (valid.is_empty() || valid.len() < wanted) {
        valid.extend_from_slice(&docs[taken]);
        taken += 1;
    }
    (docs[taken..].concat(), valid, taken)
}

/// Files under `path` in name order; hidden entries and build folders are skipped, and
/// inside folders only files matching `include` (when given) that are UTF-8 text or a
/// container format (compressed JSONL, Parquet). A file named directly (`named`) is always taken.
fn collect_files(path: &Path, include: &[glob::Pattern], named: bool, out: &mut Vec<PathBuf>, skipped: &mut Vec<PathBuf>) -> Result<(), DataError> {
    let meta = std::fs::metadata(path).map_err(|source| DataError::Io { path: path.into(), source })?;
    if meta.is_file() {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if !named && !include.is_empty() && !include.iter().any(|p| p.matches(&name)) {
            return Ok(());
        }
        if named || InputFormat::of(path).is_container() || std::fs::read(path).map(|b| std::str::from_utf8(&b).is_ok()).unwrap_or(false) {
            out.push(path.into());
        } else {
            skipped.push(path.into());
        }
        return Ok(());
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(path).map_err(|source| DataError::Io { path: path.into(), source })?.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for entry in entries {
        let name = entry.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if name.starts_with('.') || name == "target" || name == "node_modules" {
            continue;
        }
        collect_files(&entry, include, false, out, skipped)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::split;

    #[test]
    fn validation_takes_whole_shuffled_documents_and_never_all() {
        let docs: Vec<Vec<u32>> = (0..20).map(|d| vec![d; 10]).collect();
        let (train, valid, n) = split(docs.clone(), 0.1, 7);
        assert_eq!((train.len(), valid.len(), n), (180, 20, 2));
        // Whole documents, not the last ones in order, and the same for the same seed.
        assert!(valid.chunks(10).all(|c| c.iter().all(|&t| t == c[0])));
        assert_ne!(valid, [vec![18u32; 10], vec![19; 10]].concat());
        assert_eq!(split(docs.clone(), 0.1, 7).1, valid);
        assert_ne!(split(docs, 0.1, 8).1, valid);
        // One document: its tail.
        let (train, valid, _) = split(vec![(0..10).collect()], 0.3, 1);
        assert_eq!((train, valid), ((0..7).collect(), vec![7, 8, 9]));
    }
}

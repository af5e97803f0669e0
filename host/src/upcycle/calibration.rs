//! Calibration text for routers initialised from centroids (METHODS.md §3.8): one token
//! set per expert (`hidden-centroid`, `embed-centroid`) or per expert group
//! (`group-centroid`), in the order `recast upcycle --calibration` gives them. Each set
//! is a built-in domain, a plain text file or a folder `recast data prepare` wrote,
//! tokenised with the source model's tokenizer.
//!
//! ```
//! use recast::data::tokenizer::Tokenizer;
//! use recast::upcycle::calibration::{CalibrationText, load_sets};
//! let texts = [CalibrationText::parse("builtin:arithmetic").unwrap(), CalibrationText::parse("builtin:prose").unwrap()];
//! let sets = load_sets(&texts, &Tokenizer::Byte, 1000, 0).unwrap();
//! assert_eq!((sets.len(), sets[0].tokens.len(), sets[1].label.as_str()), (2, 1000, "builtin:prose"));
//! ```

use std::path::{Path, PathBuf};

use crate::data::builtin::BUILTIN_DOMAINS;
use crate::data::domain::Domain;
use crate::data::error::DataError;
use crate::data::tokenizer::Tokenizer;

/// Where one calibration set's text comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum CalibrationText {
    /// A built-in generated domain (`builtin:arithmetic`, `builtin:code`, `builtin:prose`).
    Builtin(String),
    /// A UTF-8 text file, tokenised whole.
    TextFile(PathBuf),
    /// A domain folder written by `recast data prepare` (its training split), whose
    /// tokenizer must be the source model's.
    Prepared(PathBuf),
}

/// The tokens of one calibration set, named as it was given (for errors and records).
#[derive(Clone, Debug)]
pub struct CalibrationSet {
    pub label: String,
    pub tokens: Vec<u32>,
}

/// Why calibration text could not be read.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error("calibration {spec:?}: {reason}")]
    Spec { spec: String, reason: String },
    #[error("calibration {label}: {source}")]
    Data { label: String, source: DataError },
    #[error("calibration {label}: no tokens (the text is empty)")]
    Empty { label: String },
}

impl CalibrationText {
    /// `builtin:NAME`, or the path of a text file or of a prepared domain folder.
    pub fn parse(spec: &str) -> Result<Self, CalibrationError> {
        let err = |reason: String| CalibrationError::Spec { spec: spec.to_string(), reason };
        if let Some(name) = spec.strip_prefix("builtin:") {
            if !BUILTIN_DOMAINS.contains(&name) {
                return Err(err(format!("no built-in domain {name:?} (built-in domains: {})", BUILTIN_DOMAINS.join(", "))));
            }
            return Ok(CalibrationText::Builtin(name.to_string()));
        }
        let path = Path::new(spec);
        if path.is_dir() {
            if !path.join("meta.json").is_file() {
                return Err(err("a folder, but not a prepared domain (no meta.json; give a folder `recast data prepare` wrote, e.g. OUT/NAME)".into()));
            }
            return Ok(CalibrationText::Prepared(path.to_path_buf()));
        }
        if path.is_file() {
            return Ok(CalibrationText::TextFile(path.to_path_buf()));
        }
        let hint = if BUILTIN_DOMAINS.contains(&spec) { format!("; for the built-in domain write builtin:{spec}") } else { String::new() };
        Err(err(format!("no such file or folder{hint} (give a text file, a prepared domain folder or builtin:NAME)")))
    }

    /// How the set is named in messages: as it was given.
    pub fn label(&self) -> String {
        match self {
            CalibrationText::Builtin(name) => format!("builtin:{name}"),
            CalibrationText::TextFile(path) | CalibrationText::Prepared(path) => path.display().to_string(),
        }
    }

    /// The first `max_tokens` tokens of this text; `seed` seeds a built-in domain.
    fn tokens(&self, tokenizer: &Tokenizer, max_tokens: usize, seed: u64) -> Result<Vec<u32>, DataError> {
        let mut tokens = match self {
            CalibrationText::Builtin(name) => first_tokens(&Domain::builtin(name, name, tokenizer, seed)?, max_tokens),
            CalibrationText::Prepared(dir) => first_tokens(&Domain::from_shards(&self.label(), dir, tokenizer)?, max_tokens),
            CalibrationText::TextFile(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| DataError::Io { path: path.clone(), source })?;
                tokenizer.encode(&text)?
            }
        };
        tokens.truncate(max_tokens);
        Ok(tokens)
    }
}

fn first_tokens(domain: &Domain, max_tokens: usize) -> Vec<u32> {
    let mut out = Vec::new();
    domain.train.copy_window(0, domain.train.len().min(max_tokens), &mut out);
    out
}

/// Tokenise every text with `tokenizer`, keeping at most `max_tokens` of each (the
/// first ones); built-in domains are generated with `seed`.
pub fn load_sets(texts: &[CalibrationText], tokenizer: &Tokenizer, max_tokens: usize, seed: u64) -> Result<Vec<CalibrationSet>, CalibrationError> {
    texts
        .iter()
        .map(|text| {
            let label = text.label();
            let tokens = text.tokens(tokenizer, max_tokens, seed).map_err(|source| CalibrationError::Data { label: label.clone(), source })?;
            if tokens.is_empty() {
                return Err(CalibrationError::Empty { label });
            }
            Ok(CalibrationSet { label, tokens })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_name_builtins_files_and_prepared_folders_and_say_what_is_wrong() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("math.txt");
        std::fs::write(&file, "1 + 1 = 2\n").expect("write");
        assert_eq!(CalibrationText::parse("builtin:code").expect("builtin"), CalibrationText::Builtin("code".into()));
        assert_eq!(CalibrationText::parse(file.to_str().expect("utf-8")).expect("file"), CalibrationText::TextFile(file.clone()));
        let prose = CalibrationText::parse("prose").expect_err("a bare name is not a path");
        assert!(prose.to_string().contains("builtin:prose"), "{prose}");
        let folder = CalibrationText::parse(dir.path().to_str().expect("utf-8")).expect_err("not prepared");
        assert!(folder.to_string().contains("no meta.json"), "{folder}");
        assert!(CalibrationText::parse("builtin:poetry").expect_err("unknown").to_string().contains("arithmetic, code, prose"));
        let sets = load_sets(&[CalibrationText::TextFile(file)], &Tokenizer::Byte, 5, 0).expect("tokens");
        assert_eq!(sets[0].tokens, b"1 + 1".iter().map(|&b| u32::from(b)).collect::<Vec<_>>());
    }
}

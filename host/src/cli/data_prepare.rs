//! `recast data prepare`: text, JSONL and source folders into token shards per domain.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::data::prepare::{DomainInput, prepare};
use crate::data::tokenizer::Tokenizer;

/// `NAME=PATH[,PATH...]`.
pub(super) fn parse_domain(arg: &str) -> Result<(String, Vec<PathBuf>), String> {
    let (name, paths) = arg.split_once('=').ok_or_else(|| format!("{arg:?}: expected NAME=PATH[,PATH...]"))?;
    if name.is_empty() || paths.is_empty() {
        return Err(format!("{arg:?}: expected NAME=PATH[,PATH...]"));
    }
    Ok((name.to_string(), paths.split(',').map(PathBuf::from).collect()))
}

pub(super) fn run(out: &Path, domains: &[(String, Vec<PathBuf>)], tokenizer: &str, jsonl_field: &str, valid_fraction: f64) -> anyhow::Result<()> {
    if domains.is_empty() {
        bail!("give at least one --domain NAME=PATH");
    }
    for (name, paths) in domains {
        for p in paths {
            if !p.exists() {
                bail!("domain {name:?}: {} does not exist", p.display());
            }
        }
    }
    let tokenizer = Tokenizer::from_spec(tokenizer)?;
    let inputs: Vec<DomainInput> = domains.iter().map(|(name, paths)| DomainInput { name: name.clone(), paths: paths.clone() }).collect();
    let prepared = prepare(&inputs, &tokenizer, jsonl_field, valid_fraction, out).with_context(|| format!("cannot prepare data into {}", out.display()))?;
    for p in prepared {
        println!("{}: {} train + {} validation tokens from {} files -> {}", p.meta.domain, p.meta.train_tokens, p.meta.valid_tokens, p.meta.sources.len(), p.dir.display());
    }
    Ok(())
}

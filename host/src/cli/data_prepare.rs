//! `recast data prepare`: text, JSONL and source folders into token shards per domain.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use crate::data::prepare::{DomainInput, PrepareObserver, PrepareOptions, prepare};
use crate::data::tokenizer::Tokenizer;

/// `NAME=PATH[,PATH...]`.
pub(super) fn parse_domain(arg: &str) -> Result<(String, Vec<PathBuf>), String> {
    let (name, paths) = arg.split_once('=').ok_or_else(|| format!("{arg:?}: expected NAME=PATH[,PATH...]"))?;
    if name.is_empty() || paths.is_empty() {
        return Err(format!("{arg:?}: expected NAME=PATH[,PATH...]"));
    }
    Ok((name.to_string(), paths.split(',').map(PathBuf::from).collect()))
}

/// `recast data prepare`'s arguments.
pub(super) struct PrepareArgs<'a> {
    pub tokenizer: &'a str,
    pub jsonl_field: &'a str,
    pub valid_fraction: f64,
    pub include: &'a [String],
    pub seed: u64,
}

pub(super) fn run(out: &Path, domains: &[(String, Vec<PathBuf>)], args: &PrepareArgs<'_>) -> anyhow::Result<()> {
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
    let tokenizer = Tokenizer::from_spec(args.tokenizer)?;
    let include = args.include.iter().map(|g| glob::Pattern::new(g).with_context(|| format!("--include {g:?}"))).collect::<anyhow::Result<Vec<_>>>()?;
    let options = PrepareOptions { jsonl_field: args.jsonl_field.to_string(), valid_fraction: args.valid_fraction, include, seed: args.seed };
    let inputs: Vec<DomainInput> = domains.iter().map(|(name, paths)| DomainInput { name: name.clone(), paths: paths.clone() }).collect();
    let mut bar = ProgressBar::default();
    let prepared = prepare(&inputs, &tokenizer, &options, out, &mut bar).with_context(|| format!("cannot prepare data into {}", out.display()))?;
    if let Some(bar) = bar.bar.take() {
        bar.finish_and_clear();
    }
    for p in prepared {
        println!(
            "{}: {} train + {} validation tokens ({} of {} documents) from {} files -> {}",
            p.meta.domain,
            p.meta.train_tokens,
            p.meta.valid_tokens,
            p.valid_documents,
            p.documents,
            p.meta.sources.len(),
            p.dir.display()
        );
        if let Some(first) = p.skipped.first() {
            let more = if p.skipped.len() > 1 { format!(", {} more", p.skipped.len() - 1) } else { String::new() };
            println!("{}: skipped {} files that are not UTF-8 text ({}{more})", p.meta.domain, p.skipped.len(), first.display());
        }
    }
    Ok(())
}

/// One bar per domain over the bytes of its files, with the rate and an ETA.
#[derive(Default)]
struct ProgressBar {
    bar: Option<indicatif::ProgressBar>,
    files: usize,
    done: usize,
}

impl PrepareObserver for ProgressBar {
    fn on_domain(&mut self, domain: &str, files: usize, bytes: u64) {
        if let Some(finished) = self.bar.take() {
            finished.finish_and_clear();
        }
        let bar = indicatif::ProgressBar::new(bytes);
        let style = indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {bytes}/{total_bytes} {msg} ({bytes_per_sec}, ETA {eta})").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        bar.set_style(style.progress_chars("=> "));
        bar.set_prefix(domain.to_string());
        bar.set_message(format!("0/{files} files"));
        (self.bar, self.files, self.done) = (Some(bar), files, 0);
    }

    fn on_file(&mut self, _file: &Path, bytes: u64) {
        self.done += 1;
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
            bar.set_message(format!("{}/{} files", self.done, self.files));
        }
    }
}

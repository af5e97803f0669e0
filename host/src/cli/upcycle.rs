//! `recast upcycle`: run an init-scheme plugin on dense (or MoE) checkpoints and write
//! the upcycled model, with a progress bar over the plan's ops.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use indicatif::{ProgressBar, ProgressStyle};

use super::plugin_source::scheme_file;
use crate::plugins::{InitSchemePlugin, PluginEngine, PluginKind, PluginLimits};
use crate::upcycle::{Format, Provenance, UpcycleOptions, upcycle};

/// Parsed `recast upcycle` arguments.
pub(super) struct UpcycleArgs {
    pub sources: Vec<PathBuf>,
    pub scheme: String,
    pub params: Option<String>,
    pub out: PathBuf,
    pub format: Format,
    pub dtype: Option<candle_core::DType>,
    pub max_shard_bytes: u64,
    pub seed: u64,
}

pub(super) fn run(args: UpcycleArgs) -> anyhow::Result<()> {
    if args.sources.is_empty() {
        bail!("give at least one --source checkpoint directory");
    }
    let params = match &args.params {
        Some(p) if Path::new(p).is_file() => std::fs::read_to_string(p).with_context(|| format!("cannot read --params file {p}"))?,
        Some(p) => p.clone(),
        None => String::new(),
    };
    let file = scheme_file(&args.scheme, PluginKind::InitScheme).with_context(|| format!("--scheme {}", args.scheme))?;
    let engine = PluginEngine::new()?;
    let component = engine.load_file(&file)?;
    if component.kind() != PluginKind::InitScheme {
        bail!("--scheme {}: {} is a {} plugin, not an init-scheme", args.scheme, file.display(), component.kind());
    }
    let mut plugin = InitSchemePlugin::new(&engine, &component, &params, args.seed, PluginLimits::default())?;
    let provenance = Provenance { scheme: plugin.instance().meta().name.clone(), scheme_digest: component.digest().to_hex(), params };
    let options = UpcycleOptions { format: args.format, dtype: args.dtype, max_shard_bytes: args.max_shard_bytes };

    let bar = std::io::stderr().is_terminal().then(|| {
        let bar = ProgressBar::new(0);
        if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} [{bar:30}] op {pos}/{len}  eta {eta}") {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(format!("upcycling with {}", provenance.scheme));
        bar
    });
    let report = upcycle(&args.sources, &mut plugin, &provenance, &args.out, &options, |done, total| {
        if let Some(bar) = &bar {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        }
    })
    .with_context(|| format!("cannot upcycle into {}", args.out.display()))?;
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let moe = report.config.moe.as_ref().map_or("dense".to_string(), |m| format!("{} experts top-{}, {} MoE layers", m.num_experts, m.top_k, m.moe_layers.iter().filter(|x| **x).count()));
    println!("{} ({moe}): {} tensors, {:.1} MB in {} ops", report.config.architecture.hf_class(), report.tensors, report.bytes as f64 / 1e6, report.ops);
    println!("wrote {}", report.out.display());
    Ok(())
}

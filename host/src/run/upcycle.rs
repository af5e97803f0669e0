//! Upcycling with an init scheme named the way a run config names plugins (a
//! reference scheme, a `.wasm` or a crate folder): what `recast upcycle` and a recipe's
//! upcycle step both run.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

use super::plugin_source::scheme_bytes;
use crate::data::tokenizer::Tokenizer;
use crate::plugins::{InitSchemePlugin, PluginEngine, PluginKind, PluginLimits};
use crate::upcycle::calibration::{CalibrationSet, CalibrationText, load_sets};
use crate::upcycle::{Format, Provenance, UpcycleOptions, UpcycleReport, upcycle};

/// One upcycling: sources, scheme and where the result goes.
pub struct UpcycleJob {
    /// Source checkpoint folders (one for most schemes, several for fusing).
    pub sources: Vec<PathBuf>,
    /// A reference scheme's name, or a plugin `.wasm` or crate folder.
    pub scheme: String,
    /// The scheme's parameters: TOML text or the path of a TOML file.
    pub params: Option<String>,
    /// Output folder (must not exist or be empty).
    pub out: PathBuf,
    /// Recast's own format or a Hugging Face family.
    pub format: Format,
    /// Element type of the output (`None`: the source's).
    pub dtype: Option<candle_core::DType>,
    /// Largest output shard, in bytes.
    pub max_shard_bytes: u64,
    /// Seed handed to the scheme (and to built-in calibration domains).
    pub seed: u64,
    /// Calibration text per expert or expert group, in order (`builtin:NAME`, a text
    /// file or a prepared domain folder), for routers initialised from centroids.
    pub calibration: Vec<String>,
    /// Tokens of each calibration text used (the first ones).
    pub calibration_tokens: usize,
}

/// Default for [`UpcycleJob::calibration_tokens`]: enough for a stable mean, a few
/// forward passes of the source.
pub const CALIBRATION_TOKENS: usize = 8192;

/// Events of an upcycling, for a progress display; every method does nothing by
/// default.
pub trait UpcycleObserver {
    /// The scheme `scheme` (its own name) is about to run.
    fn on_upcycle_start(&mut self, scheme: &str) {
        let _ = scheme;
    }
    /// `done` of the plan's `total` ops are executed.
    fn on_upcycle_progress(&mut self, done: usize, total: usize) {
        let _ = (done, total);
    }
    /// The output is written.
    fn on_upcycle_done(&mut self, report: &UpcycleReport) {
        let _ = report;
    }
}

/// Shows nothing.
impl UpcycleObserver for () {}

/// Build or load the scheme, run it on the sources and write the output, so a program
/// upcycles exactly as `recast upcycle` does.
pub fn run_upcycle(job: &UpcycleJob, observer: &mut dyn UpcycleObserver) -> anyhow::Result<UpcycleReport> {
    if job.sources.is_empty() {
        bail!("give at least one --source checkpoint directory");
    }
    let params = match &job.params {
        Some(p) if Path::new(p).is_file() => std::fs::read_to_string(p).with_context(|| format!("cannot read --params file {p}"))?,
        Some(p) => p.clone(),
        None => String::new(),
    };
    let calibration = calibration_sets(job)?;
    let file = scheme_bytes(&job.scheme, PluginKind::InitScheme).with_context(|| format!("--scheme {}", job.scheme))?;
    let engine = PluginEngine::new()?;
    let component = engine.load_bytes(&file.label, &file.bytes)?;
    if component.kind() != PluginKind::InitScheme {
        bail!("--scheme {}: {} is a {} plugin, not an init-scheme", job.scheme, file.label, component.kind());
    }
    let mut plugin = InitSchemePlugin::new(&engine, &component, &params, job.seed, PluginLimits::planning())?;
    let provenance = Provenance { scheme: plugin.instance().meta().name.clone(), scheme_digest: component.digest().to_hex(), params };
    let options = UpcycleOptions { format: job.format, dtype: job.dtype, max_shard_bytes: job.max_shard_bytes, calibration };
    observer.on_upcycle_start(&provenance.scheme);
    let report = upcycle(&job.sources, &mut plugin, &provenance, &job.out, &options, |done, total| observer.on_upcycle_progress(done, total))
        .with_context(|| format!("cannot upcycle into {}", job.out.display()))?;
    // The tokenizer and generation files of the first source (specialists share one).
    let copied = crate::model::checkpoint::companions::copy_companions(&job.sources[0], &job.out).with_context(|| format!("cannot copy the tokenizer files into {}", job.out.display()))?;
    tracing::info!("copied {} from {}", if copied.is_empty() { "no tokenizer files".to_string() } else { copied.join(", ") }, job.sources[0].display());
    observer.on_upcycle_done(&report);
    Ok(report)
}

/// The job's calibration texts as tokens of the first source's tokenizer: its
/// `tokenizer.json` when it has one, else the byte tokenizer (as `recast train` picks).
fn calibration_sets(job: &UpcycleJob) -> anyhow::Result<Vec<CalibrationSet>> {
    if job.calibration.is_empty() {
        return Ok(Vec::new());
    }
    if job.calibration_tokens == 0 {
        bail!("--calibration-tokens must be at least 1");
    }
    let texts = job.calibration.iter().map(|spec| CalibrationText::parse(spec)).collect::<Result<Vec<_>, _>>()?;
    let file = job.sources[0].join("tokenizer.json");
    let spec = if file.is_file() { file.display().to_string() } else { "byte".to_string() };
    let tokenizer = Tokenizer::from_spec(&spec).with_context(|| format!("the tokenizer of {} for the calibration text", job.sources[0].display()))?;
    Ok(load_sets(&texts, &tokenizer, job.calibration_tokens, job.seed)?)
}

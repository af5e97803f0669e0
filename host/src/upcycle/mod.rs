//! Upcycling: an init-scheme plugin turns source checkpoints into a plan of tensor ops,
//! the host checks it against the target model and executes it on real weights,
//! streaming, into a checkpoint that `recast forward` and `recast train` load as is.
//!
//! The steps: [`source`] describes the sources to the plugin; [`target`] derives the
//! target's config and checks the plan writes exactly its tensors; [`centroids`]
//! computes, from the [`calibration`] text, the rows of routers initialised from
//! centroids; [`executor`] runs the ops; [`writer`] places each finished tensor in its
//! shard.

pub mod calibration;
pub mod centroids;
pub mod executor;
pub mod source;
pub mod target;
pub mod writer;

use std::path::{Path, PathBuf};

use candle_core::DType;
use serde_json::{Value, json};

use crate::contract::InitPlanner;
use crate::model::checkpoint::CheckpointReader;
use crate::model::checkpoint::names::to_hf;
use crate::model::config::ModelConfig;
use crate::model::error::ModelError;
use crate::model::hf_config;

pub use crate::model::checkpoint::Format;

/// How to write the result, and the calibration text routers may be initialised from.
#[derive(Clone, Debug)]
pub struct UpcycleOptions {
    pub format: Format,
    /// Element type of the output; `None`: that of the first source's embedding.
    pub dtype: Option<DType>,
    pub max_shard_bytes: u64,
    /// One token set per expert (or expert group) for routers initialised from
    /// centroids, in expert order; empty when the plan needs none.
    pub calibration: Vec<calibration::CalibrationSet>,
}

/// What was written.
pub struct UpcycleReport {
    pub out: PathBuf,
    pub config: ModelConfig,
    pub tensors: usize,
    pub bytes: u64,
    pub ops: usize,
}

/// Why upcycling failed.
#[derive(Debug, thiserror::Error)]
pub enum UpcycleError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    /// The planner (an init-scheme plugin) failed; its own error says how.
    Planner(Box<dyn std::error::Error + Send + Sync>),
    #[error("the plan of {scheme} cannot be used: {reason}")]
    Plan { scheme: String, reason: String },
    #[error(transparent)]
    Centroids(#[from] centroids::CentroidError),
    #[error(transparent)]
    Execute(#[from] executor::ExecuteError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} exists and is not empty; choose a new --out")]
    OutExists { path: PathBuf },
}

/// Who made the output, recorded in it: the scheme and the sources.
pub struct Provenance {
    pub scheme: String,
    pub scheme_digest: String,
    pub params: String,
}

/// Run the scheme on `sources` and write the result to `out`. `progress(done, total)` is
/// called after every op.
pub fn upcycle(
    sources: &[PathBuf],
    plugin: &mut impl InitPlanner,
    provenance: &Provenance,
    out: &Path,
    options: &UpcycleOptions,
    progress: impl FnMut(usize, usize),
) -> Result<UpcycleReport, UpcycleError> {
    if out.exists() && std::fs::read_dir(out).map(|mut d| d.next().is_some()).unwrap_or(true) {
        return Err(UpcycleError::OutExists { path: out.to_path_buf() });
    }
    let readers = sources.iter().map(|s| CheckpointReader::open(s)).collect::<Result<Vec<_>, _>>()?;
    std::thread::scope(|scope| {
        // Hash the sources on another core while the plan runs.
        let hashing = scope.spawn(|| readers.iter().map(source::fingerprint).collect::<Vec<_>>());
        let report = run(&readers, plugin, provenance, out, options, progress)?;
        let hashes = hashing.join().unwrap_or_default();
        write_provenance(out, sources, &hashes, provenance, &options.calibration, &report)?;
        Ok(report)
    })
}

fn run(
    readers: &[CheckpointReader],
    plugin: &mut impl InitPlanner,
    provenance: &Provenance,
    out: &Path,
    options: &UpcycleOptions,
    mut progress: impl FnMut(usize, usize),
) -> Result<UpcycleReport, UpcycleError> {
    let plan_err = |reason: String| UpcycleError::Plan { scheme: provenance.scheme.clone(), reason };
    let described: Vec<_> = readers.iter().enumerate().map(|(i, r)| source::describe(i as u32, r)).collect();
    let (plan, planned) = plugin.plan(&described).map_err(|e| UpcycleError::Planner(Box::new(e)))?;
    let config = target::target_config(&plan.target, &readers[0].config, &planned).map_err(plan_err)?;
    target::check_planned(&config, &planned).map_err(plan_err)?;
    // Tensors are made one at a time, but each whole, with a working copy or two.
    let largest = planned.values().map(|dims| dims.iter().map(|&d| d as u128).product::<u128>()).max().unwrap_or(0);
    crate::memory::ensure_fits("the plan's largest tensor", largest * 4 * 3).map_err(plan_err)?;
    let config_json = match options.format {
        Format::Hf => {
            hf_config::to_json(&config).map_err(|reason| plan_err(format!("the result cannot be written as Hugging Face {}: {reason}; use --format recast", config.architecture.hf_class())))?
        }
        Format::Recast => hf_config::recast_json(&config, serde_json::Map::new()).map_err(plan_err)?,
    };
    // Before anything is written: a plan that asks for centroids without its calibration
    // text fails here.
    let centroids = centroids::compute(&plan, &readers[0], &options.calibration)?;
    if centroids.is_empty() && !options.calibration.is_empty() {
        tracing::warn!("{} calibration texts were given, but no router of the plan of {} is initialised from centroids; they were not used", options.calibration.len(), provenance.scheme);
    }
    let dtype = options.dtype.unwrap_or_else(|| readers[0].tensors().get("model.embed_tokens.weight").map_or(DType::F32, |l| l.dtype));
    let stored = |name: &str| match options.format {
        Format::Hf => to_hf(config.architecture, name),
        Format::Recast => name.to_string(),
    };

    let tmp = out.with_file_name(format!(".{}.tmp-{}", out.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), std::process::id()));
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| UpcycleError::Io { path, source }
    };
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let layout: Vec<(String, Vec<usize>)> = executor::flush_order(&plan, &planned).into_iter().map(|n| (stored(&n), planned[&n].iter().map(|&d| d as usize).collect())).collect();
    let total = plan.ops.len();
    let written = (|| -> Result<_, UpcycleError> {
        let mut writer = writer::ShardWriter::create(&tmp, &layout, dtype, options.max_shard_bytes)?;
        executor::execute(&plan, readers, &centroids, &mut writer, stored, |done| progress(done, total))?;
        let bytes = writer.total_bytes;
        let weight_map = writer.weight_map.clone();
        Ok((bytes, weight_map, writer.finish()?))
    })();
    let (bytes, weight_map, shards) = match written {
        Ok(w) => w,
        Err(e) => {
            // Nothing half-written survives a failed run.
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    if shards.len() > 1 {
        let index = json!({ "metadata": { "total_size": bytes }, "weight_map": weight_map });
        write_json(&tmp.join("model.safetensors.index.json"), &index)?;
    }
    let mut config_json = config_json;
    if let Some(obj) = config_json.as_object_mut() {
        obj.insert(
            "dtype".into(),
            json!(match dtype {
                DType::BF16 => "bfloat16",
                DType::F16 => "float16",
                _ => "float32",
            }),
        );
    }
    write_json(&tmp.join("config.json"), &config_json)?;
    if out.exists() {
        std::fs::remove_dir(out).map_err(io(out))?;
    }
    std::fs::rename(&tmp, out).map_err(io(out))?;
    Ok(UpcycleReport { out: out.to_path_buf(), config, tensors: layout.len(), bytes, ops: total })
}

fn write_json(path: &Path, value: &Value) -> Result<(), UpcycleError> {
    let text = serde_json::to_string_pretty(value).unwrap_or_default() + "\n";
    crate::atomic_file::write(path, text.as_bytes()).map_err(|source| UpcycleError::Io { path: path.to_path_buf(), source })
}

/// `OUT/upcycle.json`: the scheme (name, sha256, params), each source (path, sha256
/// of its config and weight files) and each calibration text (as given, tokens used),
/// so a model says how it was made.
fn write_provenance(
    out: &Path,
    sources: &[PathBuf],
    hashes: &[Result<String, std::io::Error>],
    provenance: &Provenance,
    calibration: &[calibration::CalibrationSet],
    report: &UpcycleReport,
) -> Result<(), UpcycleError> {
    let sources: Vec<Value> = sources
        .iter()
        .zip(hashes.iter().map(Some).chain(std::iter::repeat(None)))
        .map(|(p, h)| {
            let sha = match h {
                Some(Ok(h)) => json!(h),
                Some(Err(e)) => json!(format!("unavailable: {e}")),
                None => Value::Null,
            };
            json!({ "path": p.display().to_string(), "sha256": sha })
        })
        .collect();
    let calibration: Vec<Value> = calibration.iter().map(|c| json!({ "text": c.label, "tokens": c.tokens.len() })).collect();
    let record = json!({
        "scheme": provenance.scheme, "scheme_sha256": provenance.scheme_digest, "params": provenance.params,
        "sources": sources, "calibration": calibration, "architecture": report.config.architecture.hf_class(), "tensors": report.tensors, "bytes": report.bytes, "ops": report.ops,
    });
    write_json(&out.join("upcycle.json"), &record)
}

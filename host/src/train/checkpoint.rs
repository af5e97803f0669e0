//! Training checkpoints: weights, optimizer moments and everything else a bit-exact
//! resume needs (step, plugin digests and states, routing state, data progress, last
//! layer statistics, the config). Written to a temporary folder, fsynced, and renamed
//! into place, so a crash at any moment leaves the previous checkpoint intact. The last
//! N are kept.
//!
//! In a multi-process job every rank writes the tensors it owns (its experts, its
//! ZeRO-1 moments) as its own shard files into the same temporary folder; rank 0 then
//! writes `state.json` and, last, `manifest.json`, which names every shard file with
//! its size and sha256. A checkpoint exists only once every shard and the manifest are
//! fsynced and the folder is renamed; loading reads every shard the manifest names and
//! checks it, so the whole state comes back whatever layout wrote it (resharding).

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

use crate::contract::{LayerStats, RouterSpec};
use crate::model::checkpoint::write_tensors;
use crate::model::config::ModelConfig;

/// Delay between the files of a checkpoint, for tests that kill a run mid-checkpoint.
pub const SLOW_CHECKPOINT_ENV: &str = "RECAST_TEST_SLOW_CHECKPOINT_MS";

/// A plugin's identity and saved state at the checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PluginSnapshot {
    /// `router`, `aux_schedule` or `sampler`.
    pub role: String,
    pub label: String,
    pub digest: String,
    /// `save-state` output, hex.
    pub state: String,
}

/// A shadow router's identity, plugin state and routing state at the checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShadowSnapshot {
    pub plugin: PluginSnapshot,
    pub layers: Vec<LayerRouting>,
}

/// One MoE layer's routing state.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LayerRouting {
    pub layer: usize,
    pub spec: RouterSpec,
    pub selection_bias: Vec<f32>,
}

/// A domain's progress.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DomainProgress {
    pub name: String,
    pub tokens_seen: u64,
    pub train_loss: Option<f32>,
    pub valid_loss: Option<f32>,
}

/// `state.json`: everything but the tensors.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps completed.
    pub step: u64,
    /// The run config's text.
    pub config_toml: String,
    pub model_config: ModelConfig,
    /// `byte`, or the sha256 of the run's `tokenizer.json` (absent in checkpoints from
    /// before it was recorded): a resume with another tokenizer is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_sha256: Option<String>,
    pub plugins: Vec<PluginSnapshot>,
    pub layers: Vec<LayerRouting>,
    pub domains: Vec<DomainProgress>,
    /// Per-layer statistics of the last step (the aux-schedule's next input).
    pub last_stats: Vec<LayerStats>,
    /// The shadow routers (`[[plugins.shadow_router]]`), in config order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadows: Vec<ShadowSnapshot>,
}

/// A checkpoint error, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: corrupt or truncated checkpoint: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("{0}")]
    Model(#[from] crate::model::error::ModelError),
    /// The state to save would not read back; nothing was written.
    #[error("{path}: not written: the training state would not read back ({reason}); the previous checkpoints are kept")]
    Unreadable { path: PathBuf, reason: String },
    /// Another rank of the job could not write its shard; the checkpoint was not made.
    #[error("{path}: not written: {reason}; the previous checkpoints are kept")]
    Incomplete { path: PathBuf, reason: String },
}

/// The ranks that write one checkpoint together. Each call is a collective: every rank
/// makes it at the same point.
pub trait Writers {
    /// This rank.
    fn rank(&self) -> usize;
    /// Ranks in the job.
    fn world(&self) -> usize;
    /// Whether every rank's `ok` is true (after all ranks got here).
    fn all_ok(&self, ok: bool) -> bool;
}

/// A job of one process.
pub struct OneWriter;

impl Writers for OneWriter {
    fn rank(&self) -> usize {
        0
    }

    fn world(&self) -> usize {
        1
    }

    fn all_ok(&self, ok: bool) -> bool {
        ok
    }
}

/// `manifest.json`: every shard file of a checkpoint, written last.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Format version (1).
    pub format: u32,
    /// The step the checkpoint holds.
    pub step: u64,
    /// Ranks of the job that wrote it.
    pub world: usize,
    /// The shard files.
    pub files: Vec<ShardFile>,
}

/// One shard file of a checkpoint.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ShardFile {
    /// File name inside the checkpoint folder.
    pub name: String,
    /// The rank that wrote it.
    pub rank: usize,
    /// `model` (weights) or `optimizer` (moments).
    pub kind: String,
    /// Its size in bytes.
    pub bytes: u64,
    /// Its sha256, hex.
    pub sha256: String,
}

/// The shard file names of `rank`: `model.safetensors` and `optimizer.safetensors` for
/// rank 0 (a one-process checkpoint looks as it always did), suffixed otherwise.
fn shard_names(rank: usize) -> (String, String) {
    match rank {
        0 => ("model.safetensors".into(), "optimizer.safetensors".into()),
        r => (format!("model.rank-{r:05}.safetensors"), format!("optimizer.rank-{r:05}.safetensors")),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// The folder holding a run's checkpoints.
pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("checkpoints")
}

/// The folder of the checkpoint of `step` in `run_dir`.
pub fn step_dir(run_dir: &Path, step: u64) -> PathBuf {
    checkpoints_dir(run_dir).join(step_name(step))
}

/// The step of a checkpoint folder, from its name (`step-NNNNNNNN`).
pub fn step_of(dir: &Path) -> Option<u64> {
    dir.file_name()?.to_str()?.strip_prefix("step-")?.parse().ok()
}

fn step_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Write a checkpoint of step `state.step` in a one-process job; keep the newest
/// `keep`. Returns its folder.
pub fn save(run_dir: &Path, params: &BTreeMap<String, Tensor>, moments: &BTreeMap<String, (Tensor, Tensor)>, state: &TrainState, keep: usize) -> Result<PathBuf, CheckpointError> {
    save_shard(run_dir, params, moments, state, keep, &OneWriter)
}

/// Write this rank's shard (`params` and `moments`: the tensors it owns) of the
/// checkpoint of step `state.step`, together with the other ranks of `writers`; rank 0
/// also writes the state and the manifest, renames the folder into place and keeps the
/// newest `keep`. Every rank returns the folder, or the reason none was made.
pub fn save_shard(
    run_dir: &Path,
    params: &BTreeMap<String, Tensor>,
    moments: &BTreeMap<String, (Tensor, Tensor)>,
    state: &TrainState,
    keep: usize,
    writers: &dyn Writers,
) -> Result<PathBuf, CheckpointError> {
    let root = checkpoints_dir(run_dir);
    let name = step_name(state.step);
    let tmp = root.join(format!(".{name}.tmp"));
    let dir = root.join(&name);
    let lead = writers.rank() == 0;
    // Rank 0 checks the state and prepares the folder; nobody writes before it is there.
    let prepared = if lead { prepare(&root, &tmp, state) } else { Ok(Vec::new()) };
    let incomplete = |reason: &str| CheckpointError::Incomplete { path: dir.clone(), reason: reason.into() };
    if !writers.all_ok(prepared.is_ok()) {
        return Err(prepared.err().unwrap_or_else(|| incomplete("rank 0 could not prepare the checkpoint folder")));
    }
    let json = prepared?;
    let pause = std::env::var(SLOW_CHECKPOINT_ENV).ok().and_then(|v| v.parse::<u64>().ok()).map(std::time::Duration::from_millis);
    let written = write_shard(&tmp, writers.rank(), params, moments, pause);
    if !writers.all_ok(written.is_ok()) {
        return Err(written.err().unwrap_or_else(|| incomplete("another rank could not write its shard")));
    }
    let finished = if lead { finish(&root, &tmp, &dir, &json, state.step, writers.world(), keep) } else { Ok(()) };
    if !writers.all_ok(finished.is_ok()) {
        return Err(finished.err().unwrap_or_else(|| incomplete("rank 0 could not finish the checkpoint")));
    }
    Ok(dir)
}

/// Rank 0's first part: the state as JSON (checked to read back) and an empty
/// temporary folder.
fn prepare(root: &Path, tmp: &Path, state: &TrainState) -> Result<Vec<u8>, CheckpointError> {
    let name = step_name(state.step);
    // Write-then-read: a checkpoint that its own reader would refuse (a non-finite bias
    // becomes JSON `null`) is never written, so every kept checkpoint resumes.
    let json = serde_json::to_vec_pretty(state).map_err(|e| CheckpointError::Corrupt { path: root.join(&name).join("state.json"), reason: e.to_string() })?;
    if let Err(e) = serde_json::from_slice::<TrainState>(&json) {
        return Err(CheckpointError::Unreadable { path: root.join(&name).join("state.json"), reason: e.to_string() });
    }
    std::fs::create_dir_all(root).map_err(io(root))?;
    if tmp.exists() {
        std::fs::remove_dir_all(tmp).map_err(io(tmp))?;
    }
    std::fs::create_dir_all(tmp).map_err(io(tmp))?;
    Ok(json)
}

/// One rank's shard files (fsynced); rank 0 writes its files even when empty.
fn write_shard(tmp: &Path, rank: usize, params: &BTreeMap<String, Tensor>, moments: &BTreeMap<String, (Tensor, Tensor)>, pause: Option<std::time::Duration>) -> Result<(), CheckpointError> {
    let (model, optimizer) = shard_names(rank);
    if rank == 0 || !params.is_empty() {
        let weights: Vec<(&str, &Tensor)> = params.iter().map(|(n, t)| (n.as_str(), t)).collect();
        write_tensors(&tmp.join(model), &weights, DType::F32)?;
    }
    if let Some(p) = pause {
        std::thread::sleep(p);
    }
    if rank == 0 || !moments.is_empty() {
        let names: Vec<(String, &Tensor)> = moments.iter().flat_map(|(n, (m, v))| [(format!("m.{n}"), m), (format!("v.{n}"), v)]).collect();
        let refs: Vec<(&str, &Tensor)> = names.iter().map(|(n, t)| (n.as_str(), *t)).collect();
        write_tensors(&tmp.join(optimizer), &refs, DType::F32)?;
    }
    if let Some(p) = pause {
        std::thread::sleep(p);
    }
    Ok(())
}

/// Rank 0's last part, once every shard is on disk: the state, the manifest (last),
/// the rename into place and the pruning.
fn finish(root: &Path, tmp: &Path, dir: &Path, json: &[u8], step: u64, world: usize, keep: usize) -> Result<(), CheckpointError> {
    crate::atomic_file::write(&tmp.join("state.json"), json).map_err(io(tmp))?;
    let mut files = Vec::new();
    for rank in 0..world {
        let (model, optimizer) = shard_names(rank);
        for (file, kind) in [(model, "model"), (optimizer, "optimizer")] {
            let path = tmp.join(&file);
            if !path.exists() {
                continue;
            }
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            files.push(ShardFile { name: file, rank, kind: kind.into(), bytes: bytes.len() as u64, sha256: hex::encode(Sha256::digest(&bytes)) });
        }
    }
    let manifest = Manifest { format: 1, step, world, files };
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| CheckpointError::Corrupt { path: tmp.join("manifest.json"), reason: e.to_string() })?;
    crate::atomic_file::write(&tmp.join("manifest.json"), &text).map_err(io(tmp))?;

    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::rename(tmp, dir).map_err(io(dir))?;
    File::open(root).and_then(|f| f.sync_all()).map_err(io(root))?;
    prune(root, keep)
}

/// Completed checkpoints, oldest first.
pub fn list(run_dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let root = checkpoints_dir(run_dir);
    if !root.exists() {
        return Ok(vec![]);
    }
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .map_err(io(&root))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step-")))
        .collect();
    dirs.sort();
    Ok(dirs)
}

fn prune(root: &Path, keep: usize) -> Result<(), CheckpointError> {
    let dirs = list(root.parent().unwrap_or(root))?;
    for old in dirs.iter().take(dirs.len().saturating_sub(keep.max(1))) {
        std::fs::remove_dir_all(old).map_err(io(old))?;
    }
    Ok(())
}

/// A loaded checkpoint.
pub struct Loaded {
    pub dir: PathBuf,
    pub params: BTreeMap<String, Tensor>,
    pub moments: BTreeMap<String, (Tensor, Tensor)>,
    pub state: TrainState,
    /// The file each weight came from (for errors about it).
    pub origin: BTreeMap<String, PathBuf>,
}

/// Read the checkpoint in `dir` (every shard its manifest names, or the two files of
/// a checkpoint written before manifests); any damage is an error naming the file.
pub fn load(dir: &Path) -> Result<Loaded, CheckpointError> {
    let state_path = dir.join("state.json");
    let bytes = std::fs::read(&state_path).map_err(io(&state_path))?;
    let state: TrainState = serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt { path: state_path.clone(), reason: e.to_string() })?;
    let (mut params, mut raw, mut origin, mut moments_file) = (BTreeMap::new(), BTreeMap::new(), BTreeMap::new(), BTreeMap::new());
    for (file, kind) in shard_files(dir, state.step)? {
        let path = dir.join(&file.name);
        let bytes = std::fs::read(&path).map_err(io(&path))?;
        if let Some(expected) = &file.sha256 {
            let got = hex::encode(Sha256::digest(&bytes));
            if &got != expected {
                return Err(CheckpointError::Corrupt { path, reason: format!("sha256 {got}, the manifest says {expected} (damaged or replaced)") });
            }
        }
        for (name, t) in parse_tensors(&path, &bytes)? {
            let (into, names) = if kind == "model" { (&mut params, &mut origin) } else { (&mut raw, &mut moments_file) };
            if into.insert(name.clone(), t).is_some() {
                return Err(CheckpointError::Corrupt { path, reason: format!("tensor `{name}` is in more than one shard") });
            }
            names.insert(name, path.clone());
        }
    }
    let mut moments = BTreeMap::new();
    for name in params.keys() {
        let at = |prefix: &str| moments_file.get(&format!("{prefix}.{name}")).cloned().unwrap_or_else(|| dir.join("optimizer.safetensors"));
        let corrupt = |path: PathBuf, reason: String| CheckpointError::Corrupt { path, reason };
        let weight = params[name].dims();
        let get = |prefix: &str| {
            let moment = raw.get(&format!("{prefix}.{name}")).cloned().ok_or_else(|| corrupt(at(prefix), format!("no moment `{prefix}.{name}`")))?;
            if moment.dims() != weight {
                return Err(corrupt(at(prefix), format!("moment `{prefix}.{name}` has shape {:?}, its weight {weight:?}", moment.dims())));
            }
            Ok(moment)
        };
        moments.insert(name.clone(), (get("m")?, get("v")?));
    }
    Ok(Loaded { dir: dir.to_path_buf(), params, moments, state, origin })
}

/// A shard file to read: its name and, from the manifest, its sha256 (none for a
/// checkpoint written before manifests).
struct ToRead {
    name: String,
    sha256: Option<String>,
}

/// The shard files of the checkpoint in `dir` of step `step`, checked against its
/// manifest: plain file names, sizes as recorded.
fn shard_files(dir: &Path, step: u64) -> Result<Vec<(ToRead, String)>, CheckpointError> {
    let path = dir.join("manifest.json");
    if !path.exists() {
        return Ok(vec![(ToRead { name: "model.safetensors".into(), sha256: None }, "model".into()), (ToRead { name: "optimizer.safetensors".into(), sha256: None }, "optimizer".into())]);
    }
    let text = std::fs::read(&path).map_err(io(&path))?;
    let corrupt = |reason: String| CheckpointError::Corrupt { path: path.clone(), reason };
    let manifest: Manifest = serde_json::from_slice(&text).map_err(|e| corrupt(e.to_string()))?;
    if manifest.format != 1 {
        return Err(corrupt(format!("format {} (this recast reads format 1)", manifest.format)));
    }
    if manifest.step != step {
        return Err(corrupt(format!("step {}, but state.json is step {step}", manifest.step)));
    }
    let mut files = Vec::new();
    for f in manifest.files {
        let plain = Path::new(&f.name).file_name().is_some_and(|n| n == f.name.as_str()) && f.name.ends_with(".safetensors");
        if !plain || !matches!(f.kind.as_str(), "model" | "optimizer") {
            return Err(corrupt(format!("shard `{}` of kind `{}`: not a shard file of this checkpoint", f.name, f.kind)));
        }
        let on_disk = std::fs::metadata(dir.join(&f.name)).map_err(io(&dir.join(&f.name)))?.len();
        if on_disk != f.bytes {
            return Err(CheckpointError::Corrupt { path: dir.join(&f.name), reason: format!("{on_disk} bytes, the manifest says {} (truncated or replaced)", f.bytes) });
        }
        files.push((ToRead { name: f.name, sha256: Some(f.sha256) }, f.kind));
    }
    Ok(files)
}

/// The tensors of the safetensors file `path` whose content is `bytes` (all f32).
fn parse_tensors(path: &Path, bytes: &[u8]) -> Result<BTreeMap<String, Tensor>, CheckpointError> {
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| CheckpointError::Corrupt { path: path.into(), reason: e.to_string() })?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(CheckpointError::Corrupt { path: path.into(), reason: format!("tensor `{name}` is {:?}, not F32", view.dtype()) });
        }
        let t = Tensor::from_raw_buffer(view.data(), DType::F32, view.shape(), &Device::Cpu).map_err(|e| CheckpointError::Corrupt { path: path.into(), reason: e.to_string() })?;
        out.insert(name, t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: u64) -> TrainState {
        let model_config = crate::distributed::comm_plan::mixtral_8x7b();
        TrainState { step, config_toml: String::new(), model_config, tokenizer_sha256: None, plugins: vec![], layers: vec![], domains: vec![], last_stats: vec![], shadows: vec![] }
    }

    /// The manifest names every shard with its digest; a shard changed after the fact is
    /// refused naming the file.
    #[test]
    fn a_checkpoint_reads_back_through_its_manifest_and_a_damaged_shard_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let w = Tensor::new(&[1f32, 2.0, 3.0], &Device::Cpu).expect("tensor");
        let params = BTreeMap::from([("w".to_string(), w.clone())]);
        let moments = BTreeMap::from([("w".to_string(), (w.clone(), w.clone()))]);
        let saved = save(dir.path(), &params, &moments, &state(3), 2).expect("save");
        let manifest: Manifest = serde_json::from_slice(&std::fs::read(saved.join("manifest.json")).expect("manifest")).expect("json");
        assert_eq!((manifest.step, manifest.world, manifest.files.len()), (3, 1, 2));
        let loaded = load(&saved).expect("load");
        assert_eq!(loaded.params["w"].to_vec1::<f32>().expect("values"), [1.0, 2.0, 3.0]);
        assert_eq!(loaded.origin["w"], saved.join("model.safetensors"));

        let file = saved.join("model.safetensors");
        let mut bytes = std::fs::read(&file).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x40;
        std::fs::write(&file, bytes).expect("write");
        let Err(e) = load(&saved) else { panic!("a damaged shard loaded") };
        let message = e.to_string();
        assert!(message.contains("model.safetensors") && message.contains("sha256"), "{message}");
    }
}

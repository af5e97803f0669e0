//! Training checkpoints: weights, optimizer moments and everything else a bit-exact
//! resume needs (step, plugin digests and states, routing state, data progress, last
//! layer statistics, the config). Written to a temporary folder, fsynced, and renamed
//! into place, so a crash at any moment leaves the previous checkpoint intact. The last
//! N are kept.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};

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
    pub plugins: Vec<PluginSnapshot>,
    pub layers: Vec<LayerRouting>,
    pub domains: Vec<DomainProgress>,
    /// Per-layer statistics of the last step (the aux-schedule's next input).
    pub last_stats: Vec<LayerStats>,
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

fn step_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Write a checkpoint of step `state.step`; keep the newest `keep`. Returns its folder.
pub fn save(run_dir: &Path, params: &BTreeMap<String, Tensor>, moments: &BTreeMap<String, (Tensor, Tensor)>, state: &TrainState, keep: usize) -> Result<PathBuf, CheckpointError> {
    let root = checkpoints_dir(run_dir);
    let name = step_name(state.step);
    // Write-then-read: a checkpoint that its own reader would refuse (a non-finite bias
    // becomes JSON `null`) is never written, so every kept checkpoint resumes.
    let json = serde_json::to_vec_pretty(state).map_err(|e| CheckpointError::Corrupt { path: root.join(&name).join("state.json"), reason: e.to_string() })?;
    if let Err(e) = serde_json::from_slice::<TrainState>(&json) {
        return Err(CheckpointError::Unreadable { path: root.join(&name).join("state.json"), reason: e.to_string() });
    }
    std::fs::create_dir_all(&root).map_err(io(&root))?;
    let tmp = root.join(format!(".{name}.tmp"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
    }
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let pause = std::env::var(SLOW_CHECKPOINT_ENV).ok().and_then(|v| v.parse::<u64>().ok()).map(std::time::Duration::from_millis);

    let weights: Vec<(&str, &Tensor)> = params.iter().map(|(n, t)| (n.as_str(), t)).collect();
    write_tensors(&tmp.join("model.safetensors"), &weights, DType::F32)?;
    if let Some(p) = pause {
        std::thread::sleep(p);
    }
    let names: Vec<(String, &Tensor)> = moments.iter().flat_map(|(n, (m, v))| [(format!("m.{n}"), m), (format!("v.{n}"), v)]).collect();
    let refs: Vec<(&str, &Tensor)> = names.iter().map(|(n, t)| (n.as_str(), *t)).collect();
    write_tensors(&tmp.join("optimizer.safetensors"), &refs, DType::F32)?;
    if let Some(p) = pause {
        std::thread::sleep(p);
    }
    crate::atomic_file::write(&tmp.join("state.json"), &json).map_err(io(&tmp))?;

    let dir = root.join(&name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
    }
    std::fs::rename(&tmp, &dir).map_err(io(&dir))?;
    File::open(&root).and_then(|f| f.sync_all()).map_err(io(&root))?;
    prune(&root, keep)?;
    Ok(dir)
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
}

/// Read the checkpoint in `dir`; any damage is an error naming the file.
pub fn load(dir: &Path) -> Result<Loaded, CheckpointError> {
    let state_path = dir.join("state.json");
    let bytes = std::fs::read(&state_path).map_err(io(&state_path))?;
    let state: TrainState = serde_json::from_slice(&bytes).map_err(|e| CheckpointError::Corrupt { path: state_path.clone(), reason: e.to_string() })?;
    let params = read_tensors(&dir.join("model.safetensors"))?;
    let raw = read_tensors(&dir.join("optimizer.safetensors"))?;
    let mut moments = BTreeMap::new();
    for name in params.keys() {
        let corrupt = |reason: String| CheckpointError::Corrupt { path: dir.join("optimizer.safetensors"), reason };
        let weight = params[name].dims();
        let get = |prefix: &str| {
            let moment = raw.get(&format!("{prefix}.{name}")).cloned().ok_or_else(|| corrupt(format!("no moment `{prefix}.{name}`")))?;
            if moment.dims() != weight {
                return Err(corrupt(format!("moment `{prefix}.{name}` has shape {:?}, its weight {weight:?}", moment.dims())));
            }
            Ok(moment)
        };
        moments.insert(name.clone(), (get("m")?, get("v")?));
    }
    Ok(Loaded { dir: dir.to_path_buf(), params, moments, state })
}

fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>, CheckpointError> {
    let bytes = std::fs::read(path).map_err(io(path))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| CheckpointError::Corrupt { path: path.into(), reason: e.to_string() })?;
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

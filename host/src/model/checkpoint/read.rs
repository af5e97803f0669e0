//! Reading a checkpoint directory.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use safetensors::{Dtype, SafeTensors};

use super::names;
use crate::model::config::ModelConfig;
use crate::model::error::ModelError;
use crate::model::hf_config;
use crate::model::params::ParamStore;

/// A model as found on disk: its shape and its weights, under Recast's tensor names.
pub struct Checkpoint {
    /// The directory it was read from.
    pub dir: PathBuf,
    pub config: ModelConfig,
    pub params: ParamStore,
}

/// Read the checkpoint in `dir`, converting every weight to `dtype`.
pub fn read(dir: &Path, dtype: DType) -> Result<Checkpoint, ModelError> {
    let config_path = dir.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|source| ModelError::Io { path: config_path.clone(), source })?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config { path: config_path.clone(), reason: format!("not valid JSON: {e}") })?;
    let config = hf_config::from_json(&json).map_err(|reason| ModelError::Config { path: config_path.clone(), reason })?;

    let mut params = ParamStore::new();
    for file in weight_files(dir)? {
        read_file(&file, &config, dtype, &mut params)?;
    }
    // Some exporters store the tied head anyway; the embedding is the one to keep.
    if config.tie_word_embeddings {
        params.remove("lm_head.weight");
    }
    Ok(Checkpoint { dir: dir.to_path_buf(), config, params })
}

/// The safetensors files of a checkpoint, from the shard index when there is one.
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|source| ModelError::Io { path: index.clone(), source })?;
        let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config { path: index.clone(), reason: format!("not valid JSON: {e}") })?;
        let map = json.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| ModelError::Config { path: index.clone(), reason: "no `weight_map` object".into() })?;
        let mut files = BTreeMap::new();
        for (name, file) in map {
            let file = file.as_str().ok_or_else(|| ModelError::Config { path: index.clone(), reason: format!("`weight_map.{name}` is not a file name") })?;
            if file.contains('/') || file.contains('\\') || file == ".." {
                return Err(ModelError::BadIndex { path: index.clone(), name: name.clone(), file: file.into(), reason: "is not a plain file name in the checkpoint directory".into() });
            }
            let path = dir.join(file);
            if !path.exists() {
                return Err(ModelError::BadIndex { path: index.clone(), name: name.clone(), file: file.into(), reason: "does not exist".into() });
            }
            files.insert(file.to_string(), path);
        }
        return Ok(files.into_values().collect());
    }
    if single.exists() {
        return Ok(vec![single]);
    }
    Err(ModelError::NoWeights { path: dir.to_path_buf() })
}

fn read_file(path: &Path, config: &ModelConfig, dtype: DType, params: &mut ParamStore) -> Result<(), ModelError> {
    let file = File::open(path).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    // SAFETY: the map is read-only and dropped before this function returns; a
    // checkpoint modified by another process while it is read is outside what any
    // reader can guard against.
    let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ModelError::Io { path: path.to_path_buf(), source })?;
    let tensors = SafeTensors::deserialize(&mmap).map_err(|e| ModelError::Safetensors { path: path.to_path_buf(), reason: e.to_string() })?;
    for (name, view) in tensors.tensors() {
        if name.ends_with("rotary_emb.inv_freq") {
            continue; // a buffer older exporters saved; Recast recomputes it
        }
        let source_dtype = match view.dtype() {
            Dtype::F32 => DType::F32,
            Dtype::F16 => DType::F16,
            Dtype::BF16 => DType::BF16,
            Dtype::F64 => DType::F64,
            other => return Err(ModelError::WrongDtype { path: path.to_path_buf(), name, dtype: format!("{other:?}") }),
        };
        let tensor = Tensor::from_raw_buffer(view.data(), source_dtype, view.shape(), &Device::Cpu)?.to_dtype(dtype)?;
        params.insert(names::from_hf(config.architecture, &name), tensor, Some(path));
    }
    Ok(())
}

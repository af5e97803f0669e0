//! Reading a checkpoint directory: lazily, one tensor at a time from memory-mapped
//! files ([`CheckpointReader`]), or all at once ([`read`]).

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

/// Where one tensor lives.
#[derive(Clone, Debug)]
pub struct TensorLocation {
    /// Index into the reader's files.
    file: usize,
    /// The name in the file.
    stored_name: String,
    pub shape: Vec<usize>,
    pub dtype: DType,
}

/// An open checkpoint whose tensors are read on demand from memory maps; memory holds
/// only the tensors asked for.
pub struct CheckpointReader {
    pub dir: PathBuf,
    pub config: ModelConfig,
    /// The `config.json` as read.
    pub config_json: serde_json::Value,
    files: Vec<(PathBuf, memmap2::Mmap)>,
    tensors: BTreeMap<String, TensorLocation>,
}

impl CheckpointReader {
    /// Open `dir`: parse its config, map its safetensors files and index their tensors.
    pub fn open(dir: &Path) -> Result<Self, ModelError> {
        let config_path = dir.join("config.json");
        let text = std::fs::read_to_string(&config_path).map_err(|source| ModelError::Io { path: config_path.clone(), source })?;
        let config_json: serde_json::Value = serde_json::from_str(&text).map_err(|e| ModelError::Config { path: config_path.clone(), reason: format!("not valid JSON: {e}") })?;
        let config = hf_config::from_json(&config_json).map_err(|reason| ModelError::Config { path: config_path.clone(), reason })?;
        let mut files = Vec::new();
        let mut tensors = BTreeMap::new();
        for path in weight_files(dir)? {
            let file = File::open(&path).map_err(|source| ModelError::Io { path: path.clone(), source })?;
            // SAFETY: the map is read-only; a checkpoint modified by another process
            // while it is read is outside what any reader can guard against.
            let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|source| ModelError::Io { path: path.clone(), source })?;
            let st = SafeTensors::deserialize(&mmap).map_err(|e| ModelError::Safetensors { path: path.clone(), reason: e.to_string() })?;
            for (name, view) in st.tensors() {
                if name.ends_with("rotary_emb.inv_freq") {
                    continue; // a buffer older exporters saved; Recast recomputes it
                }
                let dtype = match view.dtype() {
                    Dtype::F32 => DType::F32,
                    Dtype::F16 => DType::F16,
                    Dtype::BF16 => DType::BF16,
                    Dtype::F64 => DType::F64,
                    other => return Err(ModelError::WrongDtype { path, name, dtype: format!("{other:?}") }),
                };
                if config.tie_word_embeddings && name == "lm_head.weight" {
                    continue; // some exporters store the tied head anyway; the embedding is the one to keep
                }
                let location = TensorLocation { file: files.len(), stored_name: name.clone(), shape: view.shape().to_vec(), dtype };
                tensors.insert(names::from_hf(config.architecture, &name), location);
            }
            files.push((path, mmap));
        }
        Ok(Self { dir: dir.to_path_buf(), config, config_json, files, tensors })
    }

    /// Recast's names of every tensor, with where each lives.
    pub fn tensors(&self) -> &BTreeMap<String, TensorLocation> {
        &self.tensors
    }

    /// The files the weights are in.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }

    /// The file a tensor is in.
    pub fn file_of(&self, name: &str) -> Option<&Path> {
        self.tensors.get(name).map(|l| self.files[l.file].0.as_path())
    }

    /// Load one tensor, converted to `dtype`.
    pub fn load(&self, name: &str, dtype: DType) -> Result<Tensor, ModelError> {
        Ok(self.load_stored(name)?.to_dtype(dtype)?)
    }

    /// Load one tensor in the element type it is stored in. The pages it occupied are
    /// released from this process afterwards, so streaming through a large checkpoint
    /// does not grow the resident set.
    pub fn load_stored(&self, name: &str) -> Result<Tensor, ModelError> {
        let loc = self.tensors.get(name).ok_or_else(|| ModelError::MissingTensor { name: name.to_string(), looked_in: self.dir.display().to_string() })?;
        let (path, mmap) = &self.files[loc.file];
        let st = SafeTensors::deserialize(mmap).map_err(|e| ModelError::Safetensors { path: path.clone(), reason: e.to_string() })?;
        let view = st.tensor(&loc.stored_name).map_err(|e| ModelError::Safetensors { path: path.clone(), reason: e.to_string() })?;
        let tensor = Tensor::from_raw_buffer(view.data(), loc.dtype, view.shape(), &Device::Cpu)?;
        let start = view.data().as_ptr() as usize - mmap.as_ptr() as usize;
        let page = 4096;
        let aligned = start / page * page;
        // SAFETY: a read-only shared file mapping; dropped pages are read again from the
        // file if touched, so no data is lost.
        let _ = unsafe { mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, aligned, start + view.data().len() - aligned) };
        Ok(tensor)
    }

    /// Every tensor in memory.
    pub fn load_all(&self, dtype: DType) -> Result<ParamStore, ModelError> {
        let mut params = ParamStore::new();
        for (name, loc) in &self.tensors {
            params.insert(name.clone(), self.load(name, dtype)?, Some(&self.files[loc.file].0));
        }
        Ok(params)
    }
}

/// Read the checkpoint in `dir`, converting every weight to `dtype`.
pub fn read(dir: &Path, dtype: DType) -> Result<Checkpoint, ModelError> {
    let reader = CheckpointReader::open(dir)?;
    let params = reader.load_all(dtype)?;
    Ok(Checkpoint { dir: dir.to_path_buf(), config: reader.config, params })
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

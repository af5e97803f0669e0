//! Writing a checkpoint directory transformers can load.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;

use candle_core::{DType, Tensor};
use safetensors::{Dtype, View};

use super::names;
use crate::model::config::ModelConfig;
use crate::model::error::ModelError;
use crate::model::hf_config;
use crate::model::params::ParamStore;

/// Which checkpoint layout to write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// Recast's own: any model Recast runs, Recast's tensor names.
    Recast,
    /// Hugging Face Mixtral or Qwen2-MoE (or the dense family), loadable by transformers.
    #[default]
    Hf,
}

/// How to lay the weights out on disk.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// Element type of the written tensors (F32, F16 or BF16).
    pub dtype: DType,
    /// Start a new shard once a file would pass this many bytes; `None` writes one file.
    pub max_shard_bytes: Option<u64>,
    pub format: Format,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self { dtype: DType::F32, max_shard_bytes: None, format: Format::Hf }
    }
}

/// One tensor's bytes, ready for `safetensors::serialize`.
struct Bytes {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl View for &Bytes {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Write `config` and `params` to `dir` (created if missing) in the Hugging Face layout
/// of the config's architecture, or in Recast's own.
pub fn write(dir: &Path, config: &ModelConfig, params: &ParamStore, options: &WriteOptions) -> Result<(), ModelError> {
    let config_json = match options.format {
        Format::Hf => hf_config::to_json(config),
        Format::Recast => hf_config::recast_json(config, serde_json::Map::new()),
    }
    .map_err(|reason| ModelError::Unwritable { what: format!("{} as {}", dir.display(), config.architecture.hf_class()), reason })?;
    let mut config_json = config_json;
    if let Some(obj) = config_json.as_object_mut() {
        obj.insert("dtype".into(), serde_json::json!(dtype_name(options.dtype)?));
    }
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io { path: dir.to_path_buf(), source })?;

    let mut tensors = Vec::with_capacity(params.len());
    for (name, tensor) in params.iter() {
        if config.tie_word_embeddings && name == "lm_head.weight" {
            continue;
        }
        let hf_name = if options.format == Format::Hf { names::to_hf(config.architecture, name) } else { name.clone() };
        tensors.push((hf_name, to_bytes(tensor, options.dtype)?));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));

    let shards = split_into_shards(&tensors, options.max_shard_bytes);
    let metadata: HashMap<String, String> = [("format".to_string(), "pt".to_string())].into();
    let single = dir.join("model.safetensors");
    let index = dir.join("model.safetensors.index.json");
    let mut weight_map = serde_json::Map::new();
    for (i, shard) in shards.iter().enumerate() {
        let file = if shards.len() == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{:05}.safetensors", i + 1, shards.len()) };
        let path = dir.join(&file);
        let bytes = safetensors::serialize(shard.iter().map(|(n, b)| (n.as_str(), *b)), Some(metadata.clone())).map_err(|e| ModelError::Safetensors { path: path.clone(), reason: e.to_string() })?;
        crate::atomic_file::write(&path, &bytes).map_err(|source| ModelError::Io { path: path.clone(), source })?;
        for (name, _) in shard {
            weight_map.insert(name.clone(), serde_json::json!(file));
        }
    }
    // Leave no stale layout behind for a reader to pick up instead.
    let stale = if shards.len() == 1 { &index } else { &single };
    if stale.exists() {
        std::fs::remove_file(stale).map_err(|source| ModelError::Io { path: stale.clone(), source })?;
    }
    if shards.len() > 1 {
        let total: usize = tensors.iter().map(|(_, b)| b.data.len()).sum();
        let json = serde_json::json!({ "metadata": { "total_size": total }, "weight_map": weight_map });
        write_json(&index, &json)?;
    }
    write_json(&dir.join("config.json"), &config_json)
}

/// Write named tensors to one safetensors file (e.g. `recast forward`'s logits).
pub fn write_tensors(path: &Path, tensors: &[(&str, &Tensor)], dtype: DType) -> Result<(), ModelError> {
    let encoded = tensors.iter().map(|(n, t)| Ok((*n, to_bytes(t, dtype)?))).collect::<Result<Vec<_>, ModelError>>()?;
    let bytes = safetensors::serialize(encoded.iter().map(|(n, b)| (*n, b)), None).map_err(|e| ModelError::Safetensors { path: path.to_path_buf(), reason: e.to_string() })?;
    crate::atomic_file::write(path, &bytes).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<(), ModelError> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| ModelError::Unwritable { what: path.display().to_string(), reason: e.to_string() })?;
    text.push('\n');
    crate::atomic_file::write(path, text.as_bytes()).map_err(|source| ModelError::Io { path: path.to_path_buf(), source })
}

fn dtype_name(dtype: DType) -> Result<&'static str, ModelError> {
    match dtype {
        DType::F32 => Ok("float32"),
        DType::F16 => Ok("float16"),
        DType::BF16 => Ok("bfloat16"),
        other => Err(ModelError::Unwritable { what: "weights".into(), reason: format!("dtype {other:?}; write F32, F16 or BF16") }),
    }
}

fn to_bytes(tensor: &Tensor, dtype: DType) -> Result<Bytes, ModelError> {
    if !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return Err(ModelError::Unwritable { what: "weights".into(), reason: format!("dtype {dtype:?}; write F32, F16 or BF16") });
    }
    let data = super::bytes::with_tensor_bytes(&tensor.detach(), dtype, <[u8]>::to_vec)?;
    let st_dtype = match dtype {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        _ => Dtype::BF16,
    };
    Ok(Bytes { dtype: st_dtype, shape: tensor.dims().to_vec(), data })
}

/// Greedy split in name order; a tensor larger than the limit gets a shard of its own.
fn split_into_shards(tensors: &[(String, Bytes)], max: Option<u64>) -> Vec<Vec<(String, &Bytes)>> {
    let mut shards: Vec<Vec<(String, &Bytes)>> = vec![vec![]];
    let mut size = 0u64;
    for (name, bytes) in tensors {
        let n = bytes.data.len() as u64;
        if let Some(max) = max
            && size > 0
            && size + n > max
        {
            shards.push(vec![]);
            size = 0;
        }
        size += n;
        if let Some(last) = shards.last_mut() {
            last.push((name.clone(), bytes));
        }
    }
    shards
}

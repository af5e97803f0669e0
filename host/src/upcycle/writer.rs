//! Safetensors shards written as tensors are produced. The plan fixes every tensor's
//! shape and the order in which tensors are finished, so each shard's header is written
//! first and each tensor's bytes go straight to their offset: memory holds only the
//! tensors still being built, never the model.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};
use serde_json::json;

use crate::model::checkpoint::bytes::with_tensor_bytes;
use crate::model::error::ModelError;

/// Where one tensor goes.
struct Slot {
    shard: usize,
    /// Absolute byte offset in the shard file.
    offset: u64,
    len: u64,
}

/// Shard files being filled.
pub struct ShardWriter {
    dtype: DType,
    files: Vec<(PathBuf, File)>,
    slots: BTreeMap<String, Slot>,
    /// File name of each tensor's shard, by the tensor's stored name.
    pub weight_map: BTreeMap<String, String>,
    /// Bytes of tensor data across all shards.
    pub total_bytes: u64,
}

fn bytes_per(dtype: DType) -> Result<u64, ModelError> {
    match dtype {
        DType::F32 => Ok(4),
        DType::BF16 | DType::F16 => Ok(2),
        other => Err(ModelError::Unwritable { what: "weights".into(), reason: format!("dtype {other:?}; write F32, F16 or BF16") }),
    }
}

fn dtype_tag(dtype: DType) -> &'static str {
    match dtype {
        DType::F32 => "F32",
        DType::F16 => "F16",
        _ => "BF16",
    }
}

impl ShardWriter {
    /// Lay out `tensors` (stored name, shape), in the order they will be written, over
    /// shards of at most `max_shard_bytes` in `dir`, and write every shard's header.
    pub fn create(dir: &Path, tensors: &[(String, Vec<usize>)], dtype: DType, max_shard_bytes: u64) -> Result<Self, ModelError> {
        let width = bytes_per(dtype)?;
        let mut groups: Vec<Vec<(&String, &Vec<usize>, u64)>> = vec![vec![]];
        let mut size = 0u64;
        for (name, shape) in tensors {
            let len = shape.iter().product::<usize>() as u64 * width;
            if size > 0 && size + len > max_shard_bytes {
                groups.push(vec![]);
                size = 0;
            }
            size += len;
            if let Some(g) = groups.last_mut() {
                g.push((name, shape, len));
            }
        }
        let count = groups.len();
        let mut writer = ShardWriter { dtype, files: Vec::new(), slots: BTreeMap::new(), weight_map: BTreeMap::new(), total_bytes: 0 };
        for (i, group) in groups.iter().enumerate() {
            let file_name = if count == 1 { "model.safetensors".to_string() } else { format!("model-{:05}-of-{count:05}.safetensors", i + 1) };
            let path = dir.join(&file_name);
            let mut header = serde_json::Map::new();
            header.insert("__metadata__".into(), json!({ "format": "pt" }));
            let mut at = 0u64;
            for (name, shape, len) in group {
                header.insert((*name).clone(), json!({ "dtype": dtype_tag(dtype), "shape": shape, "data_offsets": [at, at + len] }));
                at += len;
            }
            let mut text = serde_json::to_vec(&serde_json::Value::Object(header)).map_err(|e| ModelError::Unwritable { what: path.display().to_string(), reason: e.to_string() })?;
            text.resize(text.len().next_multiple_of(8), b' ');
            let io = |source| ModelError::Io { path: path.clone(), source };
            let file = File::create(&path).map_err(io)?;
            file.write_all_at(&(text.len() as u64).to_le_bytes(), 0).map_err(io)?;
            file.write_all_at(&text, 8).map_err(io)?;
            let data_start = 8 + text.len() as u64;
            file.set_len(data_start + at).map_err(io)?;
            let mut offset = data_start;
            for (name, _, len) in group {
                writer.slots.insert((*name).clone(), Slot { shard: i, offset, len: *len });
                writer.weight_map.insert((*name).clone(), file_name.clone());
                offset += len;
            }
            writer.total_bytes += at;
            writer.files.push((path, file));
        }
        Ok(writer)
    }

    /// Write the finished tensor `name` to its place.
    pub fn write(&mut self, name: &str, tensor: &Tensor) -> Result<(), ModelError> {
        let slot = self.slots.get(name).ok_or_else(|| ModelError::Unwritable { what: name.into(), reason: "not in the planned layout".into() })?;
        let (path, file) = &self.files[slot.shard];
        with_tensor_bytes(tensor, self.dtype, |bytes| {
            if bytes.len() as u64 != slot.len {
                return Err(ModelError::Unwritable { what: name.into(), reason: format!("{} bytes produced, {} planned", bytes.len(), slot.len) });
            }
            file.write_all_at(bytes, slot.offset).map_err(|source| ModelError::Io { path: path.clone(), source })
        })?
    }

    /// Flush every shard to disk; returns the shard file names.
    pub fn finish(self) -> Result<Vec<String>, ModelError> {
        let mut names = Vec::new();
        for (path, file) in &self.files {
            file.sync_all().map_err(|source| ModelError::Io { path: path.clone(), source })?;
            names.push(path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
        }
        Ok(names)
    }
}

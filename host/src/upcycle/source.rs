//! What an init-scheme plugin sees of a source checkpoint, and its fingerprint.

use std::io::Read;

use sha2::{Digest, Sha256};

use crate::contract::{ModelShape, SourceModel, TensorInfo};
use crate::model::checkpoint::CheckpointReader;

/// The plugin's view of source `index`: architecture, shape and every tensor (Recast's
/// names, Hugging Face layouts).
pub fn describe(index: u32, reader: &CheckpointReader) -> SourceModel {
    let c = &reader.config;
    SourceModel {
        index,
        architecture: c.architecture.hf_model_type().to_string(),
        shape: ModelShape {
            layers: c.num_layers as u32,
            hidden: c.hidden_size as u32,
            intermediate: c.intermediate_size as u32,
            heads: c.num_heads as u32,
            kv_heads: c.num_kv_heads as u32,
            head_dim: c.head_dim as u32,
            vocab: c.vocab_size as u32,
            tied_embeddings: c.tie_word_embeddings,
        },
        tensors: reader.tensors().iter().map(|(name, loc)| TensorInfo { name: name.clone(), shape: loc.shape.iter().map(|&d| d as u64).collect() }).collect(),
    }
}

/// sha256 over the checkpoint's `config.json` and weight files, in order.
pub fn fingerprint(reader: &CheckpointReader) -> Result<String, std::io::Error> {
    let mut hasher = Sha256::new();
    let config = reader.dir.join("config.json");
    for path in std::iter::once(config.as_path()).chain(reader.files()) {
        let mut file = std::fs::File::open(path)?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

//! `recast convert`: read a checkpoint and write it back with Recast's writer (to
//! change the element type or the sharding, and to prove the written format loads).

use std::path::Path;

use anyhow::Context;
use candle_core::DType;

use crate::model::checkpoint::{self, WriteOptions};
use crate::model::transformer::Transformer;

pub(super) fn run(model: &Path, out: &Path, dtype: DType, max_shard_bytes: Option<u64>) -> anyhow::Result<()> {
    let ckpt = checkpoint::read(model, DType::F32).with_context(|| format!("cannot read the model in {}", model.display()))?;
    // Building the model checks every tensor's presence and shape before anything is written.
    Transformer::new(&ckpt.config, &ckpt.params, &model.display().to_string())?;
    let options = WriteOptions { dtype, max_shard_bytes, ..WriteOptions::default() };
    checkpoint::write(out, &ckpt.config, &ckpt.params, &options).with_context(|| format!("cannot write {}", out.display()))?;
    println!("wrote {} ({} tensors, {} parameters) to {}", ckpt.config.architecture.hf_class(), ckpt.params.len(), ckpt.params.num_parameters(), out.display());
    Ok(())
}

/// A size such as `5GB`, `200MB`, `64KiB` or `1048576` (bytes), as Hugging Face's
/// `max_shard_size` takes it.
pub(super) fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number.parse().map_err(|_| format!("{text:?} is not a size (e.g. 5GB, 200MB, 1048576)"))?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        other => return Err(format!("unknown size unit {other:?} in {text:?} (use B, KB, MB, GB, KiB, MiB or GiB)")),
    };
    Ok((value * scale as f64) as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn sizes_parse_like_hugging_face() {
        assert_eq!(super::parse_size("5GB"), Ok(5_000_000_000));
        assert_eq!(super::parse_size("64KiB"), Ok(65_536));
        assert_eq!(super::parse_size("1234"), Ok(1234));
        assert!(super::parse_size("5 parsecs").is_err());
    }
}

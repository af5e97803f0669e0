//! TensorBoard event files (`RUN_DIR/tb/events.out.tfevents.*`): every metrics record
//! a run writes is also written as scalars, so `tensorboard --logdir RUN_DIR/tb` (or a
//! folder of runs) shows the same numbers as `metrics.jsonl`. The format is TensorFlow's
//! record file: each record is its length (u64), a masked CRC-32C of the length, the
//! bytes of an `Event` protocol buffer and their masked CRC-32C. The few protobuf fields
//! an event of scalars needs are encoded here; a resumed run starts a new file, which
//! TensorBoard reads together with the old ones.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Appends events to one file.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// A new event file in `dir` (made if missing), opened with its version record.
    pub fn create(dir: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(dir)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "localhost".into());
        let path = dir.join(format!("events.out.tfevents.{}.{host}.{}.recast", now.as_secs(), std::process::id()));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let mut writer = EventWriter { file, path };
        let mut event = Vec::new();
        double_field(&mut event, 1, now.as_secs_f64());
        bytes_field(&mut event, 3, b"brain.Event:2");
        writer.record(&event)?;
        Ok(writer)
    }

    /// One event at `step` holding `scalars` (tag, value).
    pub fn scalars(&mut self, step: u64, scalars: &[(String, f32)]) -> std::io::Result<()> {
        if scalars.is_empty() {
            return Ok(());
        }
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut v = Vec::new();
            bytes_field(&mut v, 1, tag.as_bytes());
            v.push(2 << 3 | 5);
            v.extend(value.to_le_bytes());
            bytes_field(&mut summary, 1, &v);
        }
        let mut event = Vec::new();
        let wall = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_secs_f64();
        double_field(&mut event, 1, wall);
        event.push(2 << 3);
        varint(&mut event, step);
        bytes_field(&mut event, 5, &summary);
        self.record(&event)
    }

    /// The file written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn record(&mut self, data: &[u8]) -> std::io::Result<()> {
        let len = (data.len() as u64).to_le_bytes();
        let mut out = Vec::with_capacity(data.len() + 16);
        out.extend(len);
        out.extend(masked_crc(&len).to_le_bytes());
        out.extend(data);
        out.extend(masked_crc(data).to_le_bytes());
        self.file.write_all(&out)?;
        self.file.flush()
    }
}

/// The scalars of one metrics record: its numbers by name (`loss`, `lr`, …), its
/// per-domain maps as `domain_loss/<domain>` and `eval/<domain>`, and each MoE layer's
/// statistics as `layer<L>/<name>` with every expert's share of the assignments as
/// `layer<L>/load_share/expert<E>`. Bookkeeping (`step`, `unix_ms`, the layout) is left
/// out.
pub fn scalars_of(record: &serde_json::Value) -> Vec<(String, f32)> {
    let mut out = Vec::new();
    let Some(fields) = record.as_object() else { return out };
    for (key, value) in fields {
        match (key.as_str(), value) {
            ("step" | "unix_ms" | "layout" | "eval_gates", _) => {}
            ("layers", serde_json::Value::Array(layers)) => {
                for layer in layers {
                    let Some(l) = layer.get("layer").and_then(serde_json::Value::as_u64) else { continue };
                    for (name, v) in layer.as_object().into_iter().flatten() {
                        if let (Some(x), false) = (v.as_f64(), name == "layer") {
                            out.push((format!("layer{l}/{name}"), x as f32));
                        }
                    }
                    if let Some(load) = layer.get("expert_load").and_then(serde_json::Value::as_array) {
                        let counts: Vec<f64> = load.iter().filter_map(serde_json::Value::as_f64).collect();
                        let total: f64 = counts.iter().sum();
                        for (e, c) in counts.iter().enumerate() {
                            out.push((format!("layer{l}/load_share/expert{e}"), if total > 0.0 { (c / total) as f32 } else { 0.0 }));
                        }
                    }
                }
            }
            (_, serde_json::Value::Object(map)) => {
                for (sub, v) in map {
                    if let Some(x) = v.as_f64() {
                        out.push((format!("{key}/{sub}"), x as f32));
                    }
                }
            }
            (_, v) => {
                if let Some(x) = v.as_f64() {
                    out.push((key.clone(), x as f32));
                }
            }
        }
    }
    out
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn bytes_field(out: &mut Vec<u8>, field: u64, bytes: &[u8]) {
    varint(out, field << 3 | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

fn double_field(out: &mut Vec<u8>, field: u64, v: f64) {
    varint(out, field << 3 | 1);
    out.extend(v.to_le_bytes());
}

/// CRC-32C (Castagnoli), as TFRecord files use it.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    !crc
}

fn masked_crc(data: &[u8]) -> u32 {
    let crc = crc32c(data);
    (crc.rotate_right(15)).wrapping_add(0xa282_ead8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_its_check_value() {
        // The standard check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }

    #[test]
    fn records_flatten_into_named_scalars() {
        let record = serde_json::json!({
            "step": 3, "loss": 2.5, "unix_ms": 1, "domain_loss": {"code": 2.0},
            "layers": [{"layer": 1, "z_loss": 0.5, "expert_load": [1, 3]}]
        });
        let mut s = scalars_of(&record);
        s.sort_by(|a, b| a.0.cmp(&b.0));
        let names: Vec<&str> = s.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["domain_loss/code", "layer1/load_share/expert0", "layer1/load_share/expert1", "layer1/z_loss", "loss"]);
        assert_eq!(s[2].1, 0.75);
    }
}

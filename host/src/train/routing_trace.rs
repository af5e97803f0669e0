//! Routing traces: per traced step, one safetensors file `RUN_DIR/trace/step-NNNNNNNN.safetensors`
//! holding each micro-batch's token ids and, for every traced MoE layer, the tokens each
//! expert kept with their combine weights. Written atomically and deterministically (a
//! resumed run writes the same bytes), read back by `recast replay`.
//!
//! Tensors of micro-batch `m` (names sort in this order):
//! - `mb{m}.tokens` `[batch, seq]` U32: the input token ids;
//! - `mb{m}.layer{L}.counts` `[E]` U32: kept assignments per expert;
//! - `mb{m}.layer{L}.load` `[E]` U32: assignments per expert before any capacity limit;
//! - `mb{m}.layer{L}.tokens` `[N]` U16 (U32 past 65,535 tokens): each kept assignment's
//!   token, grouped by expert;
//! - `mb{m}.layer{L}.gates` `[N]` F32: each kept assignment's combine weight.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use safetensors::tensor::{Dtype, TensorView};

use crate::moe::routing_record::RoutingRecord;

/// The one metadata key of a trace file (one key: safetensors writes metadata in hash
/// order, and a trace must be the same bytes every time). Its value is
/// `{"version":1,"step":S,"micro_batches":M}`.
const META_KEY: &str = "recast_routing_trace";
/// The trace format's version.
const VERSION: u64 = 1;

/// One traced step.
#[derive(Clone, Debug, PartialEq)]
pub struct StepTrace {
    /// The step (1-based, as in `metrics.jsonl`).
    pub step: u64,
    /// This rank's micro-batches, in order.
    pub micro_batches: Vec<MicroBatchTrace>,
}

/// One micro-batch of a traced step.
#[derive(Clone, Debug, PartialEq)]
pub struct MicroBatchTrace {
    /// Sequences in the micro-batch.
    pub sequences: usize,
    /// Token ids, the sequences laid end to end.
    pub tokens: Vec<u32>,
    /// The traced MoE layers' routing, in layer order.
    pub layers: Vec<RoutingRecord>,
}

/// A trace that cannot be read, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a routing trace: {reason}")]
    Format { path: PathBuf, reason: String },
}

/// Where step `step`'s trace lives; a multi-process job's ranks each write their own.
pub fn path(run_dir: &Path, step: u64, rank: Option<usize>) -> PathBuf {
    let dir = run_dir.join("trace");
    match rank {
        Some(rank) => dir.join(format!("step-{step:08}.rank-{rank}.safetensors")),
        None => dir.join(format!("step-{step:08}.safetensors")),
    }
}

/// The traced steps present in `run_dir`, ascending (one-process traces).
pub fn steps(run_dir: &Path) -> Vec<u64> {
    let mut out: Vec<u64> = std::fs::read_dir(run_dir.join("trace"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_prefix("step-")?.strip_suffix(".safetensors")?.parse().ok()))
        .collect();
    out.sort_unstable();
    out
}

fn u32_bytes(values: &[u32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The file's bytes.
pub fn encode(trace: &StepTrace) -> Result<Vec<u8>, safetensors::SafeTensorError> {
    let mut buffers: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)> = BTreeMap::new();
    for (m, mb) in trace.micro_batches.iter().enumerate() {
        let seq = mb.tokens.len() / mb.sequences.max(1);
        buffers.insert(format!("mb{m}.tokens"), (Dtype::U32, vec![mb.sequences, seq], u32_bytes(&mb.tokens)));
        for r in &mb.layers {
            let name = |what: &str| format!("mb{m}.layer{}.{what}", r.layer);
            buffers.insert(name("counts"), (Dtype::U32, vec![r.counts.len()], u32_bytes(&r.counts)));
            buffers.insert(name("load"), (Dtype::U32, vec![r.load.len()], u32_bytes(&r.load)));
            let tokens = match r.tokens <= u16::MAX as usize {
                true => (Dtype::U16, r.assigned.iter().flat_map(|&t| (t as u16).to_le_bytes()).collect()),
                false => (Dtype::U32, u32_bytes(&r.assigned)),
            };
            buffers.insert(name("tokens"), (tokens.0, vec![r.assigned.len()], tokens.1));
            buffers.insert(name("gates"), (Dtype::F32, vec![r.gates.len()], r.gates.iter().flat_map(|g| g.to_le_bytes()).collect()));
        }
    }
    let mut views = Vec::with_capacity(buffers.len());
    for (name, (dtype, shape, bytes)) in &buffers {
        views.push((name.clone(), TensorView::new(*dtype, shape.clone(), bytes)?));
    }
    let meta = format!("{{\"version\":{VERSION},\"step\":{},\"micro_batches\":{}}}", trace.step, trace.micro_batches.len());
    let metadata: HashMap<String, String> = [(META_KEY.to_string(), meta)].into();
    safetensors::serialize(views, Some(metadata))
}

/// Write `trace` to `path` atomically.
pub fn write(path: &Path, trace: &StepTrace) -> Result<(), TraceError> {
    let io = |source| TraceError::Io { path: path.to_path_buf(), source };
    let bytes = encode(trace).map_err(|e| io(std::io::Error::other(e.to_string())))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    crate::atomic_file::write(path, &bytes).map_err(io)
}

/// Read the trace at `path`, checking every record.
pub fn read(path: &Path) -> Result<StepTrace, TraceError> {
    let bytes = std::fs::read(path).map_err(|source| TraceError::Io { path: path.to_path_buf(), source })?;
    decode(&bytes).map_err(|reason| TraceError::Format { path: path.to_path_buf(), reason })
}

/// Parse a trace file's bytes.
pub fn decode(bytes: &[u8]) -> Result<StepTrace, String> {
    let (_, header) = safetensors::SafeTensors::read_metadata(bytes).map_err(|e| e.to_string())?;
    let meta = header.metadata().as_ref().and_then(|m| m.get(META_KEY)).ok_or_else(|| format!("no `{META_KEY}` metadata"))?;
    let meta: serde_json::Value = serde_json::from_str(meta).map_err(|e| format!("`{META_KEY}` metadata: {e}"))?;
    let number = |key: &str| meta.get(key).and_then(serde_json::Value::as_u64).ok_or_else(|| format!("`{META_KEY}` metadata: `{key}` is missing or not a number"));
    if number("version")? != VERSION {
        return Err(format!("version {} of the trace format; this build reads version {VERSION}", number("version")?));
    }
    let (step, micro) = (number("step")?, number("micro_batches")?);
    let file = safetensors::SafeTensors::deserialize(bytes).map_err(|e| e.to_string())?;
    let ints = |name: &str| -> Result<Vec<u32>, String> {
        let t = file.tensor(name).map_err(|e| format!("{name}: {e}"))?;
        match t.dtype() {
            Dtype::U32 => Ok(t.data().chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect()),
            Dtype::U16 => Ok(t.data().chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect()),
            other => Err(format!("{name} is {other:?}, not an integer tensor")),
        }
    };
    let mut micro_batches = Vec::new();
    for m in 0..micro {
        let name = format!("mb{m}.tokens");
        let shape = file.tensor(&name).map_err(|e| format!("{name}: {e}"))?.shape().to_vec();
        let [sequences, seq] = shape[..] else { return Err(format!("{name} has shape {shape:?}, not [batch, seq]")) };
        let tokens = ints(&name)?;
        let prefix = format!("mb{m}.layer");
        let mut layers: Vec<usize> = file.names().iter().filter_map(|n| n.strip_prefix(&prefix)?.strip_suffix(".counts")?.parse().ok()).collect();
        layers.sort_unstable();
        let mut records = Vec::new();
        for layer in layers {
            let name = |what: &str| format!("mb{m}.layer{layer}.{what}");
            let gates_view = file.tensor(&name("gates")).map_err(|e| format!("{}: {e}", name("gates")))?;
            if gates_view.dtype() != Dtype::F32 {
                return Err(format!("{} is {:?}, not F32", name("gates"), gates_view.dtype()));
            }
            let gates = gates_view.data().chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            let record = RoutingRecord { layer, tokens: sequences * seq, counts: ints(&name("counts"))?, load: ints(&name("load"))?, assigned: ints(&name("tokens"))?, gates };
            record.check()?;
            records.push(record);
        }
        micro_batches.push(MicroBatchTrace { sequences, tokens, layers: records });
    }
    Ok(StepTrace { step, micro_batches })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_reads_back_as_written_and_encodes_the_same_bytes_twice() {
        let record = RoutingRecord { layer: 1, tokens: 4, counts: vec![2, 1, 3], load: vec![3, 1, 3], assigned: vec![0, 2, 1, 0, 1, 3], gates: vec![0.5, 0.25, 1.0, 0.5, 0.75, 1.0] };
        let trace = StepTrace { step: 7, micro_batches: vec![MicroBatchTrace { sequences: 2, tokens: vec![5, 6, 7, 8], layers: vec![record] }] };
        let bytes = encode(&trace).unwrap();
        assert_eq!(decode(&bytes).unwrap(), trace);
        assert_eq!(encode(&trace).unwrap(), bytes);
        let mut bad = trace.clone();
        bad.micro_batches[0].layers[0].assigned[1] = 9;
        assert!(decode(&encode(&bad).unwrap()).unwrap_err().contains("out of range"));
    }
}

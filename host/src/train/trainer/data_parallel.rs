//! The trainer's place in a multi-process job (`mpirun -np N recast train …`): every
//! data-parallel replica trains on its share of each micro-batch, and before the update
//! the replicas sum what they computed — gradients (averaged, in fixed buckets, in a
//! fixed order), losses, per-domain sums and the routing statistics the plugins see — so
//! every replica applies the same update and makes the same plugin calls as one process
//! training on the whole batch. Rank 0 alone writes the run folder. A job of one process
//! skips every collective and computes exactly what it did before.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};

use super::TrainError;
use super::slots::PluginSet;
use crate::distributed::launch;
use crate::distributed::{Communicator, Layout};
use crate::model::params::ParamStore;
use crate::moe::spec::LayerStats;
use crate::moe::stats::merge;
use crate::train::config::RunConfig;
use crate::train::optimizer::{AdamW, Gradients};
use crate::train::role::Role;

/// Values in one gradient all-reduce: 4M f32 (16 MiB) keeps the engine's buffers bounded
/// whatever the model's size.
const BUCKET: usize = 4 << 20;

fn distributed(e: impl std::fmt::Display) -> TrainError {
    TrainError::Distributed(e.to_string())
}

/// This process's communicator and layout.
pub(super) struct Job {
    comm: Arc<dyn Communicator>,
    /// Where this rank sits among the job's processes.
    pub layout: Layout,
    /// Under ZeRO-1, the replica that updates each parameter (and alone keeps its
    /// moments); empty otherwise.
    owners: BTreeMap<String, usize>,
}

impl Job {
    /// Join the job the launcher started (a world of one without a launcher) and check
    /// that the run config's `[distributed]` layout fits it.
    pub fn join(config: &RunConfig) -> Result<Self, TrainError> {
        let comm = launch::world(config.distributed.backend).map_err(distributed)?;
        let layout = Layout::new(comm.size(), comm.rank(), &config.distributed).map_err(distributed)?;
        if layout.expert_parallel > 1 {
            return Err(distributed("[distributed].expert_parallel > 1 (experts split across processes) is not supported by this version; use data parallel only"));
        }
        let batch = config.train.batch_size;
        if !batch.is_multiple_of(layout.data_parallel) {
            return Err(distributed(format!("train.batch_size = {batch} does not split evenly over {} data-parallel replicas", layout.data_parallel)));
        }
        if config.distributed.zero > 1 {
            return Err(distributed(format!("[distributed].zero = {} is not supported: 0 (every replica keeps all optimizer moments) or 1 (moments sharded)", config.distributed.zero)));
        }
        Ok(Job { comm, layout, owners: BTreeMap::new() })
    }

    /// Under `[distributed] zero = 1` with several replicas, give every parameter an owner
    /// (greedily by size, in name order: the same on every rank) and drop the moments of
    /// the parameters this replica does not own.
    pub fn shard_optimizer(&mut self, config: &RunConfig, params: &ParamStore, optimizer: &mut AdamW) {
        if config.distributed.zero == 0 || self.layout.data_parallel == 1 {
            return;
        }
        let mut load = vec![0usize; self.layout.data_parallel];
        for (name, p) in params.iter() {
            let owner = (0..load.len()).min_by_key(|&r| (load[r], r)).unwrap_or(0);
            load[owner] += p.elem_count();
            self.owners.insert(name.clone(), owner);
        }
        let me = self.layout.data_rank();
        optimizer.moments.retain(|name, _| self.owners.get(name) == Some(&me));
    }

    /// Whether this replica updates `name` (all parameters unless the moments are sharded).
    pub fn updates(&self, name: &str) -> bool {
        self.owners.get(name).is_none_or(|&owner| owner == self.layout.data_rank())
    }

    /// After a sharded update: every parameter's new value from its owner, on every rank.
    pub fn gather_params(&self, params: &ParamStore) -> Result<Duration, TrainError> {
        if self.owners.is_empty() {
            return Ok(Duration::ZERO);
        }
        let clock = Instant::now();
        for (name, p) in params.iter() {
            let owner = self.owners.get(name).copied().unwrap_or(0);
            let new = self.broadcast_tensor(owner, p).map_err(|e| distributed(format!("parameter {name}: {e}")))?;
            if self.layout.data_rank() != owner {
                candle_core::Var::from_tensor(p).and_then(|v| v.set(&new)).map_err(|e| distributed(format!("parameter {name}: {e}")))?;
            }
        }
        Ok(clock.elapsed())
    }

    /// Every moment on rank 0 (for its checkpoint): the owners send theirs; on the other
    /// ranks the result holds only their own.
    pub fn gather_moments(&self, params: &ParamStore, optimizer: &AdamW) -> Result<BTreeMap<String, (Tensor, Tensor)>, TrainError> {
        if self.owners.is_empty() {
            return Ok(optimizer.moments.clone());
        }
        let mut all = BTreeMap::new();
        for (name, p) in params.iter() {
            let owner = self.owners.get(name).copied().unwrap_or(0);
            let zeros = || Tensor::zeros(p.dims(), DType::F32, p.device());
            let (m, v) = match optimizer.moments.get(name) {
                Some((m, v)) => (m.clone(), v.clone()),
                None => (zeros().map_err(distributed)?, zeros().map_err(distributed)?),
            };
            let m = self.broadcast_tensor(owner, &m).map_err(|e| distributed(format!("moments of {name}: {e}")))?;
            let v = self.broadcast_tensor(owner, &v).map_err(|e| distributed(format!("moments of {name}: {e}")))?;
            all.insert(name.clone(), (m, v));
        }
        Ok(all)
    }

    /// Optimizer-state elements this rank holds (both moments), for the metrics.
    pub fn moment_elements(optimizer: &AdamW) -> usize {
        optimizer.moments.values().map(|(m, v)| m.elem_count() + v.elem_count()).sum()
    }

    /// `t` as rank `root` holds it, on every rank (f32 values, `t`'s shape, dtype, device).
    fn broadcast_tensor(&self, root: usize, t: &Tensor) -> Result<Tensor, String> {
        let values = t.to_dtype(DType::F32).and_then(|x| x.flatten_all()).and_then(|x| x.to_vec1::<f32>()).map_err(|e| e.to_string())?;
        let mut bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.comm.broadcast(root, &mut bytes).map_err(|e| e.to_string())?;
        let values: Vec<f32> = bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Tensor::from_vec(values, t.dims(), t.device()).and_then(|x| x.to_dtype(t.dtype())).map_err(|e| e.to_string())
    }

    /// The MoE dispatcher for this job: `None` in one process (the local one stays).
    pub fn dispatcher(&self) -> Option<Arc<dyn crate::moe::dispatcher::TokenDispatcher>> {
        (!self.is_single()).then(|| Arc::new(crate::distributed::ReplicatedDispatcher::new(self.comm.clone())) as Arc<dyn crate::moe::dispatcher::TokenDispatcher>)
    }

    /// Whether this rank writes the run folder (metrics, journal, checkpoints, export).
    pub fn writes(&self) -> bool {
        self.layout.rank == 0
    }

    /// Whether the job is this one process.
    pub fn is_single(&self) -> bool {
        self.layout.world == 1
    }

    /// The layout for the metrics.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({ "world": self.layout.world, "data_parallel": self.layout.data_parallel, "expert_parallel": self.layout.expert_parallel, "backend": self.comm.backend(), "zero": u8::from(!self.owners.is_empty()) })
    }

    /// Refuse a job whose ranks run different plugin code: one policy for the whole job.
    pub fn check_same_plugins(&self, plugins: &PluginSet) -> Result<(), TrainError> {
        if self.is_single() {
            return Ok(());
        }
        let mine: Vec<(String, String)> = Role::all().map(|r| (r.as_str().to_string(), plugins.get(r).map(|(c, _)| c.digest().to_hex()).unwrap_or_else(|| "none".into()))).collect();
        let mut bytes = serde_json::to_vec(&mine).map_err(distributed)?;
        self.comm.broadcast(0, &mut bytes).map_err(distributed)?;
        let first: Vec<(String, String)> = serde_json::from_slice(&bytes).map_err(distributed)?;
        for ((role, here), (_, there)) in mine.iter().zip(&first) {
            if here != there {
                return Err(distributed(format!("rank {} runs a different {role} plugin than rank 0: sha256 {here} here, {there} on rank 0", self.layout.rank)));
            }
        }
        Ok(())
    }

    /// Rank 0's `value` on every rank (plugin versions to swap in, decided once).
    pub fn share_from_rank0<T: serde::Serialize + serde::de::DeserializeOwned>(&self, value: &T) -> Result<T, TrainError> {
        let mut bytes = serde_json::to_vec(value).map_err(distributed)?;
        self.comm.broadcast(0, &mut bytes).map_err(distributed)?;
        serde_json::from_slice(&bytes).map_err(distributed)
    }

    /// Sum the replicas' gradients and divide by their number, bucket by bucket in the
    /// gradients' name order; returns the time spent in collectives.
    pub fn average_gradients(&self, grads: &mut Gradients) -> Result<Duration, TrainError> {
        if self.is_single() {
            return Ok(Duration::ZERO);
        }
        let mut flat = Vec::new();
        let mut shapes = Vec::with_capacity(grads.len());
        for (name, g) in grads.iter() {
            let values = g.to_dtype(DType::F32).and_then(|g| g.flatten_all()).and_then(|g| g.to_vec1::<f32>()).map_err(|e| distributed(format!("gradient {name}: {e}")))?;
            shapes.push((g.dims().to_vec(), g.dtype(), g.device().clone(), values.len()));
            flat.extend(values);
        }
        let clock = Instant::now();
        for bucket in flat.chunks_mut(BUCKET) {
            self.comm.all_reduce_sum(bucket).map_err(distributed)?;
        }
        let spent = clock.elapsed();
        let scale = 1.0 / self.layout.data_parallel as f32;
        let mut at = 0;
        for ((name, g), (dims, dtype, device, n)) in grads.iter_mut().zip(shapes) {
            let values: Vec<f32> = flat[at..at + n].iter().map(|v| v * scale).collect();
            at += n;
            *g = Tensor::from_vec(values, dims, &device).and_then(|t| t.to_dtype(dtype)).map_err(|e| distributed(format!("gradient {name}: {e}")))?;
        }
        Ok(spent)
    }

    /// Sum `values` over the replicas (loss sums, token counts), in f64.
    pub fn sum(&self, values: &mut [f64]) -> Result<Duration, TrainError> {
        if self.is_single() {
            return Ok(Duration::ZERO);
        }
        let clock = Instant::now();
        self.comm.all_reduce_sum_f64(values).map_err(distributed)?;
        Ok(clock.elapsed())
    }

    /// Every replica's routing statistics merged in rank order, the same on every rank:
    /// what the plugins see is the whole batch's routing.
    pub fn merge_stats(&self, stats: &mut Vec<LayerStats>) -> Result<Duration, TrainError> {
        if self.is_single() || stats.is_empty() {
            return Ok(Duration::ZERO);
        }
        let encoded: Vec<f32> = stats.iter().flat_map(encode).collect();
        let clock = Instant::now();
        let all = self.comm.all_gather(&encoded).map_err(distributed)?;
        let spent = clock.elapsed();
        let mut merged: Option<Vec<LayerStats>> = None;
        for rank in all.chunks_exact(encoded.len()) {
            let mut at = 0;
            let theirs: Vec<LayerStats> = stats
                .iter()
                .map(|shape| {
                    let (s, used) = decode(&rank[at..], shape);
                    at += used;
                    s
                })
                .collect();
            match merged.as_mut() {
                None => merged = Some(theirs),
                Some(into) => into.iter_mut().zip(&theirs).for_each(|(a, b)| merge(a, b)),
            }
        }
        if let Some(merged) = merged {
            *stats = merged;
        }
        Ok(spent)
    }
}

/// One layer's statistics as f32 values (counts are exact below 2^24 per replica).
fn encode(s: &LayerStats) -> Vec<f32> {
    let mut v = vec![s.layer as f32, s.tokens as f32, s.top_k as f32, s.dropped as f32, s.overflow_rate, s.gate_entropy, s.max1_over_max2, s.load_balance_loss, s.z_loss];
    v.extend(s.expert_load.iter().map(|&c| c as f32));
    v
}

/// The statistics `encode` wrote at the start of `v`, shaped like `like`; and how many
/// values they took.
fn decode(v: &[f32], like: &LayerStats) -> (LayerStats, usize) {
    let experts = like.expert_load.len();
    let s = LayerStats {
        layer: v[0] as u32,
        tokens: v[1] as u32,
        top_k: v[2] as u32,
        dropped: v[3] as u32,
        overflow_rate: v[4],
        gate_entropy: v[5],
        max1_over_max2: v[6],
        load_balance_loss: v[7],
        z_loss: v[8],
        expert_load: v[9..9 + experts].iter().map(|&c| c as u32).collect(),
    };
    (s, 9 + experts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statistics_survive_their_encoding() {
        let s = LayerStats {
            layer: 3,
            tokens: 2048,
            top_k: 2,
            expert_load: vec![1000, 1024, 0, 2072],
            dropped: 7,
            overflow_rate: 0.01,
            gate_entropy: 1.2,
            max1_over_max2: 1.5,
            load_balance_loss: 1.01,
            z_loss: 3.5,
        };
        let v = encode(&s);
        let (back, used) = decode(&v, &s);
        assert_eq!(used, v.len());
        assert_eq!(serde_json::to_value(&back).ok(), serde_json::to_value(&s).ok());
    }
}

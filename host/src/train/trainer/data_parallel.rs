//! The trainer's place in a multi-process job (`mpirun -np N recast train …`): every
//! rank trains on its share of each micro-batch, and before the update the ranks sum
//! what they computed — gradients (averaged, in fixed buckets, in a fixed order),
//! losses, per-domain sums and the routing statistics the plugins see — so every rank
//! applies the same update and makes the same plugin calls as one process accumulating
//! the same micro-batches. Under expert parallelism the ranks of an expert-parallel
//! group split every MoE layer's routed experts: each computes and updates only its
//! own, their gradients are reduced over the ranks that hold the same experts (the
//! expert-data-parallel group), and checkpoints gather them to rank 0. Rank 0 alone
//! writes the run folder. A job of one process skips every collective and computes
//! exactly what it did before.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};

use super::TrainError;
use super::slots::PluginSet;
use super::zero;
use crate::distributed::{Communicator, ExpertParallelDispatcher, Layout};
use crate::distributed::{launch, watchdog};
use crate::model::config::ModelConfig;
use crate::model::ffn::Ffn;
use crate::model::params::ParamStore;
use crate::model::transformer::Transformer;
use crate::moe::dispatcher::TokenDispatcher;
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

/// The routed expert a parameter belongs to (`….mlp.experts.{e}.…`), if any.
fn routed_expert(name: &str) -> Option<usize> {
    let (_, rest) = name.split_once(".mlp.experts.")?;
    rest.split('.').next()?.parse().ok()
}

/// The groups of an expert-parallel job.
struct ExpertGroups {
    /// The ranks of this replica, which split the experts.
    split: Arc<dyn Communicator>,
    /// The ranks that hold the same experts (one per replica).
    same: Arc<dyn Communicator>,
    /// Routed experts per rank in every MoE layer (known once the model is).
    per_rank: usize,
    /// The layers' all-to-all dispatcher.
    dispatcher: Arc<ExpertParallelDispatcher>,
}

/// This process's communicator and layout.
pub(super) struct Job {
    comm: Arc<dyn Communicator>,
    /// Where this rank sits among the job's processes.
    pub layout: Layout,
    /// Under ZeRO-1, the replica that updates each parameter (and alone keeps its
    /// moments); empty otherwise.
    owners: BTreeMap<String, usize>,
    /// The expert-parallel groups, when `expert_parallel > 1`.
    experts: Option<ExpertGroups>,
}

impl Job {
    /// Join the job the launcher started (a world of one without a launcher) and check
    /// that the run config's `[distributed]` layout fits it.
    pub fn join(config: &RunConfig) -> Result<Self, TrainError> {
        let mut comm = launch::world(config.distributed.backend).map_err(distributed)?;
        if comm.size() > 1 {
            comm = watchdog::watch(comm, Duration::from_secs(config.distributed.collective_timeout_s.max(1)));
        }
        let layout = Layout::new(comm.size(), comm.rank(), &config.distributed).map_err(distributed)?;
        let batch = config.train.batch_size;
        if !batch.is_multiple_of(layout.world) {
            return Err(distributed(format!("train.batch_size = {batch} does not split evenly over the job's {} ranks", layout.world)));
        }
        if config.distributed.zero > 1 {
            return Err(distributed(format!("[distributed].zero = {} is not supported: 0 (every replica keeps all optimizer moments) or 1 (moments sharded)", config.distributed.zero)));
        }
        if config.distributed.zero == 1 && layout.expert_parallel > 1 {
            return Err(distributed("[distributed].zero = 1 with expert_parallel > 1 is not supported yet: use one of them"));
        }
        let experts = match layout.expert_parallel {
            1 => None,
            _ => {
                // Collective: every rank splits the world the same two ways, in order.
                let split = comm.split(layout.data_rank(), layout.expert_rank()).map_err(distributed)?;
                let same = comm.split(layout.expert_rank(), layout.data_rank()).map_err(distributed)?;
                let dispatcher = Arc::new(ExpertParallelDispatcher::new(split.clone()));
                Some(ExpertGroups { split, same, per_rank: 0, dispatcher })
            }
        };
        Ok(Job { comm, layout, owners: BTreeMap::new(), experts })
    }

    /// Under expert parallelism, check that every MoE layer's routed experts split
    /// evenly over the expert-parallel ranks and remember each rank's share.
    pub fn split_experts(&mut self, model: &ModelConfig) -> Result<(), TrainError> {
        let Some(groups) = self.experts.as_mut() else { return Ok(()) };
        let Some(moe) = model.moe.as_ref() else {
            return Err(distributed(format!("[distributed].expert_parallel = {} but the model has no MoE layers", self.layout.expert_parallel)));
        };
        let range = self.layout.local_experts(moe.num_experts).map_err(distributed)?;
        groups.per_rank = range.len();
        Ok(())
    }

    /// The world rank whose copy of `name` (and its moments) is the job's: the ZeRO-1
    /// owner, or the rank of replica 0 that computes its expert; `None` when every rank
    /// holds it.
    fn owner_rank(&self, name: &str) -> Option<usize> {
        if let Some(&replica) = self.owners.get(name) {
            return Some(replica * self.layout.expert_parallel);
        }
        let groups = self.experts.as_ref()?;
        routed_expert(name).map(|e| e / groups.per_rank.max(1))
    }

    /// Whether this rank computes and updates `name` (every parameter but the routed
    /// experts of the other ranks of its expert-parallel group).
    fn holds(&self, name: &str) -> bool {
        match (&self.experts, routed_expert(name)) {
            (Some(groups), Some(e)) => e / groups.per_rank.max(1) == self.layout.expert_rank(),
            _ => true,
        }
    }

    /// Under `[distributed] zero = 1` with several replicas, give every parameter an owner
    /// (contiguous runs in name order: the same on every rank) and drop the moments of
    /// the parameters this replica does not own.
    pub fn shard_optimizer(&mut self, config: &RunConfig, params: &ParamStore, optimizer: &mut AdamW) {
        if config.distributed.zero == 0 || self.layout.data_parallel == 1 {
            return;
        }
        self.owners = zero::contiguous_owners(params, self.layout.data_parallel);
        let me = self.layout.data_rank();
        optimizer.moments.retain(|name, _| self.owners.get(name) == Some(&me));
    }

    /// Drop the optimizer moments of the experts other ranks compute (expert parallel).
    pub fn drop_foreign_moments(&self, optimizer: &mut AdamW) {
        optimizer.moments.retain(|name, _| self.holds(name));
    }

    /// Whether this rank updates `name`: not under ZeRO-1 when another replica owns it,
    /// not under expert parallelism when another rank computes its expert.
    pub fn updates(&self, name: &str) -> bool {
        self.holds(name) && self.owners.get(name).is_none_or(|&owner| owner == self.layout.data_rank())
    }

    /// Under expert parallelism, let go of the weights of the experts other ranks
    /// train: each becomes an empty tensor that keeps its width (`[width, 0]`, `[d, 0]`),
    /// in the parameters and in the model. Returns how many values were let go.
    pub fn drop_foreign_experts(&self, params: &mut ParamStore, model: &mut Transformer) -> Result<usize, TrainError> {
        if self.experts.is_none() {
            return Ok(0);
        }
        let empty = |t: &Tensor| Tensor::zeros((t.dims().first().copied().unwrap_or(0), 0), t.dtype(), t.device()).map_err(distributed);
        let foreign: Vec<String> = params.iter().filter(|(name, _)| routed_expert(name).is_some() && !self.holds(name)).map(|(n, _)| n.clone()).collect();
        let mut freed = 0;
        for name in foreign {
            if let Some(t) = params.get(&name) {
                freed += t.elem_count();
                let stand_in = empty(t)?;
                params.insert(name, stand_in, None);
            }
        }
        let local = self.experts.as_ref().map_or(0..0, |g| self.layout.expert_rank() * g.per_rank..(self.layout.expert_rank() + 1) * g.per_rank);
        for layer in model.moe_layers_mut() {
            for (_, ffn) in layer.experts.iter_mut().enumerate().filter(|(e, _)| !local.contains(e)) {
                *ffn = Ffn { gate: empty(&ffn.gate)?, up: empty(&ffn.up)?, down: empty(&ffn.down)? };
            }
        }
        Ok(freed)
    }

    /// The whole model's weights on rank 0 for the export (a collective): under expert
    /// parallelism each routed expert from the rank of replica 0 that trains it.
    pub fn export_weights(&self, params: &ParamStore) -> Result<Option<ParamStore>, TrainError> {
        if self.experts.is_none() {
            return Ok(self.writes().then(|| params.clone()));
        }
        let mut whole = ParamStore::new();
        for (name, p) in params.iter() {
            let t = match self.owner_rank(name) {
                Some(owner) => self.broadcast_whole(owner, p).map_err(|e| distributed(format!("parameter {name}: {e}")))?,
                None => p.clone(),
            };
            whole.insert(name.clone(), t, None);
        }
        Ok(self.writes().then_some(whole))
    }

    /// The gradient norm of the whole model: under expert parallelism every rank adds
    /// the squares of its own experts' gradients to those of the shared parameters,
    /// parameter by parameter in name order, as one process does.
    pub fn grad_norm(&self, params: &ParamStore, grads: &Gradients) -> Result<f64, TrainError> {
        // Under ZeRO-1 each replica holds the summed gradients of its own parameters.
        let (group, zero) = match (&self.experts, self.owners.is_empty()) {
            (_, false) => (&self.comm, true),
            (Some(groups), true) => (&groups.split, false),
            (None, true) => return AdamW::grad_norm(grads).map_err(distributed),
        };
        let mut squares = Vec::with_capacity(grads.len());
        for (name, _) in params.iter() {
            let counted_here = if zero {
                true
            } else if routed_expert(name).is_some() {
                self.holds(name)
            } else {
                self.layout.expert_rank() == 0
            };
            squares.push(match grads.get(name).filter(|_| counted_here) {
                Some(g) => AdamW::grad_squares(g).map_err(distributed)?,
                None => 0.0,
            });
        }
        group.all_reduce_sum_f64(&mut squares).map_err(distributed)?;
        Ok(squares.iter().sum::<f64>().sqrt())
    }

    /// After a sharded update: every parameter's new value from its owner, on every rank.
    pub fn gather_params(&self, params: &ParamStore) -> Result<Duration, TrainError> {
        if self.owners.is_empty() {
            return Ok(Duration::ZERO);
        }
        zero::all_gather_params(self.comm.as_ref(), &self.owners, self.layout.data_rank(), params)
    }

    /// The weights and moments this rank writes into a checkpoint: the experts it trains
    /// (replica 0 of an expert-parallel job) with their moments, the moments it owns
    /// under ZeRO-1, and on rank 0 everything else.
    pub fn checkpoint_shard(&self, params: &ParamStore, optimizer: &AdamW) -> (BTreeMap<String, Tensor>, BTreeMap<String, (Tensor, Tensor)>) {
        let rank = self.layout.rank;
        let expert_owner = |name: &str| if self.experts.is_some() && routed_expert(name).is_some() { self.owner_rank(name) } else { None };
        let weights = params.iter().filter(|(name, _)| expert_owner(name).unwrap_or(0) == rank).map(|(n, t)| (n.clone(), t.detach())).collect();
        let moments = optimizer.moments.iter().filter(|(name, _)| self.owner_rank(name).unwrap_or(0) == rank).map(|(n, m)| (n.clone(), m.clone())).collect();
        (weights, moments)
    }

    /// Optimizer-state elements this rank holds (both moments), for the metrics.
    pub fn moment_elements(optimizer: &AdamW) -> usize {
        optimizer.moments.values().map(|(m, v)| m.elem_count() + v.elem_count()).sum()
    }

    /// `t` as rank `root` holds it, shape included, on every rank (`t`'s dtype and
    /// device): the other ranks may hold only an empty stand-in of it.
    fn broadcast_whole(&self, root: usize, t: &Tensor) -> Result<Tensor, String> {
        let values = t.to_dtype(DType::F32).and_then(|x| x.flatten_all()).and_then(|x| x.to_vec1::<f32>()).map_err(|e| e.to_string())?;
        let mut bytes: Vec<u8> = (t.dims().len() as u64).to_le_bytes().to_vec();
        bytes.extend(t.dims().iter().flat_map(|&d| (d as u64).to_le_bytes()));
        bytes.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        self.comm.broadcast(root, &mut bytes).map_err(|e| e.to_string())?;
        let word = |i: usize| bytes.get(8 * i..8 * i + 8).map(|b| u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as usize).ok_or("a short broadcast");
        let rank = word(0)?;
        let dims = (1..=rank).map(word).collect::<Result<Vec<_>, _>>()?;
        let values: Vec<f32> = bytes[8 * (rank + 1)..].chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        Tensor::from_vec(values, dims, t.device()).and_then(|x| x.to_dtype(t.dtype())).map_err(|e| e.to_string())
    }

    /// The MoE dispatcher for this job: the all-to-all over the expert-parallel group,
    /// or `None` (the local one stays) when every rank holds all experts.
    pub fn dispatcher(&self) -> Option<Arc<dyn TokenDispatcher>> {
        self.experts.as_ref().map(|groups| groups.dispatcher.clone() as Arc<dyn TokenDispatcher>)
    }

    /// Time the layers spent in their all-to-alls since the last call.
    pub fn take_dispatch_time(&self) -> Duration {
        self.experts.as_ref().map_or(Duration::ZERO, |groups| groups.dispatcher.take_time())
    }

    /// Whether this rank writes the run folder (metrics, journal, the checkpoints'
    /// state and manifest, export).
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

    /// Sum the ranks' gradients and divide by their number, bucket by bucket in the
    /// gradients' name order: the routed experts' over the ranks that hold them, the
    /// rest over the world. Returns the time spent in collectives.
    pub fn average_gradients(&self, grads: &mut Gradients) -> Result<Duration, TrainError> {
        if self.is_single() {
            return Ok(Duration::ZERO);
        }
        let scale = 1.0 / self.layout.world as f32;
        if !self.owners.is_empty() {
            return zero::reduce_scatter_gradients(self.comm.as_ref(), &self.owners, self.layout.data_rank(), grads, scale);
        }
        let Some(groups) = self.experts.as_ref() else {
            return all_reduce_gradients(self.comm.as_ref(), grads.iter_mut().collect(), scale);
        };
        let (experts, shared): (Vec<_>, Vec<_>) = grads.iter_mut().partition(|(name, _)| routed_expert(name).is_some());
        Ok(all_reduce_gradients(self.comm.as_ref(), shared, scale)? + all_reduce_gradients(groups.same.as_ref(), experts, scale)?)
    }

    /// Sum `values` over the ranks (loss sums, token counts), in f64.
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

/// Sum `grads` over the ranks of `comm` and multiply by `scale`, in buckets of
/// [`BUCKET`] values in the given order; returns the time spent in collectives.
fn all_reduce_gradients(comm: &dyn Communicator, grads: Vec<(&String, &mut Tensor)>, scale: f32) -> Result<Duration, TrainError> {
    let mut flat = Vec::new();
    let mut shapes = Vec::with_capacity(grads.len());
    for (name, g) in &grads {
        let values = g.to_dtype(DType::F32).and_then(|g| g.flatten_all()).and_then(|g| g.to_vec1::<f32>()).map_err(|e| distributed(format!("gradient {name}: {e}")))?;
        shapes.push((g.dims().to_vec(), g.dtype(), g.device().clone(), values.len()));
        flat.extend(values);
    }
    let clock = Instant::now();
    for bucket in flat.chunks_mut(BUCKET) {
        comm.all_reduce_sum(bucket).map_err(distributed)?;
    }
    let spent = clock.elapsed();
    let mut at = 0;
    for ((name, g), (dims, dtype, device, n)) in grads.into_iter().zip(shapes) {
        let values: Vec<f32> = flat[at..at + n].iter().map(|v| v * scale).collect();
        at += n;
        *g = Tensor::from_vec(values, dims, &device).and_then(|t| t.to_dtype(dtype)).map_err(|e| distributed(format!("gradient {name}: {e}")))?;
    }
    Ok(spent)
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

impl crate::train::checkpoint::Writers for Job {
    fn rank(&self) -> usize {
        self.layout.rank
    }

    fn world(&self) -> usize {
        self.layout.world
    }

    fn all_ok(&self, ok: bool) -> bool {
        if self.is_single() {
            return ok;
        }
        let mut failed = [f64::from(u8::from(!ok))];
        // A failed collective is a failed checkpoint (and the job's end follows).
        self.comm.all_reduce_sum_f64(&mut failed).is_ok() && failed[0] == 0.0
    }
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

//! ZeRO stage 1 over the data-parallel replicas: the parameters, in name order, are cut
//! into one contiguous run per replica (of about equal size); each replica keeps the
//! AdamW moments of its run only. A step reduce-scatters the gradients (each replica
//! receives the sums of its run's gradients only), the replica updates its run, and the
//! replicas all-gather the updated weights: the traffic of one all-reduce, where
//! all-reducing the gradients and then broadcasting every parameter costs half again.
//! Sums are in rank order, so the numbers are those of training without ZeRO.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};

use super::TrainError;
use crate::distributed::Communicator;
use crate::model::params::ParamStore;
use crate::train::optimizer::Gradients;

/// Values per replica in one collective: the engine's buffers stay bounded whatever the
/// model's size.
const WINDOW: usize = 4 << 20;

fn distributed(e: impl std::fmt::Display) -> TrainError {
    TrainError::Distributed(e.to_string())
}

/// The replica that owns each parameter: contiguous runs in name order, cut where a
/// run reaches its share of the elements (the same on every rank).
pub(super) fn contiguous_owners(params: &ParamStore, replicas: usize) -> BTreeMap<String, usize> {
    let total: usize = params.iter().map(|(_, p)| p.elem_count()).sum();
    let mut before = 0usize;
    let mut owners = BTreeMap::new();
    for (name, p) in params.iter() {
        // The run whose share holds this parameter's middle element.
        let middle = before + p.elem_count() / 2;
        owners.insert(name.clone(), (middle * replicas / total.max(1)).min(replicas - 1));
        before += p.elem_count();
    }
    owners
}

/// A tensor's values as f32, for the wire.
fn values(name: &str, t: &Tensor) -> Result<Vec<f32>, TrainError> {
    t.to_dtype(DType::F32).and_then(|x| x.flatten_all()).and_then(|x| x.to_vec1::<f32>()).map_err(|e| distributed(format!("{name}: {e}")))
}

/// `values` shaped and typed like `like`.
fn shaped(name: &str, values: &[f32], like: &Tensor) -> Result<Tensor, TrainError> {
    Tensor::from_slice(values, like.dims(), like.device()).and_then(|t| t.to_dtype(like.dtype())).map_err(|e| distributed(format!("{name}: {e}")))
}

/// Every replica's run of `values` laid out for the collectives: run `r` is the
/// concatenation of the values of the names `r` owns, in name order.
struct Runs {
    /// Each replica's values.
    runs: Vec<Vec<f32>>,
    /// The names and lengths in each run, in order.
    names: Vec<Vec<(String, usize)>>,
    /// Each run's length (also of runs whose values are not held here).
    lens: Vec<usize>,
}

impl Runs {
    fn new(replicas: usize) -> Self {
        Runs { runs: vec![Vec::new(); replicas], names: vec![Vec::new(); replicas], lens: vec![0; replicas] }
    }

    fn push(&mut self, owner: usize, name: &str, values: Vec<f32>) {
        self.count(owner, name, values.len());
        self.runs[owner].extend(values);
    }

    /// Place `n` values of `name` in `owner`'s run without holding them.
    fn count(&mut self, owner: usize, name: &str, n: usize) {
        self.names[owner].push((name.to_string(), n));
        self.lens[owner] += n;
    }

    /// The longest run: every replica's block is padded to it.
    fn block(&self) -> usize {
        self.lens.iter().copied().max().unwrap_or(0)
    }
}

/// Sum the gradients over the replicas of `comm` and keep, on each, only those of the
/// parameters it owns (times `scale`); returns the time in collectives.
pub(super) fn reduce_scatter_gradients(comm: &dyn Communicator, owners: &BTreeMap<String, usize>, me: usize, grads: &mut Gradients, scale: f32) -> Result<Duration, TrainError> {
    let replicas = comm.size();
    let mut runs = Runs::new(replicas);
    for (name, g) in grads.iter() {
        runs.push(owners.get(name).copied().unwrap_or(0), name, values(name, g)?);
    }
    let block = runs.block();
    let mut mine = vec![0f32; block];
    let clock = Instant::now();
    for start in (0..block).step_by(WINDOW) {
        let width = WINDOW.min(block - start);
        let mut send = Vec::with_capacity(width * replicas);
        for run in &runs.runs {
            let end = run.len().min(start + width);
            send.extend_from_slice(run.get(start..end).unwrap_or(&[]));
            send.resize(send.len() + (start + width - end.max(start)), 0.0);
        }
        let summed = comm.reduce_scatter_sum(&send).map_err(distributed)?;
        mine[start..start + width].copy_from_slice(&summed);
    }
    let spent = clock.elapsed();
    let mut at = 0;
    let own: Vec<(String, usize)> = runs.names[me].clone();
    grads.retain(|name, _| owners.get(name).copied().unwrap_or(0) == me);
    for (name, n) in own {
        let g = grads.get_mut(&name).ok_or_else(|| distributed(format!("gradient {name} went missing")))?;
        let scaled: Vec<f32> = mine[at..at + n].iter().map(|v| v * scale).collect();
        *g = shaped(&name, &scaled, g)?;
        at += n;
    }
    Ok(spent)
}

/// After each replica updated its run: every replica's updated weights on every
/// replica; returns the time in collectives.
pub(super) fn all_gather_params(comm: &dyn Communicator, owners: &BTreeMap<String, usize>, me: usize, params: &ParamStore) -> Result<Duration, TrainError> {
    let replicas = comm.size();
    let mut runs = Runs::new(replicas);
    for (name, p) in params.iter() {
        let owner = owners.get(name).copied().unwrap_or(0);
        // Only the owner's values travel; the others only need the lengths.
        if owner == me {
            runs.push(owner, name, values(name, p)?);
        } else {
            runs.count(owner, name, p.elem_count());
        }
    }
    let block = runs.block();
    let mut gathered = vec![vec![0f32; block]; replicas];
    let clock = Instant::now();
    for start in (0..block).step_by(WINDOW) {
        let width = WINDOW.min(block - start);
        let run = &runs.runs[me];
        let end = run.len().min(start + width);
        let mut mine = run.get(start..end).unwrap_or(&[]).to_vec();
        mine.resize(width, 0.0);
        let all = comm.all_gather(&mine).map_err(distributed)?;
        for (r, part) in all.chunks_exact(width).enumerate() {
            gathered[r][start..start + width].copy_from_slice(part);
        }
    }
    let spent = clock.elapsed();
    for (r, names) in runs.names.iter().enumerate().filter(|(r, _)| *r != me) {
        let mut at = 0;
        for (name, n) in names {
            let p = params.get(name).ok_or_else(|| distributed(format!("parameter {name} went missing")))?;
            let new = shaped(name, &gathered[r][at..at + n], p)?;
            candle_core::Var::from_tensor(p).and_then(|v| v.set(&new)).map_err(|e| distributed(format!("parameter {name}: {e}")))?;
            at += n;
        }
    }
    Ok(spent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::distributed::SingleProcess;

    #[test]
    fn owners_are_contiguous_runs_of_about_equal_size() {
        let mut params = ParamStore::new();
        for (name, n) in [("a", 100), ("b", 100), ("c", 100), ("d", 100), ("e", 10)] {
            params.insert(name, Tensor::zeros(n, DType::F32, &candle_core::Device::Cpu).expect("zeros"), None);
        }
        let owners = contiguous_owners(&params, 2);
        let order: Vec<usize> = owners.values().copied().collect();
        assert_eq!(order, [0, 0, 1, 1, 1]);
        // One replica: the reduce-scatter keeps every gradient, scaled.
        let mut grads: Gradients = BTreeMap::from([("a".to_string(), Tensor::new(&[2f32, 4.0], &candle_core::Device::Cpu).expect("t"))]);
        let one = BTreeMap::from([("a".to_string(), 0)]);
        reduce_scatter_gradients(&SingleProcess, &one, 0, &mut grads, 0.5).expect("reduce-scatter");
        assert_eq!(grads["a"].to_vec1::<f32>().expect("values"), [1.0, 2.0]);
    }
}

//! Executes a validated init plan on real weights, streaming: source tensors are read
//! from memory maps when an op needs them and dropped after their last use; each target
//! tensor is written to its shard as soon as no later op touches it. Routers initialised
//! from calibration text take their rows from [`Centroids`] computed beforehand.

use std::collections::{BTreeMap, HashMap};

use candle_core::{DType, Device, Tensor};

use super::centroids::Centroids;
use super::writer::ShardWriter;
use crate::contract::{Distribution, InitOp, InitPlan, NormalParams, ReinitOp, RouterInit, RouterInitOp, ScaleOp, TensorRef};
use crate::model::checkpoint::CheckpointReader;
use crate::model::error::ModelError;
use crate::model::init::SplitMix64;

/// Why executing a plan failed, naming the op.
#[derive(Debug, thiserror::Error)]
pub enum ExecuteError {
    #[error("plan op {op}: {reason}")]
    Op { op: usize, reason: String },
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Key of a tensor an op reads: a source's tensor or a target tensor.
fn key(r: &TensorRef) -> String {
    match r.source {
        Some(s) => format!("source{s}:{}", r.name),
        None => r.name.clone(),
    }
}

/// The tensors each op reads and the target tensor it writes or modifies.
fn touches(op: &InitOp) -> (Vec<String>, Option<&str>) {
    match op {
        InitOp::Copy(c) => (vec![key(&c.src)], Some(&c.dst)),
        InitOp::Gather(g) => (vec![key(&g.src)], Some(&g.dst)),
        InitOp::Fill(f) => (distribution_reads(&f.distribution), Some(&f.dst)),
        InitOp::Scale(s) => (vec![], Some(&s.tensor)),
        InitOp::Reinit(r) => (distribution_reads(&r.distribution), Some(&r.tensor)),
        InitOp::Permute(p) => (vec![], Some(&p.tensor)),
        InitOp::Noise(n) => (vec![], Some(&n.tensor)),
        InitOp::InitRouter(r) => (vec![], Some(&r.dst)),
    }
}

fn distribution_reads(d: &Distribution) -> Vec<String> {
    match d {
        Distribution::Matching(r) => vec![key(r)],
        _ => vec![],
    }
}

/// For every tensor key, the index of the last op that touches it.
pub fn last_uses(plan: &InitPlan) -> HashMap<String, usize> {
    let mut last = HashMap::new();
    for (i, op) in plan.ops.iter().enumerate() {
        let (reads, write) = touches(op);
        for k in reads.into_iter().chain(write.map(str::to_string)) {
            last.insert(k, i);
        }
    }
    last
}

/// Target tensors in the order they are finished (by last use, then name).
pub fn flush_order(plan: &InitPlan, planned: &BTreeMap<String, Vec<u64>>) -> Vec<String> {
    let last = last_uses(plan);
    let mut names: Vec<&String> = planned.keys().collect();
    names.sort_by_key(|n| (last.get(*n).copied().unwrap_or(0), (*n).clone()));
    names.into_iter().cloned().collect()
}

/// Run `plan`; `centroids` holds what its centroid-initialised routers need (see
/// [`super::centroids::compute`]); `stored_name` maps a target tensor to its name in the
/// output files.
pub fn execute(
    plan: &InitPlan,
    sources: &[CheckpointReader],
    centroids: &Centroids,
    writer: &mut ShardWriter,
    stored_name: impl Fn(&str) -> String,
    mut progress: impl FnMut(usize),
) -> Result<(), ExecuteError> {
    let last = last_uses(plan);
    let mut live = Live { tensors: HashMap::new(), sources, centroids, op: 0 };
    for (i, op) in plan.ops.iter().enumerate() {
        live.op = i;
        live.apply(op)?;
        // Write out and forget everything this op was the last to touch.
        let (reads, write) = touches(op);
        for k in reads.iter().map(String::as_str).chain(write) {
            if last.get(k) == Some(&i)
                && let Some(t) = live.tensors.remove(k)
                && !k.starts_with("source")
            {
                // A plan whose numbers overflow (a huge scale factor, mean or std) is
                // refused here rather than written as a model that computes NaN.
                if !crate::model::params::all_finite(&t).map_err(|e| live.tensor_err(e))? {
                    return Err(live.err(format!("`{k}` holds NaN or infinite values; check the plan's scale factors and distributions")));
                }
                writer.write(&stored_name(k), &t)?;
            }
        }
        progress(i + 1);
    }
    Ok(())
}

/// The tensors alive while a plan runs (source tensors read so far, target tensors not
/// yet written), the calibration centroids, and the op being executed, for errors.
struct Live<'a> {
    tensors: HashMap<String, Tensor>,
    sources: &'a [CheckpointReader],
    centroids: &'a Centroids,
    op: usize,
}

impl Live<'_> {
    fn err(&self, reason: String) -> ExecuteError {
        ExecuteError::Op { op: self.op, reason }
    }

    fn tensor_err(&self, e: candle_core::Error) -> ExecuteError {
        self.err(e.to_string())
    }

    /// The tensor `r` names: alive already, or read from its source checkpoint.
    fn fetch(&mut self, r: &TensorRef) -> Result<Tensor, ExecuteError> {
        let k = key(r);
        if let Some(t) = self.tensors.get(&k) {
            return Ok(t.clone());
        }
        let s = r.source.ok_or_else(|| self.err(format!("target tensor `{}` is not written by an earlier op", r.name)))?;
        let reader = self.sources.get(s as usize).ok_or_else(|| self.err(format!("no source {s}")))?;
        let t = reader.load_stored(&r.name)?;
        self.tensors.insert(k, t.clone());
        Ok(t)
    }

    /// A target tensor an earlier op wrote.
    fn written(&self, name: &str) -> Result<Tensor, ExecuteError> {
        self.tensors.get(name).cloned().ok_or_else(|| self.err(format!("`{name}` is not written yet")))
    }

    /// `n` values from `dist`, seeded; `matching` reads its reference tensor.
    fn draw(&mut self, dist: &Distribution, n: usize, seed: u64) -> Result<Vec<f32>, ExecuteError> {
        draw(dist, n, seed, &mut |r| self.fetch(r))
    }

    fn put(&mut self, name: &str, t: candle_core::Result<Tensor>) -> Result<(), ExecuteError> {
        let t = t.map_err(|e| self.tensor_err(e))?;
        self.tensors.insert(name.to_string(), t);
        Ok(())
    }

    /// Execute one op on the live tensors.
    fn apply(&mut self, op: &InitOp) -> Result<(), ExecuteError> {
        let cpu = &Device::Cpu;
        match op {
            InitOp::Copy(c) => {
                let t = self.fetch(&c.src)?;
                self.put(&c.dst, Ok(t))
            }
            InitOp::Gather(g) => {
                let t = self.fetch(&g.src)?;
                self.put(&g.dst, Tensor::from_slice(&g.indices, g.indices.len(), cpu).and_then(|idx| t.index_select(&idx, g.axis as usize)))
            }
            InitOp::Fill(f) => {
                let dims: Vec<usize> = f.shape.iter().map(|&d| d as usize).collect();
                let values = self.draw(&f.distribution, dims.iter().product(), f.seed)?;
                self.put(&f.dst, Tensor::from_vec(values, dims, cpu))
            }
            InitOp::Scale(s) => {
                let t = self.written(&s.tensor)?;
                let dim = t.dims()[s.axis as usize];
                let mut shape = vec![1usize; t.rank()];
                shape[s.axis as usize] = dim;
                let factors = Tensor::from_vec(scale_factors(s, dim), shape, cpu);
                self.put(&s.tensor, factors.and_then(|f| t.to_dtype(DType::F32)?.broadcast_mul(&f)))
            }
            InitOp::Reinit(r) => self.reinit(r),
            InitOp::Permute(p) => {
                let t = self.written(&p.tensor)?;
                self.put(&p.tensor, Tensor::from_slice(&p.order, p.order.len(), cpu).and_then(|idx| t.index_select(&idx, p.axis as usize)))
            }
            InitOp::Noise(n) => {
                let t = self.written(&n.tensor)?;
                let std = if n.relative { n.std as f64 * moments(&t).map_err(|e| self.tensor_err(e))?.1 } else { n.std as f64 };
                let mut rng = SplitMix64(n.seed);
                let noise: Vec<f32> = (0..t.elem_count()).map(|_| (rng.normal() * std) as f32).collect();
                self.put(&n.tensor, Tensor::from_vec(noise, t.dims(), cpu).and_then(|noise| t.to_dtype(DType::F32)? + noise))
            }
            InitOp::InitRouter(r) => {
                let values = self.router_rows(r)?;
                self.put(&r.dst, Tensor::from_vec(values, (r.experts as usize, r.hidden as usize), cpu))
            }
        }
    }

    /// Fresh values for the chosen slices of a tensor along an axis; the rest kept.
    fn reinit(&mut self, r: &ReinitOp) -> Result<(), ExecuteError> {
        let t = self.written(&r.tensor)?;
        let dims = t.dims().to_vec();
        let axis = r.axis as usize;
        let stride: usize = dims[axis + 1..].iter().product();
        let mut chosen = vec![false; dims[axis]];
        for &j in &r.indices {
            chosen[j as usize] = true;
        }
        let mut values: Vec<f32> = t.to_dtype(DType::F32).and_then(|x| x.flatten_all()).and_then(|x| x.to_vec1()).map_err(|e| self.tensor_err(e))?;
        let positions: Vec<usize> = (0..values.len()).filter(|&f| chosen[(f / stride) % dims[axis]]).collect();
        let fresh = self.draw(&r.distribution, positions.len(), r.seed)?;
        for (p, v) in positions.into_iter().zip(fresh) {
            values[p] = v;
        }
        self.put(&r.tensor, Tensor::from_vec(values, dims, &Device::Cpu))
    }

    /// The `[E, d]` router weight of an `init-router` op, row-major.
    fn router_rows(&mut self, r: &RouterInitOp) -> Result<Vec<f32>, ExecuteError> {
        let (e, d) = (r.experts as usize, r.hidden as usize);
        Ok(match &r.method {
            RouterInit::Normal(std) => self.draw(&Distribution::Normal(NormalParams { mean: 0.0, std: *std }), e * d, r.seed)?,
            RouterInit::UniformCentred(std) => self.draw(&Distribution::UniformCentred(*std), e * d, r.seed)?,
            RouterInit::Zeros => vec![0.0; e * d],
            RouterInit::VirtualGroup(g) => {
                // R = E / G random rows, each repeated G times: expert r·G + g uses row r.
                let g = *g as usize;
                let rows = self.draw(&Distribution::Normal(NormalParams { mean: 0.0, std: 0.02 }), (e / g) * d, r.seed)?;
                (0..e).flat_map(|x| rows[(x / g) * d..(x / g + 1) * d].to_vec()).collect()
            }
            RouterInit::EmbedCentroid => self.centroid_rows(self.centroids.embed(), "embed", (e, d), 1)?,
            RouterInit::HiddenCentroid => self.centroid_rows(self.centroids.hidden(r.layer).unwrap_or_default(), "hidden", (e, d), 1)?,
            RouterInit::GroupCentroid(p) => {
                // Every expert of group g starts at centroid g, then all rows get noise.
                let mut rows = self.centroid_rows(self.centroids.hidden(r.layer).unwrap_or_default(), "hidden", (e, d), e / (p.groups as usize).max(1))?;
                let noise = self.draw(&Distribution::Normal(NormalParams { mean: 0.0, std: p.noise_std }), e * d, r.seed)?;
                rows.iter_mut().zip(noise).for_each(|(x, n)| *x += n);
                rows
            }
        })
    }

    /// The `[experts, hidden]` rows, expert `x` taking centroid `x / per_centroid`.
    fn centroid_rows(&self, centroids: &[Vec<f32>], what: &str, (experts, hidden): (usize, usize), per_centroid: usize) -> Result<Vec<f32>, ExecuteError> {
        let wanted = experts.div_ceil(per_centroid.max(1));
        if centroids.len() != wanted {
            return Err(self.err(format!("{} {what} centroids were computed for this router, which needs {wanted}", centroids.len())));
        }
        if let Some(c) = centroids.iter().find(|c| c.len() != hidden) {
            return Err(self.err(format!("the {what} centroids are {} wide (the first source's hidden size), the router {hidden}", c.len())));
        }
        Ok((0..experts).flat_map(|x| centroids[x / per_centroid.max(1)].iter().copied()).collect())
    }
}

/// The factor of every slice along a `scale` op's axis: its factors for the listed
/// indices (or all slices), 1 elsewhere; one factor applies to all.
fn scale_factors(s: &ScaleOp, dim: usize) -> Vec<f32> {
    let factor = |j: usize| if s.factors.len() == 1 { s.factors[0] } else { s.factors[j] };
    let mut factors = vec![1f32; dim];
    if s.indices.is_empty() {
        for (j, f) in factors.iter_mut().enumerate() {
            *f = factor(j);
        }
    } else {
        for (j, &index) in s.indices.iter().enumerate() {
            factors[index as usize] = factor(j);
        }
    }
    factors
}

/// Mean and standard deviation of a tensor, in f64.
fn moments(t: &Tensor) -> candle_core::Result<(f64, f64)> {
    let v: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let n = v.len().max(1) as f64;
    let mean = v.iter().map(|&x| x as f64).sum::<f64>() / n;
    let var = v.iter().map(|&x| (x as f64 - mean).powi(2)).sum::<f64>() / n;
    Ok((mean, var.sqrt()))
}

/// `n` values from `dist`, seeded.
fn draw(dist: &Distribution, n: usize, seed: u64, fetch: &mut dyn FnMut(&TensorRef) -> Result<Tensor, ExecuteError>) -> Result<Vec<f32>, ExecuteError> {
    let mut rng = SplitMix64(seed);
    Ok(match dist {
        Distribution::Zeros => vec![0.0; n],
        Distribution::Constant(c) => vec![*c; n],
        Distribution::Normal(p) => (0..n).map(|_| (p.mean as f64 + rng.normal() * p.std as f64) as f32).collect(),
        Distribution::UniformCentred(std) => (0..n).map(|_| ((rng.uniform() - 0.5) * *std as f64 * 12f64.sqrt()) as f32).collect(),
        Distribution::Matching(r) => {
            let t = fetch(r)?;
            let (mean, std) = moments(&t).map_err(|e| ExecuteError::Op { op: 0, reason: e.to_string() })?;
            (0..n).map(|_| (mean + rng.normal() * std) as f32).collect()
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{FillOp, ModelShape, TargetModel};

    #[test]
    fn a_plan_whose_numbers_overflow_writes_nothing_and_names_the_tensor() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fill = InitOp::Fill(FillOp { dst: "w".into(), shape: vec![2, 3], distribution: Distribution::Normal(NormalParams { mean: 10.0, std: 0.1 }), seed: 1 });
        let scale = InitOp::Scale(ScaleOp { tensor: "w".into(), axis: 0, indices: vec![], factors: vec![f32::MAX] });
        let shape = ModelShape { layers: 1, hidden: 3, intermediate: 2, heads: 1, kv_heads: 1, head_dim: 2, vocab: 2, tied_embeddings: true };
        let plan = InitPlan { target: TargetModel { shape, moe_layers: vec![] }, ops: vec![fill, scale] };
        let mut writer = ShardWriter::create(dir.path(), &[("w".to_string(), vec![2, 3])], DType::F32, 1 << 30).expect("writer");
        let err = execute(&plan, &[], &Centroids::default(), &mut writer, |n| n.to_string(), |_| {}).expect_err("an infinite tensor was written");
        assert!(err.to_string().contains("plan op 1: `w` holds NaN or infinite values"), "{err}");
    }
}

//! Router rows from calibration centroids (METHODS.md §3.8; mergekit-moe's `hidden` and
//! `cheap_embed` gate modes), computed on the first source before the plan executes:
//!
//! - `embed-centroid`: row `e` = the mean of source 0's `model.embed_tokens.weight` rows
//!   over calibration set `e`'s tokens;
//! - `hidden-centroid`: row `e` = the mean, over set `e`'s tokens, of source 0's
//!   MoE-input hidden state at the router's layer: `post_attention_layernorm(h +
//!   attention(input_layernorm(h)))`, the normed tensor the layer's MLP (and so, once
//!   upcycled, its router) reads, not the raw residual stream. The text runs in windows
//!   of [`WINDOW`] tokens (fewer when the model's positions are fewer), every position
//!   counted (mergekit can take the last token instead; the sequence mean uses all the
//!   text);
//! - `group-centroid`: the hidden centroid of set `g` for every expert of group `g`
//!   (the executor adds the op's noise).
//!
//! Every centroid is scaled to unit length, as mergekit does, so a router logit is the
//! token's MoE input projected on the direction of each expert's text.

use std::collections::{BTreeMap, BTreeSet};

use candle_core::{DType, Device, Tensor};

use super::calibration::CalibrationSet;
use crate::contract::{InitOp, InitPlan, RouterInit};
use crate::model::checkpoint::CheckpointReader;
use crate::model::error::ModelError;
use crate::model::ops::rms_norm;
use crate::model::transformer::Transformer;

/// Longest window of calibration tokens one forward pass sees.
pub const WINDOW: usize = 512;

/// Windows per forward pass: bounds the attention scores held at once.
const WINDOWS_PER_PASS: usize = 8;

/// The unit-norm centroids a plan's routers need, one per calibration set.
#[derive(Debug, Default)]
pub struct Centroids {
    /// Mean token embedding of each set (empty when no op asks for it).
    embed: Vec<Vec<f32>>,
    /// For each layer an op asks for, the mean MoE input of each set.
    hidden: BTreeMap<u32, Vec<Vec<f32>>>,
}

/// Why the centroids a plan asks for cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum CentroidError {
    #[error(
        "plan op {op} initialises layer {layer}'s router with {method}, which needs one calibration text per {per} ({want}): give `recast upcycle --calibration TEXT` {want} times, in {per} order, but {got} {were} given"
    )]
    Count { op: usize, layer: u32, method: &'static str, per: &'static str, want: usize, got: usize, were: &'static str },
    #[error("plan op {op} initialises layer {layer}'s router from hidden states, but the first source has only {layers} layers")]
    NoLayer { op: usize, layer: u32, layers: usize },
    #[error("calibration {label}: token id {id} is outside the first source's vocabulary ({vocab}); tokenise with the source's tokenizer")]
    TokenOutOfRange { label: String, id: u32, vocab: usize },
    #[error("calibration {label}: its {what} centroid is {norm} long and cannot be scaled to unit length")]
    Degenerate { label: String, what: &'static str, norm: f64 },
    #[error("{0}")]
    Memory(String),
    #[error(transparent)]
    Model(#[from] ModelError),
}

impl Centroids {
    /// Whether no router asked for centroids.
    pub fn is_empty(&self) -> bool {
        self.embed.is_empty() && self.hidden.is_empty()
    }

    /// Each set's unit-norm mean token embedding, in set order (empty unless an op asks).
    pub fn embed(&self) -> &[Vec<f32>] {
        &self.embed
    }

    /// Each set's unit-norm mean MoE input at `layer`, if an op asked for that layer.
    pub fn hidden(&self, layer: u32) -> Option<&[Vec<f32>]> {
        self.hidden.get(&layer).map(Vec::as_slice)
    }
}

/// What the plan's routers ask for: an embedding centroid, and the layers of hidden
/// ones. Each op must get exactly its number of calibration sets.
fn needs(plan: &InitPlan, sets: usize) -> Result<(bool, BTreeSet<u32>), CentroidError> {
    let (mut embed, mut layers) = (false, BTreeSet::new());
    for (op, init) in plan.ops.iter().enumerate() {
        let InitOp::InitRouter(r) = init else { continue };
        let (method, per, want) = match &r.method {
            RouterInit::HiddenCentroid => ("hidden-centroid", "expert", r.experts as usize),
            RouterInit::EmbedCentroid => ("embed-centroid", "expert", r.experts as usize),
            RouterInit::GroupCentroid(p) => ("group-centroid", "expert group", p.groups as usize),
            _ => continue,
        };
        if sets != want {
            return Err(CentroidError::Count { op, layer: r.layer, method, per, want, got: sets, were: if sets == 1 { "was" } else { "were" } });
        }
        match r.method {
            RouterInit::EmbedCentroid => embed = true,
            _ => {
                layers.insert(r.layer);
            }
        }
    }
    Ok((embed, layers))
}

/// The centroids `plan` needs from `sets`, on `source` (the first source); nothing is
/// read when no router asks for centroids.
pub fn compute(plan: &InitPlan, source: &CheckpointReader, sets: &[CalibrationSet]) -> Result<Centroids, CentroidError> {
    let (embed, layers) = needs(plan, sets.len())?;
    if !embed && layers.is_empty() {
        return Ok(Centroids::default());
    }
    let vocab = source.config.vocab_size;
    for set in sets {
        if let Some(&id) = set.tokens.iter().find(|&&t| t as usize >= vocab) {
            return Err(CentroidError::TokenOutOfRange { label: set.label.clone(), id, vocab });
        }
    }
    let mut centroids = Centroids::default();
    if embed {
        let table = source.load("model.embed_tokens.weight", DType::F32)?;
        for set in sets {
            let ids = Tensor::from_slice(&set.tokens, set.tokens.len(), &Device::Cpu).map_err(ModelError::from)?;
            let sum: Vec<f32> = table.index_select(&ids, 0).and_then(|rows| rows.sum(0)).and_then(|s| s.to_vec1()).map_err(ModelError::from)?;
            centroids.embed.push(unit(sum.iter().map(|&x| x as f64).collect(), &set.label, "embedding")?);
        }
    }
    if let Some(&last) = layers.last() {
        let layers_in_source = source.config.num_layers;
        if last as usize >= layers_in_source {
            let op = plan.ops.iter().position(|o| matches!(o, InitOp::InitRouter(r) if r.layer == last)).unwrap_or(0);
            return Err(CentroidError::NoLayer { op, layer: last, layers: layers_in_source });
        }
        let model = load_model(source)?;
        let mut per_layer: BTreeMap<u32, Vec<Vec<f32>>> = layers.iter().map(|&l| (l, Vec::new())).collect();
        for set in sets {
            for (layer, mean) in mean_mlp_inputs(&model, &set.tokens, &layers)? {
                let centroid = unit(mean, &set.label, "hidden-state")?;
                per_layer.entry(layer).or_default().push(centroid);
            }
        }
        centroids.hidden = per_layer;
    }
    Ok(centroids)
}

/// The first source as a model in f32, refused up front when it cannot fit in memory.
fn load_model(source: &CheckpointReader) -> Result<Transformer, CentroidError> {
    let elements: u128 = source.tensors().values().map(|l| l.shape.iter().map(|&d| d as u128).product::<u128>()).sum();
    crate::memory::ensure_fits("the first source in f32 (for hidden-state centroids)", elements * 4).map_err(CentroidError::Memory)?;
    let params = source.load_all(DType::F32)?;
    Ok(Transformer::new(&source.config, &params, &source.dir.display().to_string())?)
}

/// The mean MoE input of `tokens` at each of `layers`, in f64: the text in windows of
/// [`WINDOW`] tokens (or the model's positions), a few windows per forward pass.
fn mean_mlp_inputs(model: &Transformer, tokens: &[u32], layers: &BTreeSet<u32>) -> Result<BTreeMap<u32, Vec<f64>>, ModelError> {
    let window = WINDOW.min(model.config.max_position_embeddings).max(1);
    let d = model.config.hidden_size;
    let mut sums: BTreeMap<u32, Vec<f64>> = layers.iter().map(|&l| (l, vec![0f64; d])).collect();
    let full = tokens.len() / window * window;
    for pass in tokens[..full].chunks(window * WINDOWS_PER_PASS) {
        add_mlp_inputs(model, pass, pass.len() / window, &mut sums)?;
    }
    if full < tokens.len() {
        add_mlp_inputs(model, &tokens[full..], 1, &mut sums)?;
    }
    let n = tokens.len() as f64;
    Ok(sums.into_iter().map(|(l, s)| (l, s.into_iter().map(|x| x / n).collect())).collect())
}

/// Add, for each layer in `sums`, its MoE input summed over `tokens` (`batch` sequences
/// laid end to end). The input is taken as the model's MLP step takes it, after the
/// layer's attention residual and post-attention norm; layers above the last one asked
/// for are not run.
fn add_mlp_inputs(model: &Transformer, tokens: &[u32], batch: usize, sums: &mut BTreeMap<u32, Vec<f64>>) -> Result<(), ModelError> {
    let Some(&last) = sums.keys().last() else { return Ok(()) };
    let (mut h, pass) = model.embed_tokens(tokens, batch)?;
    for l in 0..=last as usize {
        h = model.attention_residual(l, &h, &pass)?;
        if let Some(sum) = sums.get_mut(&(l as u32)) {
            let x = rms_norm(&h, &model.blocks[l].post_attention_norm, model.config.rms_norm_eps)?;
            let column_sums: Vec<f32> = x.to_dtype(DType::F32)?.sum(0)?.to_vec1()?;
            for (acc, v) in sum.iter_mut().zip(column_sums) {
                *acc += v as f64;
            }
        }
        if l < last as usize {
            h = model.mlp_residual(l, &h, None, Default::default())?.0;
        }
    }
    Ok(())
}

/// `v / |v|` in f32; a zero or non-finite centroid is refused, naming the set.
fn unit(v: Vec<f64>, label: &str, what: &'static str) -> Result<Vec<f32>, CentroidError> {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        return Err(CentroidError::Degenerate { label: label.to_string(), what, norm });
    }
    Ok(v.into_iter().map(|x| (x / norm) as f32).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::contract::{GroupCentroidParams, ModelShape, RouterInitOp, TargetModel};

    fn plan(method: RouterInit) -> InitPlan {
        let shape = ModelShape { layers: 2, hidden: 4, intermediate: 8, heads: 1, kv_heads: 1, head_dim: 4, vocab: 16, tied_embeddings: false };
        let op = InitOp::InitRouter(RouterInitOp { dst: "model.layers.1.mlp.gate.weight".into(), layer: 1, experts: 6, hidden: 4, method, seed: 0 });
        InitPlan { target: TargetModel { shape, moe_layers: vec![] }, ops: vec![op] }
    }

    #[test]
    fn each_method_asks_for_one_text_per_expert_or_group_and_says_so() {
        assert!(needs(&plan(RouterInit::EmbedCentroid), 6).expect("six experts").0);
        assert_eq!(needs(&plan(RouterInit::HiddenCentroid), 6).expect("six experts").1, BTreeSet::from([1]));
        let group = RouterInit::GroupCentroid(GroupCentroidParams { groups: 3, noise_std: 0.02 });
        assert_eq!(needs(&plan(group), 3).expect("three groups").1, BTreeSet::from([1]));
        let err = needs(&plan(group), 6).expect_err("six texts for three groups").to_string();
        assert!(err.contains("op 0") && err.contains("group-centroid") && err.contains("per expert group (3)") && err.contains("but 6 were given"), "{err}");
        let err = needs(&plan(RouterInit::HiddenCentroid), 0).expect_err("none given").to_string();
        assert!(err.contains("hidden-centroid") && err.contains("--calibration TEXT` 6 times"), "{err}");
        assert!(needs(&plan(RouterInit::Normal(0.02)), 0).is_ok());
    }

    #[test]
    fn centroids_are_unit_length_and_a_zero_one_is_refused() {
        let v = unit(vec![3.0, 4.0], "x", "embedding").expect("unit");
        assert_eq!(v, vec![0.6, 0.8]);
        assert!(unit(vec![0.0, 0.0], "zeros.txt", "embedding").expect_err("zero").to_string().contains("zeros.txt"));
    }
}

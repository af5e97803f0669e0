//! AquilaMoE's Scale-Up (METHODS.md §3.5): a wider and deeper dense model from a smaller
//! one. Width by function-preserving initialisation (FPI, Net2Net/bert2BERT): new hidden
//! units, heads and FFN neurons copy existing ones left to right; weights that read a
//! grown dimension are split by each unit's multiplicity. Depth by stacking or
//! interpolation, where inserted copies may start as identity blocks. With integer width
//! factors the grown model computes exactly the source's function.

use recast_sdk::init_scheme::build::{copy, gather};
use recast_sdk::init_scheme::*;
use serde::Deserialize;

/// Parameters; see README.md.
#[derive(Deserialize)]
#[serde(default, deny_unknown_fields)]
struct Params {
    hidden: Option<u32>,
    intermediate: Option<u32>,
    heads: Option<u32>,
    kv_heads: Option<u32>,
    layers: Option<u32>,
    depth: String,
    identity_copies: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params { hidden: None, intermediate: None, heads: None, kv_heads: None, layers: None, depth: "interpolate".into(), identity_copies: true }
    }
}

struct ScaleUp {
    p: Params,
}

impl Plugin for ScaleUp {
    type Config = Params;

    fn new(p: Params, _: &Context) -> Result<Self, String> {
        if !matches!(p.depth.as_str(), "stack" | "interpolate") {
            return Err(format!("depth must be \"stack\" or \"interpolate\", not {:?}", p.depth));
        }
        Ok(ScaleUp { p })
    }
}

/// `g(j) = j mod n` for `j < m`: unit `j` of the grown dimension copies unit `g(j)`.
fn unit_map(m: u32, n: u32) -> Vec<u32> {
    (0..m).map(|j| j % n).collect()
}

/// For each grown unit, 1 / (how many grown units copy its source unit).
fn split_factors(map: &[u32], n: u32) -> Vec<f32> {
    let mut count = vec![0u32; n as usize];
    for &s in map {
        count[s as usize] += 1;
    }
    map.iter().map(|&s| 1.0 / count[s as usize] as f32).collect()
}

/// Rows of whole heads: head `h'` of the grown tensor copies head `heads[h']`.
fn head_rows(heads: &[u32], head_dim: u32) -> Vec<u32> {
    heads.iter().flat_map(|&h| (0..head_dim).map(move |i| h * head_dim + i)).collect()
}

/// Per-column factors repeating each head's factor over its `head_dim` columns.
fn per_head(factors: &[f32], head_dim: u32) -> Vec<f32> {
    factors.iter().flat_map(|&f| std::iter::repeat_n(f, head_dim as usize)).collect()
}

/// Ops that build `dst` from `src`: rows through `rows` (copied), columns through
/// `cols` (copied, then multiplied by `col_factors`); `None` keeps an axis as is.
fn grow(ops: &mut Vec<InitOp>, src: TensorRef, dst: &str, rows: Option<&[u32]>, cols: Option<(&[u32], &[f32])>) {
    let mut current = src;
    if let Some(rows) = rows {
        ops.push(gather(current, dst, 0, rows.to_vec()));
        current = TensorRef::target(dst);
    }
    if let Some((cols, factors)) = cols {
        ops.push(gather(current, dst, 1, cols.to_vec()));
        current = TensorRef::target(dst);
        if factors.iter().any(|&f| f != 1.0) {
            ops.push(InitOp::Scale(ScaleOp { tensor: dst.to_string(), axis: 1, indices: vec![], factors: factors.to_vec() }));
        }
    }
    if current.source.is_some() {
        ops.push(InitOp::Copy(CopyOp { src: current, dst: dst.to_string() }));
    }
}

impl InitScheme for ScaleUp {
    fn plan(&mut self, sources: &[SourceModel]) -> Result<InitPlan, String> {
        let [src] = sources else {
            return Err(format!("Scale-Up takes exactly one dense source, got {}", sources.len()));
        };
        let s = src.shape;
        let p = &self.p;
        let (d, ff, h, kv, hd, l) = (s.hidden, s.intermediate, s.heads, s.kv_heads, s.head_dim, s.layers);
        let d2 = p.hidden.unwrap_or(d);
        let ff2 = p.intermediate.unwrap_or(ff);
        let h2 = p.heads.unwrap_or(h * d2 / d);
        let kv2 = p.kv_heads.unwrap_or(kv * h2 / h);
        let l2 = p.layers.unwrap_or(l);
        if d2 < d || ff2 < ff || h2 < h || kv2 < kv || l2 < l {
            return Err(format!("Scale-Up only grows: {d}→{d2} hidden, {ff}→{ff2} FFN, {h}→{h2} heads, {kv}→{kv2} kv heads, {l}→{l2} layers"));
        }
        if !h2.is_multiple_of(kv2) || h2 / kv2 != h / kv {
            return Err(format!("{h2} heads over {kv2} kv heads changes the grouped-query group size {} of the source", h / kv));
        }
        if s.tied_embeddings && d2 != d {
            return Err("the source ties its embeddings and head; widening needs them untied (the head reads the grown dimension, the embedding writes it)".into());
        }
        let names: Vec<&str> = src.tensors.iter().map(|t| t.name.as_str()).collect();
        let has = |n: &str| names.contains(&n);

        let hidden = unit_map(d2, d);
        let hidden_split = split_factors(&hidden, d);
        let neurons = unit_map(ff2, ff);
        let neuron_split = split_factors(&neurons, ff);
        let q_heads = unit_map(h2, h);
        let kv_heads = unit_map(kv2, kv);
        let q_rows = head_rows(&q_heads, hd);
        let kv_rows = head_rows(&kv_heads, hd);
        let o_split = per_head(&split_factors(&q_heads, h), hd);

        let mut ops = Vec::new();
        let source = |name: &str| TensorRef::source(src.index, name);
        grow(&mut ops, source("model.embed_tokens.weight"), "model.embed_tokens.weight", None, Some((&hidden, &vec![1.0; hidden.len()])));
        grow(&mut ops, source("model.norm.weight"), "model.norm.weight", Some(&hidden), None);
        if has("lm_head.weight") {
            grow(&mut ops, source("lm_head.weight"), "lm_head.weight", None, Some((&hidden, &hidden_split)));
        }
        for layer in 0..l2 {
            let (from, inserted) = match p.depth.as_str() {
                "stack" => (layer % l, layer >= l),
                _ => {
                    let from = (layer as u64 * l as u64 / l2 as u64) as u32;
                    (from, layer > 0 && (((layer - 1) as u64 * l as u64 / l2 as u64) as u32) == from)
                }
            };
            let sp = format!("model.layers.{from}");
            let tp = format!("model.layers.{layer}");
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                grow(&mut ops, source(&format!("{sp}.{norm}.weight")), &format!("{tp}.{norm}.weight"), Some(&hidden), None);
            }
            for (proj, rows) in [("q_proj", &q_rows), ("k_proj", &kv_rows), ("v_proj", &kv_rows)] {
                grow(&mut ops, source(&format!("{sp}.self_attn.{proj}.weight")), &format!("{tp}.self_attn.{proj}.weight"), Some(rows), Some((&hidden, &hidden_split)));
                let bias = format!("{sp}.self_attn.{proj}.bias");
                if has(&bias) {
                    grow(&mut ops, source(&bias), &format!("{tp}.self_attn.{proj}.bias"), Some(rows), None);
                }
            }
            let o = format!("{tp}.self_attn.o_proj.weight");
            grow(&mut ops, source(&format!("{sp}.self_attn.o_proj.weight")), &o, Some(&hidden), Some((&q_rows, &o_split)));
            if has(&format!("{sp}.self_attn.o_proj.bias")) {
                grow(&mut ops, source(&format!("{sp}.self_attn.o_proj.bias")), &format!("{tp}.self_attn.o_proj.bias"), Some(&hidden), None);
            }
            for proj in ["gate_proj", "up_proj"] {
                grow(&mut ops, source(&format!("{sp}.mlp.{proj}.weight")), &format!("{tp}.mlp.{proj}.weight"), Some(&neurons), Some((&hidden, &hidden_split)));
            }
            let down = format!("{tp}.mlp.down_proj.weight");
            grow(&mut ops, source(&format!("{sp}.mlp.down_proj.weight")), &down, Some(&hidden), Some((&neurons, &neuron_split)));
            if inserted && p.identity_copies {
                // A block whose attention and MLP write nothing is the identity.
                for t in [o.as_str(), down.as_str()] {
                    ops.push(InitOp::Scale(ScaleOp { tensor: t.to_string(), axis: 0, indices: vec![], factors: vec![0.0] }));
                }
            }
        }
        if ops.is_empty() {
            ops.extend(src.tensors.iter().map(|t| copy(src.index, &t.name, t.name.clone())));
        }
        let shape = ModelShape { layers: l2, hidden: d2, intermediate: ff2, heads: h2, kv_heads: kv2, head_dim: hd, vocab: s.vocab, tied_embeddings: s.tied_embeddings };
        Ok(InitPlan { target: TargetModel { shape, moe_layers: vec![] }, ops })
    }
}

recast_sdk::export_init_scheme!(ScaleUp);

//! Whole-plan validation: every op is checked against the shapes the ops before it
//! produced, so that an invalid plan is refused before the executor writes a byte.

use std::collections::{BTreeMap, HashMap};

use super::{Distribution, InitOp, InitPlan, ModelShape, RouterInit, SourceModel, TargetModel, TensorRef};
pub use crate::contract::PlannedTensors;
use crate::plugins::error::OutputViolation;

/// Largest tensor a plan may create, in elements (2^40, far above any real layer).
const MAX_ELEMENTS: u64 = 1 << 40;

struct Shapes<'a> {
    sources: HashMap<(u32, &'a str), &'a [u64]>,
    target: PlannedTensors,
}

impl<'a> Shapes<'a> {
    fn get(&self, r: &TensorRef, field: &str) -> Result<Vec<u64>, OutputViolation> {
        let found = match r.source {
            Some(s) => self.sources.get(&(s, r.name.as_str())).map(|s| s.to_vec()),
            None => self.target.get(&r.name).cloned(),
        };
        found.ok_or_else(|| OutputViolation::Unknown {
            field: field.to_string(),
            what: match r.source {
                Some(_) => "source tensor",
                None => "target tensor (not written by an earlier op)",
            },
            name: match r.source {
                Some(s) => format!("{}#{s}", r.name),
                None => r.name.clone(),
            },
        })
    }

    fn target(&self, name: &str, field: &str) -> Result<Vec<u64>, OutputViolation> {
        self.get(&TensorRef { source: None, name: name.to_string() }, field)
    }
}

/// Check `plan` against `sources`; on success, the shapes of every tensor it writes.
pub fn validate_plan(plan: &InitPlan, sources: &[SourceModel]) -> Result<PlannedTensors, OutputViolation> {
    validate_target(&plan.target)?;
    let mut shapes = Shapes { sources: HashMap::new(), target: BTreeMap::new() };
    for source in sources {
        for t in &source.tensors {
            shapes.sources.insert((source.index, t.name.as_str()), t.shape.as_slice());
        }
    }
    for (i, op) in plan.ops.iter().enumerate() {
        validate_op(op, i, &plan.target, &mut shapes)?;
    }
    Ok(shapes.target)
}

fn validate_target(target: &TargetModel) -> Result<(), OutputViolation> {
    let ModelShape { layers, hidden, intermediate, heads, kv_heads, head_dim, vocab, .. } = target.shape;
    for (name, value) in [("layers", layers), ("hidden", hidden), ("intermediate", intermediate), ("heads", heads), ("kv-heads", kv_heads), ("head-dim", head_dim), ("vocab", vocab)] {
        OutputViolation::within(|| format!("target.shape.{name}"), value as f64, 1.0, f64::INFINITY, ">= 1")?;
    }
    if heads % kv_heads != 0 {
        return Err(OutputViolation::Inconsistent { field: "target.shape".into(), reason: format!("{heads} heads are not a multiple of {kv_heads} kv-heads") });
    }
    let mut seen = Vec::new();
    for (i, m) in target.moe_layers.iter().enumerate() {
        let f = |name: &str| format!("target.moe-layers[{i}].{name}");
        OutputViolation::index(|| f("layer"), m.layer as u64, layers as u64)?;
        if seen.contains(&m.layer) {
            return Err(OutputViolation::Duplicate { field: "target.moe-layers".into(), index: m.layer as u64 });
        }
        seen.push(m.layer);
        OutputViolation::within(|| f("experts"), m.experts as f64, 1.0, f64::INFINITY, ">= 1")?;
        OutputViolation::within(|| f("top-k"), m.top_k as f64, 1.0, m.experts as f64, &format!("1 ..= {} experts", m.experts))?;
        OutputViolation::within(|| f("expert-intermediate"), m.expert_intermediate as f64, 1.0, f64::INFINITY, ">= 1")?;
        if (m.shared_experts == 0) != (m.shared_intermediate == 0) {
            return Err(OutputViolation::Inconsistent { field: f("shared-intermediate"), reason: "must be > 0 exactly when there are shared experts".into() });
        }
    }
    Ok(())
}

fn validate_op(op: &InitOp, i: usize, target: &TargetModel, shapes: &mut Shapes<'_>) -> Result<(), OutputViolation> {
    let at = |name: &str| format!("ops[{i}].{name}");
    match op {
        InitOp::Copy(c) => {
            let shape = shapes.get(&c.src, &at("src"))?;
            shapes.target.insert(c.dst.clone(), shape);
        }
        InitOp::Gather(g) => {
            let mut shape = shapes.get(&g.src, &at("src"))?;
            let dim = axis_len(&shape, g.axis, &at("axis"))?;
            if g.indices.is_empty() {
                return Err(OutputViolation::Inconsistent { field: at("indices"), reason: "gathers nothing".into() });
            }
            for (j, &index) in g.indices.iter().enumerate() {
                OutputViolation::index(|| at(&format!("indices[{j}]")), index as u64, dim)?;
            }
            shape[g.axis as usize] = g.indices.len() as u64;
            shapes.target.insert(g.dst.clone(), shape);
        }
        InitOp::Fill(fill) => {
            check_new_shape(&fill.shape, &at("shape"))?;
            validate_distribution(&fill.distribution, &at("distribution"), shapes)?;
            shapes.target.insert(fill.dst.clone(), fill.shape.clone());
        }
        InitOp::Scale(s) => {
            let shape = shapes.target(&s.tensor, &at("tensor"))?;
            let dim = axis_len(&shape, s.axis, &at("axis"))?;
            check_indices(&s.indices, dim, &at("indices"), false)?;
            let slices = if s.indices.is_empty() { dim as usize } else { s.indices.len() };
            if s.factors.len() != 1 {
                OutputViolation::length(|| at("factors"), slices, s.factors.len())?;
            }
            for (j, &f) in s.factors.iter().enumerate() {
                OutputViolation::finite(|| at(&format!("factors[{j}]")), f as f64)?;
            }
        }
        InitOp::Reinit(r) => {
            let shape = shapes.target(&r.tensor, &at("tensor"))?;
            let dim = axis_len(&shape, r.axis, &at("axis"))?;
            check_indices(&r.indices, dim, &at("indices"), true)?;
            validate_distribution(&r.distribution, &at("distribution"), shapes)?;
        }
        InitOp::Permute(p) => {
            let shape = shapes.target(&p.tensor, &at("tensor"))?;
            let dim = axis_len(&shape, p.axis, &at("axis"))?;
            OutputViolation::length(|| at("order"), dim as usize, p.order.len())?;
            check_indices(&p.order, dim, &at("order"), true)?;
        }
        InitOp::Noise(n) => {
            shapes.target(&n.tensor, &at("tensor"))?;
            OutputViolation::within(|| at("std"), n.std as f64, 0.0, f64::INFINITY, ">= 0")?;
        }
        InitOp::InitRouter(r) => {
            let moe =
                target.moe_layers.iter().find(|m| m.layer == r.layer).ok_or_else(|| OutputViolation::Unknown { field: at("layer"), what: "MoE layer of the target", name: r.layer.to_string() })?;
            if r.experts != moe.experts || r.hidden != target.shape.hidden {
                return Err(OutputViolation::Inconsistent {
                    field: at("experts/hidden"),
                    reason: format!("router is {}x{}, but layer {} has {} experts and hidden {}", r.experts, r.hidden, r.layer, moe.experts, target.shape.hidden),
                });
            }
            match &r.method {
                RouterInit::Normal(std) | RouterInit::UniformCentred(std) => {
                    OutputViolation::within(|| at("method.std"), *std as f64, 0.0, f64::INFINITY, ">= 0")?;
                }
                RouterInit::VirtualGroup(g) => check_groups(*g, r.experts, &at("method.virtual-group"))?,
                RouterInit::GroupCentroid(p) => {
                    check_groups(p.groups, r.experts, &at("method.groups"))?;
                    OutputViolation::within(|| at("method.noise-std"), p.noise_std as f64, 0.0, f64::INFINITY, ">= 0")?;
                }
                RouterInit::Zeros | RouterInit::HiddenCentroid | RouterInit::EmbedCentroid => {}
            }
            shapes.target.insert(r.dst.clone(), vec![r.experts as u64, r.hidden as u64]);
        }
    }
    Ok(())
}

fn axis_len(shape: &[u64], axis: u32, field: &str) -> Result<u64, OutputViolation> {
    OutputViolation::index(|| field.to_string(), axis as u64, shape.len() as u64)?;
    Ok(shape[axis as usize])
}

fn check_indices(indices: &[u32], dim: u64, field: &str, distinct: bool) -> Result<(), OutputViolation> {
    let mut seen = vec![false; if distinct { dim as usize } else { 0 }];
    for (j, &index) in indices.iter().enumerate() {
        OutputViolation::index(|| format!("{field}[{j}]"), index as u64, dim)?;
        if distinct {
            if seen[index as usize] {
                return Err(OutputViolation::Duplicate { field: field.to_string(), index: index as u64 });
            }
            seen[index as usize] = true;
        }
    }
    Ok(())
}

fn check_new_shape(shape: &[u64], field: &str) -> Result<(), OutputViolation> {
    if shape.is_empty() {
        return Err(OutputViolation::Inconsistent { field: field.to_string(), reason: "a tensor needs at least one dimension".into() });
    }
    let mut elements = 1u64;
    for (j, &d) in shape.iter().enumerate() {
        OutputViolation::within(|| format!("{field}[{j}]"), d as f64, 1.0, f64::INFINITY, ">= 1")?;
        elements = elements.saturating_mul(d);
    }
    if elements > MAX_ELEMENTS {
        return Err(OutputViolation::OutOfRange { field: field.to_string(), value: elements as f64, allowed: format!("<= {MAX_ELEMENTS} elements") });
    }
    Ok(())
}

fn check_groups(groups: u32, experts: u32, field: &str) -> Result<(), OutputViolation> {
    if groups == 0 || !experts.is_multiple_of(groups) {
        return Err(OutputViolation::Inconsistent { field: field.to_string(), reason: format!("{groups} does not divide {experts} experts") });
    }
    Ok(())
}

fn validate_distribution(d: &Distribution, field: &str, shapes: &Shapes<'_>) -> Result<(), OutputViolation> {
    match d {
        Distribution::Zeros => Ok(()),
        Distribution::Constant(c) => OutputViolation::finite(|| format!("{field}.constant"), *c as f64),
        Distribution::Normal(p) => {
            OutputViolation::finite(|| format!("{field}.mean"), p.mean as f64)?;
            OutputViolation::within(|| format!("{field}.std"), p.std as f64, 0.0, f64::INFINITY, ">= 0")
        }
        Distribution::UniformCentred(std) => OutputViolation::within(|| format!("{field}.std"), *std as f64, 0.0, f64::INFINITY, ">= 0"),
        Distribution::Matching(r) => shapes.get(r, &format!("{field}.matching")).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::init_scheme::{CopyOp, GatherOp, MoeLayerShape, NormalParams, PermuteOp, RouterInitOp, ScaleOp, TensorInfo};

    fn source() -> SourceModel {
        SourceModel {
            index: 0,
            architecture: "llama".into(),
            shape: ModelShape { layers: 1, hidden: 4, intermediate: 8, heads: 2, kv_heads: 1, head_dim: 2, vocab: 10, tied_embeddings: true },
            tensors: vec![TensorInfo { name: "w".into(), shape: vec![8, 4] }],
        }
    }

    fn plan(ops: Vec<InitOp>) -> InitPlan {
        let moe = MoeLayerShape { layer: 0, experts: 2, expert_intermediate: 4, top_k: 1, shared_experts: 0, shared_intermediate: 0 };
        InitPlan { target: TargetModel { shape: source().shape, moe_layers: vec![moe] }, ops }
    }

    fn gather(indices: Vec<u32>) -> InitOp {
        InitOp::Gather(GatherOp { src: TensorRef { source: Some(0), name: "w".into() }, dst: "e0".into(), axis: 0, indices })
    }

    #[test]
    fn a_valid_plan_reports_the_shapes_it_writes() {
        let ops = vec![
            gather(vec![0, 2, 4, 6]),
            InitOp::Scale(ScaleOp { tensor: "e0".into(), axis: 0, indices: vec![], factors: vec![0.5] }),
            InitOp::Permute(PermuteOp { tensor: "e0".into(), axis: 1, order: vec![3, 2, 1, 0] }),
            InitOp::Copy(CopyOp { src: TensorRef { source: None, name: "e0".into() }, dst: "e1".into() }),
            InitOp::InitRouter(RouterInitOp { dst: "r".into(), layer: 0, experts: 2, hidden: 4, method: RouterInit::Normal(0.02), seed: 1 }),
        ];
        let shapes = validate_plan(&plan(ops), &[source()]).unwrap();
        assert_eq!(shapes["e0"], vec![4, 4]);
        assert_eq!(shapes["e1"], vec![4, 4]);
        assert_eq!(shapes["r"], vec![2, 4]);
    }

    #[test]
    fn bad_plans_are_refused_with_the_op_and_field() {
        let src = [source()];
        let err = validate_plan(&plan(vec![gather(vec![0, 8])]), &src).unwrap_err();
        assert_eq!(err, OutputViolation::IndexOutOfRange { field: "ops[0].indices[1]".into(), index: 8, bound: 8 });
        let missing = InitOp::Copy(CopyOp { src: TensorRef { source: Some(0), name: "nope".into() }, dst: "x".into() });
        assert!(matches!(validate_plan(&plan(vec![missing]), &src).unwrap_err(), OutputViolation::Unknown { .. }));
        let not_perm = InitOp::Permute(PermuteOp { tensor: "e0".into(), axis: 0, order: vec![0, 0, 1, 2] });
        assert!(matches!(validate_plan(&plan(vec![gather(vec![0, 1, 2, 3]), not_perm]), &src).unwrap_err(), OutputViolation::Duplicate { .. }));
        let wrong_router = InitOp::InitRouter(RouterInitOp { dst: "r".into(), layer: 0, experts: 3, hidden: 4, method: RouterInit::Zeros, seed: 0 });
        assert!(matches!(validate_plan(&plan(vec![wrong_router]), &src).unwrap_err(), OutputViolation::Inconsistent { .. }));
        let nan = InitOp::Fill(crate::plugins::init_scheme::FillOp { dst: "f".into(), shape: vec![2, 2], distribution: Distribution::Normal(NormalParams { mean: f32::NAN, std: 1.0 }), seed: 0 });
        assert!(matches!(validate_plan(&plan(vec![nan]), &src).unwrap_err(), OutputViolation::NotFinite { .. }));
        let scale_before_write = InitOp::Scale(ScaleOp { tensor: "e9".into(), axis: 0, indices: vec![], factors: vec![2.0] });
        assert!(matches!(validate_plan(&plan(vec![scale_before_write]), &src).unwrap_err(), OutputViolation::Unknown { .. }));
    }
}

//! Properties of the MoE layer from METHODS.md §1–2, each checked against a value
//! computed another way: the sparse-upcycling identity, equivalent orders, Skywork
//! normalisation, selection bias, capacity limits.

use candle_core::{D, DType, Device, Tensor};
use recast::model::ffn::Ffn;
use recast::model::init::SplitMix64;
use recast::moe::gates::{router_scores, token_choice_gates};
use recast::moe::layer::MoeLayer;
use recast::moe::selection::top_k;
use recast::moe::spec::{Capacity, DropPolicy, LogitNorm, RouterSpec, RoutingMode, SelectionBias, TopkOrder};

const D_MODEL: usize = 16;

fn randn(rng: &mut SplitMix64, dims: &[usize], std: f64) -> Tensor {
    let n: usize = dims.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.normal() * std) as f32).collect();
    Tensor::from_vec(v, dims, &Device::Cpu).expect("tensor")
}

fn ffn(rng: &mut SplitMix64, width: usize) -> Ffn {
    Ffn { gate: randn(rng, &[width, D_MODEL], 0.3), up: randn(rng, &[width, D_MODEL], 0.3), down: randn(rng, &[D_MODEL, width], 0.3) }
}

fn spec(k: u32, renormalize: bool) -> RouterSpec {
    RouterSpec { renormalize, ..RouterSpec::softmax_topk(k) }
}

fn layer(experts: Vec<Ffn>, router: Tensor, spec: RouterSpec) -> MoeLayer {
    let e = experts.len();
    MoeLayer { layer: 0, router, experts, shared: vec![], shared_gate: None, spec, selection_bias: vec![0.0; e], coefficients: Default::default() }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).expect("sub").abs().expect("abs").flatten_all().expect("flat").max(0).expect("max").to_scalar::<f32>().expect("scalar")
}

#[test]
fn identical_experts_reproduce_the_dense_ffn_for_every_k() {
    let mut rng = SplitMix64(1);
    let dense = ffn(&mut rng, 24);
    let x = randn(&mut rng, &[40, D_MODEL], 1.0);
    let router = randn(&mut rng, &[8, D_MODEL], 1.0);
    let want = dense.forward(&x).expect("dense");
    for k in 1..=8 {
        let moe = layer(vec![dense.clone(); 8], router.clone(), spec(k, true));
        let got = moe.forward(&x).expect("moe").output;
        assert!(max_abs_diff(&got, &want) < 1e-5, "k={k}: MoE of copies differs from the dense FFN by {}", max_abs_diff(&got, &want));
    }
    // Without renormalisation the output is the dense one scaled by the chosen mass.
    let moe = layer(vec![dense.clone(); 8], router.clone(), spec(2, false));
    let got = moe.forward(&x).expect("moe").output;
    let probs = router_scores(&x.matmul(&router.t().expect("t")).expect("z"), &moe.spec).expect("scores").scores.to_vec2::<f32>().expect("vec");
    let mass: Vec<f32> = probs
        .iter()
        .map(|row| {
            let mut chosen = vec![];
            top_k(row, 2, &mut chosen);
            chosen.iter().map(|&e| row[e as usize]).sum()
        })
        .collect();
    let mass = Tensor::from_vec(mass, (40, 1), &Device::Cpu).expect("mass");
    assert!(max_abs_diff(&got, &want.broadcast_mul(&mass).expect("mul")) < 1e-5);
}

#[test]
fn renormalised_gates_sum_to_the_scaling_factor() {
    let mut rng = SplitMix64(2);
    let z = randn(&mut rng, &[30, 8], 2.0);
    let mut s = spec(3, true);
    s.scaling = 2.5;
    let scores = router_scores(&z, &s).expect("scores");
    let rows = scores.scores.to_vec2::<f32>().expect("vec");
    let mut chosen = vec![];
    for row in &rows {
        top_k(row, 3, &mut chosen);
    }
    let gates = token_choice_gates(&scores, &chosen, &s).expect("gates").to_vec1::<f32>().expect("vec");
    for pair in gates.chunks(3) {
        assert!((pair.iter().sum::<f32>() - 2.5).abs() < 1e-5);
    }
}

#[test]
fn topk_then_softmax_equals_softmax_then_topk_renormalised() {
    let mut rng = SplitMix64(3);
    let x = randn(&mut rng, &[50, D_MODEL], 1.0);
    let router = randn(&mut rng, &[6, D_MODEL], 1.0);
    let experts: Vec<Ffn> = (0..6).map(|_| ffn(&mut rng, 10)).collect();
    let a = layer(experts.clone(), router.clone(), spec(2, true)).forward(&x).expect("a").output;
    let mut s = spec(2, false);
    s.order = TopkOrder::TopkThenSoftmax;
    let b = layer(experts, router, s).forward(&x).expect("b").output;
    assert!(max_abs_diff(&a, &b) < 1e-6);
}

#[test]
fn skywork_logits_have_mean_zero_std_lambda_and_ignore_affine_changes() {
    let mut rng = SplitMix64(4);
    let z = randn(&mut rng, &[20, 16], 1.5);
    for lambda in [0.5f32, 1.0, 2.0] {
        let mut s = spec(2, true);
        s.logit_norm = LogitNorm::Skywork(lambda);
        let n = router_scores(&z, &s).expect("scores").logits;
        let mean = n.mean_keepdim(D::Minus1).expect("mean");
        let std = (n.broadcast_sub(&mean).expect("c").sqr().expect("sq").sum_keepdim(D::Minus1).expect("sum") / 15.0).expect("div").sqrt().expect("sqrt");
        assert!(mean.abs().expect("abs").flatten_all().expect("f").max(0).expect("m").to_scalar::<f32>().expect("s") < 1e-5);
        for v in std.flatten_all().expect("f").to_vec1::<f32>().expect("vec") {
            assert!((v - lambda).abs() < 1e-4, "std {v} for lambda {lambda}");
        }
        let shifted = ((&z * 3.0).expect("scale") + 7.0).expect("shift");
        let a = router_scores(&z, &s).expect("a").scores;
        let b = router_scores(&shifted, &s).expect("b").scores;
        assert!(max_abs_diff(&a, &b) < 1e-5);
    }
    // Sharper with larger lambda.
    let max_gate = |lambda: f32| {
        let mut s = spec(2, true);
        s.logit_norm = LogitNorm::Skywork(lambda);
        router_scores(&z, &s).expect("s").scores.max(D::Minus1).expect("max").mean_all().expect("mean").to_scalar::<f32>().expect("scalar")
    };
    assert!(max_gate(0.5) < max_gate(1.0) && max_gate(1.0) < max_gate(2.0));
}

#[test]
fn selection_bias_changes_the_choice_but_not_the_gate_values() {
    let mut rng = SplitMix64(5);
    let x = randn(&mut rng, &[64, D_MODEL], 1.0);
    let router = randn(&mut rng, &[4, D_MODEL], 1.0);
    let experts: Vec<Ffn> = (0..4).map(|_| ffn(&mut rng, 8)).collect();
    let mut biased = layer(experts.clone(), router.clone(), spec(1, false));
    biased.spec.selection_bias = SelectionBias::Plugin;
    biased.selection_bias = vec![0.0, 0.0, 0.0, 10.0];
    let out = biased.forward(&x).expect("biased");
    assert_eq!(out.stats.expert_load, vec![0, 0, 0, 64], "a large bias sends every token to expert 3");
    // Every token's output is expert 3's FFN weighted by its unbiased softmax score.
    let s = router_scores(&x.matmul(&router.t().expect("t")).expect("z"), &biased.spec).expect("scores").scores;
    let want = experts[3].forward(&x).expect("ffn").broadcast_mul(&s.narrow(1, 3, 1).expect("col")).expect("mul");
    assert!(max_abs_diff(&out.output, &want) < 1e-5);
}

#[test]
fn capacity_limits_every_expert_and_generous_capacity_drops_nothing() {
    let mut rng = SplitMix64(6);
    let x = randn(&mut rng, &[100, D_MODEL], 1.0);
    let router = randn(&mut rng, &[4, D_MODEL], 2.0);
    let experts: Vec<Ffn> = (0..4).map(|_| ffn(&mut rng, 8)).collect();
    let mut s = spec(2, true);
    s.capacity = Some(Capacity { factor: 1.0, drop_policy: DropPolicy::Probs });
    let tight = layer(experts.clone(), router.clone(), s).forward(&x).expect("tight").stats;
    let cap = 50; // ceil(1.0 * 100 * 2 / 4)
    let kept: Vec<u32> = tight.expert_load.iter().map(|&c| c.min(cap)).collect();
    assert!(tight.dropped > 0, "a skewed router at capacity 1.0 drops something");
    assert_eq!(tight.dropped, tight.expert_load.iter().sum::<u32>() - kept.iter().sum::<u32>());
    s.capacity = Some(Capacity { factor: 2.0, drop_policy: DropPolicy::Probs }); // cf = E / k
    let free = layer(experts.clone(), router.clone(), s).forward(&x).expect("free");
    assert_eq!(free.stats.dropped, 0);
    let dropless = layer(experts, router, spec(2, true)).forward(&x).expect("dropless");
    assert!(max_abs_diff(&free.output, &dropless.output) < 1e-6);
}

#[test]
fn expert_choice_gives_each_expert_its_capacity() {
    let mut rng = SplitMix64(7);
    let x = randn(&mut rng, &[40, D_MODEL], 1.0);
    let router = randn(&mut rng, &[4, D_MODEL], 1.0);
    let experts: Vec<Ffn> = (0..4).map(|_| ffn(&mut rng, 8)).collect();
    let mut s = spec(1, false);
    s.mode = RoutingMode::ExpertChoice;
    s.capacity = Some(Capacity { factor: 2.0, drop_policy: DropPolicy::Probs });
    let out = layer(experts, router, s).forward(&x).expect("ec");
    assert_eq!(out.stats.expert_load, vec![20; 4]); // floor(40 * 2 / 4)
    assert_eq!(out.output.dtype(), DType::F32);
}

#[test]
fn gate_means_are_the_softmax_of_the_router_logits_averaged_over_tokens() {
    let mut rng = SplitMix64(9);
    let x = randn(&mut rng, &[32, D_MODEL], 1.0);
    let router = randn(&mut rng, &[3, D_MODEL], 1.0);
    let experts: Vec<Ffn> = (0..3).map(|_| ffn(&mut rng, 8)).collect();
    let out = layer(experts, router.clone(), spec(2, true)).forward(&x).expect("forward");
    // Independently: softmax of x·Wᵀ row by row, in f64, then the column means.
    let z: Vec<Vec<f32>> = x.matmul(&router.t().expect("t")).expect("z").to_vec2().expect("vec");
    let mut want = [0f64; 3];
    for row in &z {
        let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
        let e: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
        let sum: f64 = e.iter().sum();
        for (w, v) in want.iter_mut().zip(&e) {
            *w += v / sum / z.len() as f64;
        }
    }
    assert_eq!(out.gate_mean.len(), 3);
    for (got, want) in out.gate_mean.iter().zip(want) {
        assert!((*got as f64 - want).abs() < 1e-5, "{:?} vs {want}", out.gate_mean);
    }
}

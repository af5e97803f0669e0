//! Finite-difference gradient checks for every layer type: embedding, RMSNorm, RoPE
//! attention (GQA, biases, sliding window), SwiGLU, the output head, and the MoE layer
//! under every routing option it executes (top-k with and without renormalisation,
//! capacity drops by both policies, shared experts with a gate, Skywork logit
//! normalisation, sigmoid scores with a selection bias, expert choice, experts of
//! different widths) with the load-balancing and z-losses switched on.
//!
//! The analytic gradient comes from the f32 model's backward pass; the reference is a
//! central difference on the same weights in f64. Per tensor, the relative error
//! `‖g − g_fd‖ / ‖g_fd‖` over the sampled entries must be ≤ 1e-3.

use candle_core::{DType, Device, Tensor};
use recast::model::config::{Architecture, ModelConfig, MoeConfig, RopeConfig, RopeScaling};
use recast::model::init::{InitOptions, SplitMix64, random_params};
use recast::model::loss::next_token_loss;
use recast::model::params::ParamStore;
use recast::model::transformer::Transformer;
use recast::moe::spec::{AuxCoefficients, Capacity, DropPolicy, LogitNorm, RouterSpec, RoutingMode, ScoreFunction, SelectionBias, TopkOrder};

const BATCH: usize = 2;
const SEQ: usize = 6;
const SAMPLES_PER_TENSOR: usize = 3;
const EPS: f64 = 1e-6;
const TOLERANCE: f64 = 1e-3;

fn dense(arch: Architecture) -> ModelConfig {
    let qwen = arch == Architecture::Qwen2;
    ModelConfig {
        architecture: arch,
        vocab_size: 23,
        hidden_size: 8,
        intermediate_size: 12,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 4,
        rms_norm_eps: 1e-6,
        rope: RopeConfig { theta: 10_000.0, scaling: RopeScaling::Linear { factor: 2.0 } },
        max_position_embeddings: 64,
        tie_word_embeddings: qwen,
        qkv_bias: qwen,
        o_bias: false,
        attention_window: vec![if arch == Architecture::Mistral { Some(3) } else { None }; 2],
        moe: None,
        passthrough: Default::default(),
    }
}

fn moe(experts: usize, widths: Vec<usize>, shared: Vec<usize>) -> ModelConfig {
    let mut c = dense(Architecture::Qwen2Moe);
    c.qkv_bias = true;
    c.tie_word_embeddings = false;
    c.moe = Some(MoeConfig {
        num_experts: experts,
        top_k: 2,
        expert_intermediate: widths,
        shared_expert_gate: !shared.is_empty(),
        shared_expert_intermediate: shared,
        normalize_top_k: true,
        moe_layers: vec![true, false],
        router_aux_loss_coef: 0.0,
    });
    c
}

fn spec(f: impl FnOnce(&mut RouterSpec)) -> RouterSpec {
    let mut s = RouterSpec::softmax_topk(2);
    f(&mut s);
    s
}

/// Random weights with every norm and bias moved off its default, so their gradients
/// are generic.
fn weights(config: &ModelConfig, seed: u64) -> ParamStore {
    let mut store = random_params(config, InitOptions { std: 0.4, seed, dtype: DType::F64 }).expect("init");
    let mut rng = SplitMix64(seed ^ 0xabc);
    let names: Vec<String> = store.iter().map(|(n, _)| n.clone()).collect();
    for name in names {
        let t = store.get(&name).expect("present").clone();
        if name.ends_with("norm.weight") || name.ends_with(".bias") {
            let noise: Vec<f64> = (0..t.elem_count()).map(|_| rng.normal() * 0.3).collect();
            let noise = Tensor::from_vec(noise, t.dims(), &Device::Cpu).expect("noise");
            store.insert(name.clone(), (t + noise).expect("add"), None);
        }
    }
    store
}

fn tokens(config: &ModelConfig, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix64(seed);
    (0..BATCH * SEQ).map(|_| rng.below(config.vocab_size as u64) as u32).collect()
}

/// Next-token loss plus the MoE layers' weighted auxiliary losses.
fn loss(model: &Transformer, ids: &[u32]) -> (Tensor, Vec<u32>) {
    let out = model.forward(ids, BATCH).expect("forward");
    let mut loss = next_token_loss(&out.logits, ids, BATCH).expect("loss");
    if let Some(aux) = out.aux_loss {
        let aux = aux.to_dtype(loss.dtype()).expect("dtype");
        loss = (loss + aux).expect("add");
    }
    (loss, out.moe_stats.iter().map(|s| s.dropped).collect())
}

fn build(config: &ModelConfig, params: &ParamStore, routing: &RouterSpec, bias: &[f32]) -> Transformer {
    let mut model = Transformer::new(config, params, "test").expect("build");
    for layer in model.moe_layers_mut() {
        layer.spec = *routing;
        layer.selection_bias = bias.to_vec();
        layer.coefficients = AuxCoefficients { load_balance: 0.1, z_loss: 0.01 };
    }
    model
}

/// Compare backprop in f32 with central differences in f64; returns the drops seen.
fn check(name: &str, config: &ModelConfig, routing: RouterSpec, bias: &[f32]) -> Vec<u32> {
    let reference = weights(config, 7);
    let ids = tokens(config, 11);
    let trainable = reference.to_dtype(DType::F32).expect("f32").trainable().expect("vars");
    let model = build(config, &trainable, &routing, bias);
    let (l, drops) = loss(&model, &ids);
    let grads = l.backward().expect("backward");

    let mut rng = SplitMix64(99);
    let mut worst = (0.0f64, String::new());
    for (pname, tensor) in trainable.iter() {
        let analytic: Vec<f64> = match grads.get(tensor) {
            Some(g) => g.to_dtype(DType::F64).expect("dt").flatten_all().expect("flat").to_vec1().expect("vec"),
            None => panic!("{name}: no gradient reached `{pname}`"),
        };
        let base: Vec<f64> = reference.get(pname).expect("present").flatten_all().expect("flat").to_vec1().expect("vec");
        let (mut diff, mut norm) = (0.0f64, 0.0f64);
        for _ in 0..SAMPLES_PER_TENSOR.min(base.len()) {
            let i = rng.below(base.len() as u64) as usize;
            let eval = |delta: f64| -> f64 {
                let mut v = base.clone();
                v[i] += delta;
                let mut params = reference.clone();
                params.insert(pname.clone(), Tensor::from_vec(v, tensor.dims(), &Device::Cpu).expect("t"), None);
                let (l, d) = loss(&build(config, &params, &routing, bias), &ids);
                assert_eq!(d, drops, "{name}: perturbing `{pname}` changed which assignments were dropped");
                l.to_scalar::<f64>().expect("scalar")
            };
            let numeric = (eval(EPS) - eval(-EPS)) / (2.0 * EPS);
            diff += (analytic[i] - numeric).powi(2);
            norm += numeric.powi(2);
        }
        let rel = diff.sqrt() / norm.sqrt().max(1e-6);
        if rel > worst.0 {
            worst = (rel, pname.clone());
        }
        assert!(rel <= TOLERANCE, "{name}: `{pname}` relative gradient error {rel:.2e} > {TOLERANCE:e}");
    }
    eprintln!("{name}: {} tensors, worst relative error {:.2e} ({})", trainable.len(), worst.0, worst.1);
    drops
}

#[test]
fn dense_llama_untied_with_rope_scaling() {
    check("llama", &dense(Architecture::Llama), spec(|_| {}), &[]);
}

#[test]
fn dense_qwen2_with_qkv_bias_and_tied_head() {
    check("qwen2", &dense(Architecture::Qwen2), spec(|_| {}), &[]);
}

#[test]
fn dense_mistral_with_sliding_window() {
    check("mistral", &dense(Architecture::Mistral), spec(|_| {}), &[]);
}

#[test]
fn moe_top2_renormalised_with_aux_losses() {
    check("moe top-2", &moe(4, vec![6; 4], vec![]), spec(|_| {}), &[]);
}

#[test]
fn moe_top1_without_renormalisation() {
    check(
        "moe top-1 raw",
        &moe(4, vec![6; 4], vec![]),
        spec(|s| {
            s.top_k = 1;
            s.renormalize = false;
        }),
        &[],
    );
}

#[test]
fn moe_capacity_drops_by_probability_and_by_position() {
    for policy in [DropPolicy::Probs, DropPolicy::Position] {
        let drops = check("moe capacity", &moe(4, vec![6; 4], vec![]), spec(|s| s.capacity = Some(Capacity { factor: 0.5, drop_policy: policy })), &[]);
        assert!(drops.iter().sum::<u32>() > 0, "capacity 0.5 must drop assignments ({policy:?})");
    }
}

#[test]
fn moe_gated_shared_expert_and_fine_grained_widths() {
    check(
        "moe shared",
        &moe(4, vec![3, 5, 4, 6], vec![7]),
        spec(|s| {
            s.shared_experts = 1;
            s.shared_expert_gate = true;
            s.renormalize = false;
        }),
        &[],
    );
}

#[test]
fn moe_skywork_normalisation_both_orders() {
    for order in [TopkOrder::SoftmaxThenTopk, TopkOrder::TopkThenSoftmax] {
        check(
            "moe skywork",
            &moe(4, vec![6; 4], vec![]),
            spec(|s| {
                s.logit_norm = LogitNorm::Skywork(2.0);
                s.order = order;
            }),
            &[],
        );
    }
}

#[test]
fn moe_sigmoid_scores_with_selection_bias_and_scaling() {
    check(
        "moe sigmoid",
        &moe(4, vec![6; 4], vec![]),
        spec(|s| {
            s.score = ScoreFunction::Sigmoid;
            s.scaling = 2.5;
            s.selection_bias = SelectionBias::Plugin;
        }),
        &[0.3, -0.2, 0.0, 0.1],
    );
}

#[test]
fn moe_expert_choice() {
    check(
        "moe expert choice",
        &moe(4, vec![6; 4], vec![]),
        spec(|s| {
            s.mode = RoutingMode::ExpertChoice;
            s.capacity = Some(Capacity { factor: 1.0, drop_policy: DropPolicy::Probs });
        }),
        &[],
    );
}

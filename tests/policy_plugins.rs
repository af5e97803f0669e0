//! The papers' policies as plugins (METHODS.md §1, §2, §4): each plugin's output on
//! hand-made inputs equals the formula computed here, and the aux-loss-free bias pulls a
//! skewed router toward balance when the real MoE layer and the real plugin run in a loop.

mod support;

use candle_core::{Device, Tensor};
use recast::model::ffn::Ffn;
use recast::model::init::SplitMix64;
use recast::moe::layer::MoeLayer;
use recast::plugins::aux_schedule::LayerStats;
use recast::plugins::router::{Capacity, DropPolicy, LayerInfo, LogitNorm, RoutingMode, ScoreFunction, SelectionBias};
use recast::plugins::sampler::{DomainStats, Mixture, SampleRequest};
use recast::plugins::{AuxSchedulePlugin, PluginEngine, PluginLimits, RouterPlugin, SamplerPlugin};
use support::plugin;

fn engine() -> PluginEngine {
    PluginEngine::new().unwrap()
}

fn router(e: &PluginEngine, name: &str, params: &str) -> RouterPlugin {
    RouterPlugin::new(e, &e.load_file(plugin(name)).unwrap(), params, 0, PluginLimits::default()).unwrap()
}

fn aux(e: &PluginEngine, name: &str, params: &str) -> AuxSchedulePlugin {
    AuxSchedulePlugin::new(e, &e.load_file(plugin(name)).unwrap(), params, 0, PluginLimits::default()).unwrap()
}

fn sampler(e: &PluginEngine, name: &str, params: &str) -> SamplerPlugin {
    SamplerPlugin::new(e, &e.load_file(plugin(name)).unwrap(), params, 0, PluginLimits::default()).unwrap()
}

fn layer(l: u32, experts: u32) -> LayerInfo {
    LayerInfo { layer: l, num_layers: 4, hidden: 16, num_experts: experts, expert_intermediate: vec![32; experts as usize], shared_experts: 0, tokens_per_batch: 64 }
}

fn stats(l: u32, load: Vec<u32>, overflow: f32) -> LayerStats {
    LayerStats { layer: l, tokens: 64, top_k: 2, expert_load: load, dropped: 0, overflow_rate: overflow, gate_entropy: 1.0, max1_over_max2: 1.5, load_balance_loss: 1.0, z_loss: 0.5 }
}

#[test]
fn routers_ask_for_what_their_papers_specify() {
    let e = engine();
    let s = router(&e, "skywork-normalized", "lambda = 2.0\ntop_k = 2").spec(&layer(0, 16)).unwrap();
    assert!(matches!(s.logit_norm, LogitNorm::Skywork(l) if l == 2.0));
    assert!(matches!(s.capacity, Some(Capacity { factor, drop_policy: DropPolicy::Probs }) if factor == 1.25));
    assert!(s.renormalize && s.top_k == 2 && s.score == ScoreFunction::Softmax);

    let s = router(&e, "expert-choice", "capacity_factor = 2.0").spec(&layer(0, 8)).unwrap();
    assert_eq!(s.mode, RoutingMode::ExpertChoice);
    assert!(matches!(s.capacity, Some(Capacity { factor, .. }) if factor == 2.0));

    let s = router(&e, "sigmoid-topk", "top_k = 8\nscaling = 2.5").spec(&layer(0, 64)).unwrap();
    assert!(s.score == ScoreFunction::Sigmoid && s.scaling == 2.5 && s.top_k == 8 && s.renormalize);

    let mut r = router(&e, "aux-free-bias", "gamma = 0.01");
    assert_eq!(r.spec(&layer(0, 4)).unwrap().selection_bias, SelectionBias::Plugin);
    let updates = r.on_step(0, &[stats(0, vec![10, 30, 20, 20], 0.0), stats(2, vec![0, 0, 0, 80], 0.0)], &[layer(0, 4), layer(2, 4)]).unwrap();
    assert_eq!(updates[0].bias_delta.as_deref(), Some(&[0.01, -0.01, 0.0, 0.0][..]), "γ·sign(mean − load)");
    assert_eq!(updates[1].bias_delta.as_deref(), Some(&[0.01, 0.01, 0.01, -0.01][..]));
    let frozen = router(&e, "aux-free-bias", "update_until = 5").on_step(5, &[stats(0, vec![1, 2, 3, 4], 0.0)], &[layer(0, 4)]).unwrap();
    assert!(frozen.is_empty());
}

#[test]
fn skywork_adaptive_follows_its_recurrence_per_layer() {
    let e = engine();
    let mut a = aux(&e, "skywork-adaptive", "xi = 0.2\nalpha_max = 0.01\nbeta = 0.9\nalpha_init = 0.002");
    let first = a.coefficients(0, &[0, 1], &[]).unwrap();
    assert_eq!((first[0].load_balance, first[1].load_balance), (0.002, 0.002));
    // Layer 0 drops at 2 % (target 0.004), layer 1 at 20 % (target clamped to 0.01).
    let (mut a0, mut a1) = (0.002f64, 0.002f64);
    for n in 1..=30 {
        let c = a.coefficients(n, &[0, 1], &[stats(0, vec![1; 4], 0.02), stats(1, vec![1; 4], 0.2)]).unwrap();
        a0 = 0.9 * a0 + 0.1 * 0.004;
        a1 = 0.9 * a1 + 0.1 * 0.01;
        assert!((c[0].load_balance as f64 - a0).abs() < 1e-6 && (c[1].load_balance as f64 - a1).abs() < 1e-6, "step {n}");
        // Closed form for a constant drop rate: α_n = α̂ + βⁿ (α₀ − α̂).
        assert!((a0 - (0.004 + 0.9f64.powi(n as i32) * (0.002 - 0.004))).abs() < 1e-9);
    }
    // The state (every layer's α) survives a save and a restore into a fresh instance.
    let state = a.instance().save_state().unwrap();
    let mut b = aux(&e, "skywork-adaptive", "xi = 0.2\nalpha_max = 0.01\nbeta = 0.9\nalpha_init = 0.002");
    b.instance().load_state(&state).unwrap();
    let c = b.coefficients(31, &[0, 1], &[]).unwrap();
    assert!((c[0].load_balance as f64 - a0).abs() < 1e-6 && (c[1].load_balance as f64 - a1).abs() < 1e-6);
}

#[test]
fn warmup_decay_scales_linearly() {
    let e = engine();
    let mut a = aux(&e, "warmup-decay", "load_balance = 0.1\nz_loss = 0.01\nwarmup_steps = 10\ndecay_start = 50\ndecay_steps = 10\nfinal_ratio = 0.5");
    let at = |a: &mut AuxSchedulePlugin, step| a.coefficients(step, &[3], &[]).unwrap()[0].load_balance;
    for (step, want) in [(0u64, 0.01f32), (4, 0.05), (9, 0.1), (30, 0.1), (55, 0.075), (60, 0.05), (99, 0.05)] {
        assert!((at(&mut a, step) - want).abs() < 1e-6, "step {step}");
    }
}

fn request(step: u64, batch: u32, valid: [Option<f32>; 3]) -> SampleRequest {
    let domains = ["math", "code", "prose"]
        .iter()
        .enumerate()
        .map(|(i, n)| DomainStats { domain: i as u32, name: n.to_string(), tokens_available: [1000, 50_000, 300][i], tokens_seen: 0, train_loss: None, valid_loss: valid[i], reference_loss: None })
        .collect();
    SampleRequest { step, batch_sequences: batch, domains }
}

#[test]
fn samplers_mix_domains_as_specified() {
    let e = engine();
    let mut b = sampler(&e, "balanced", "");
    let mut totals = [0u32; 3];
    for step in 0..3 {
        let Mixture::Counts(c) = b.next(&request(step, 10, [None; 3])).unwrap() else { panic!("counts") };
        assert_eq!(c.iter().sum::<u32>(), 10);
        assert!(c.iter().all(|&x| x == 3 || x == 4));
        totals.iter_mut().zip(&c).for_each(|(t, x)| *t += x);
    }
    assert_eq!(totals, [10, 10, 10], "the remainder rotates over the domains");
    let Mixture::Counts(c) = sampler(&e, "balanced", "domains = [\"code\"]").next(&request(0, 8, [None; 3])).unwrap() else { panic!("counts") };
    assert_eq!(c, vec![0, 8, 0]);

    let mut s = sampler(&e, "staged", "stages = [{ until = 5, weights = [1, 0, 0] }, { until = 9, weights = [0, 1, 1] }]");
    let w = |s: &mut SamplerPlugin, step| match s.next(&request(step, 4, [None; 3])).unwrap() {
        Mixture::Weights(w) => w,
        Mixture::Counts(_) => panic!("weights"),
    };
    assert_eq!(w(&mut s, 4), vec![1.0, 0.0, 0.0]);
    assert_eq!(w(&mut s, 5), vec![0.0, 1.0, 1.0]);
    assert_eq!(w(&mut s, 100), vec![0.0, 1.0, 1.0]);

    // Loss-adaptive: uniform until validation losses exist; then each new evaluation
    // multiplies w_i by exp(η·max(ℓ_i − ℓ_i^ref, 0)) (reference: the first losses).
    let mut l = sampler(&e, "loss-adaptive", "eta = 1.0\nsmoothing = 0.0");
    let weights = |m: Mixture| match m {
        Mixture::Weights(w) => w,
        Mixture::Counts(_) => panic!("weights"),
    };
    assert_eq!(weights(l.next(&request(0, 4, [None; 3])).unwrap()), vec![1.0 / 3.0; 3]);
    assert_eq!(weights(l.next(&request(1, 4, [Some(2.0), Some(2.0), Some(2.0)])).unwrap()), vec![1.0 / 3.0; 3]);
    let got = weights(l.next(&request(2, 4, [Some(1.0), Some(2.5), Some(2.0)])).unwrap());
    let raw = [1.0f64, 0.5f64.exp(), 1.0];
    let total: f64 = raw.iter().sum();
    for (g, r) in got.iter().zip(raw) {
        assert!((*g as f64 - r / total).abs() < 1e-6, "{got:?}");
    }
}

#[test]
fn aux_free_bias_pulls_a_skewed_router_toward_balance() {
    let e = engine();
    let mut plugin = router(&e, "aux-free-bias", "gamma = 0.01\ntop_k = 1");
    let mut rng = SplitMix64(9);
    let mut randn = |dims: &[usize], std: f64| {
        let n = dims.iter().product();
        Tensor::from_vec((0..n).map(|_| (rng.normal() * std) as f32).collect::<Vec<_>>(), dims, &Device::Cpu).unwrap()
    };
    // Every token leans toward expert 0: the router's row 0 is the tokens' common direction.
    let direction = randn(&[1, 16], 1.0);
    let x = (direction.broadcast_as((256, 16)).unwrap() + randn(&[256, 16], 1.0)).unwrap();
    let router_w = Tensor::cat(&[(&direction * 0.1).unwrap(), randn(&[3, 16], 0.1)], 0).unwrap();
    let experts: Vec<Ffn> = (0..4).map(|_| Ffn { gate: randn(&[8, 16], 0.1), up: randn(&[8, 16], 0.1), down: randn(&[16, 8], 0.1) }).collect();
    let info = layer(0, 4);
    let mut moe =
        MoeLayer { layer: 0, router: router_w, experts, shared: vec![], shared_gate: None, spec: plugin.spec(&info).unwrap(), selection_bias: vec![0.0; 4], coefficients: Default::default() };
    let max_vio = |load: &[u32]| *load.iter().max().unwrap() as f64 / (load.iter().sum::<u32>() as f64 / load.len() as f64) - 1.0;
    let mut history = Vec::new();
    for step in 0..300 {
        let out = moe.forward(&x).unwrap();
        history.push(max_vio(&out.stats.expert_load));
        for u in plugin.on_step(step, &[out.stats], std::slice::from_ref(&info)).unwrap() {
            for (b, d) in moe.selection_bias.iter_mut().zip(u.bias_delta.unwrap()) {
                *b += d;
            }
        }
    }
    let late = history[250..].iter().sum::<f64>() / 50.0;
    eprintln!("MaxVio: start {:.3}, step 50 {:.3}, step 100 {:.3}, last 50 mean {late:.3}", history[0], history[50], history[100]);
    assert!(history[0] > 2.5, "the router starts skewed (MaxVio {})", history[0]);
    assert!(late < 0.5, "MaxVio {} -> {late}: the bias did not balance the loads", history[0]);
}

#[test]
fn lsh_route_hashes_the_logit_sign_pattern() {
    use recast::plugins::router::TokenLogits;
    let e = engine();
    let mut r = router(&e, "lsh-route", "top_k = 2");
    let info = layer(0, 8);
    let spec = r.spec(&info).unwrap();
    assert!(spec.per_token_route && spec.top_k == 2);
    // Rows 0 and 1 share a sign pattern (different magnitudes); row 2 differs in signs.
    let values = vec![
        0.5, -1.0, 2.0, -0.1, 0.3, 0.3, -2.0, 1.0, //
        0.1, -3.0, 0.2, -0.9, 1.3, 0.01, -0.5, 4.0, //
        -0.5, 1.0, -2.0, 0.1, -0.3, -0.3, 2.0, -1.0,
    ];
    let a = r.route(&info, &TokenLogits { tokens: 3, experts: 8, values }).unwrap();
    assert_eq!(a.top_k, 2);
    assert_eq!(a.experts[0..2], a.experts[2..4], "same signs, same experts");
    assert_ne!(a.experts[0..2], a.experts[4..6]);
    assert!(a.experts.chunks(2).all(|p| p[0] != p[1]));
    assert!(a.weights.iter().all(|&w| w == 0.5));
}

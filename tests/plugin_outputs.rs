//! The reference plugins compute what their papers say: each output is compared with a
//! reference computed another way in the test.

mod support;

use recast::moe::router::softmax_topk;
use recast::plugins::conformance;
use recast::plugins::init_scheme::{InitOp, ModelShape, SourceModel, TensorInfo};
use recast::plugins::router::{DropPolicy, LayerInfo, TokenLogits};
use recast::plugins::sampler::{DomainStats, Mixture, SampleRequest};
use recast::plugins::{AuxSchedulePlugin, InitSchemePlugin, PluginEngine, PluginLimits, RouterPlugin, SamplerPlugin};

fn layer(experts: u32) -> LayerInfo {
    LayerInfo { layer: 0, num_layers: 2, hidden: 32, num_experts: experts, expert_intermediate: vec![64; experts as usize], shared_experts: 0, tokens_per_batch: 256 }
}

/// Logits from a small LCG: irregular, reproducible, no ties.
fn logits(tokens: u32, experts: u32, seed: u64) -> TokenLogits {
    let mut x = seed;
    let values = (0..tokens * experts)
        .map(|_| {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 6.0
        })
        .collect();
    TokenLogits { tokens, experts, values }
}

#[test]
fn topk_softmax_route_matches_native_top_k_and_a_direct_softmax() {
    let engine = PluginEngine::new().unwrap();
    let component = engine.load_file(support::plugin("topk-softmax")).unwrap();
    for (k, renormalize, experts) in [(2, true, 8), (2, false, 8), (1, true, 64), (4, false, 16)] {
        let params = format!("top_k = {k}\nrenormalize = {renormalize}\nper_token_route = true");
        let mut router = RouterPlugin::new(&engine, &component, &params, 0, PluginLimits::default()).unwrap();
        let spec = router.spec(&layer(experts)).unwrap();
        assert_eq!((spec.top_k, spec.renormalize, spec.per_token_route), (k, renormalize, true));
        let z = logits(256, experts, 7 + k as u64);
        let got = router.route(&layer(experts), &z).unwrap();
        let native = softmax_topk(&z.values, experts as usize, k as usize, renormalize);
        assert_eq!(got.experts, native.experts);
        for (t, row) in z.values.chunks(experts as usize).enumerate() {
            // Direct f64 softmax as an independent reference for the gates.
            let m = row.iter().cloned().fold(f32::MIN, f32::max) as f64;
            let p: Vec<f64> = row.iter().map(|&v| (v as f64 - m).exp()).collect();
            let chosen = &got.experts[t * k as usize..(t + 1) * k as usize];
            let denom: f64 = if renormalize { chosen.iter().map(|&e| p[e as usize]).sum() } else { p.iter().sum() };
            for (j, &e) in chosen.iter().enumerate() {
                let w = got.weights[t * k as usize + j] as f64;
                assert!((w - p[e as usize] / denom).abs() < 1e-5, "token {t} slot {j}: {w} vs {}", p[e as usize] / denom);
                // Chosen experts are the k largest scores.
                assert!(p.iter().filter(|&&q| q > p[e as usize]).count() < k as usize);
            }
        }
    }
}

#[test]
fn topk_softmax_capacity_and_bad_params() {
    let engine = PluginEngine::new().unwrap();
    let component = engine.load_file(support::plugin("topk-softmax")).unwrap();
    let mut router = RouterPlugin::new(&engine, &component, "capacity_factor = 1.25\ndrop_policy = \"position\"", 0, PluginLimits::default()).unwrap();
    let capacity = router.spec(&layer(8)).unwrap().capacity.expect("a capacity");
    assert_eq!((capacity.factor, capacity.drop_policy), (1.25, DropPolicy::Position));
    for bad in ["top_k = 0", "capacity_factor = -1.0", "drop_policy = \"random\"", "topk = 2"] {
        let err = RouterPlugin::new(&engine, &component, bad, 0, PluginLimits::default()).err().unwrap_or_else(|| panic!("{bad} accepted"));
        assert_eq!(err.code(), "config-rejected", "{bad}: {err}");
    }
    let mut router = RouterPlugin::new(&engine, &component, "top_k = 4", 0, PluginLimits::default()).unwrap();
    let err = router.spec(&layer(2)).unwrap_err();
    assert_eq!(err.code(), "refused", "{err}");
}

#[test]
fn constant_schedule_applies_per_layer_overrides() {
    let engine = PluginEngine::new().unwrap();
    let component = engine.load_file(support::plugin("constant")).unwrap();
    let params = "load_balance = 1e-3\nz_loss = 1e-2\n[[layers]]\nlayer = 2\nload_balance = 0.0\n[[layers]]\nlayer = 5\nz_loss = 0.5";
    let mut schedule = AuxSchedulePlugin::new(&engine, &component, params, 0, PluginLimits::default()).unwrap();
    let layers = [0, 2, 5, 7];
    for step in [0, 1, 999] {
        let got: Vec<(u32, f32, f32)> = schedule.coefficients(step, &layers, &[]).unwrap().iter().map(|c| (c.layer, c.load_balance, c.z_loss)).collect();
        assert_eq!(got, vec![(0, 1e-3, 1e-2), (2, 0.0, 1e-2), (5, 1e-3, 0.5), (7, 1e-3, 1e-2)]);
    }
    let err = AuxSchedulePlugin::new(&engine, &component, "z_loss = -1.0", 0, PluginLimits::default()).err().unwrap();
    assert_eq!(err.code(), "config-rejected");
}

#[test]
fn temperature_sampler_matches_the_formula() {
    let engine = PluginEngine::new().unwrap();
    let component = engine.load_file(support::plugin("temperature")).unwrap();
    let tokens = [1_000u64, 50_000, 3_000_000];
    let request = SampleRequest {
        step: 3,
        batch_sequences: 8,
        domains: tokens
            .iter()
            .enumerate()
            .map(|(i, &n)| DomainStats { domain: i as u32, name: format!("d{i}"), tokens_available: n, tokens_seen: 0, train_loss: None, valid_loss: None, reference_loss: None })
            .collect(),
    };
    for t in [1.0f64, 3.33, 5.0, 1000.0] {
        let mut sampler = SamplerPlugin::new(&engine, &component, &format!("temperature = {t}"), 0, PluginLimits::default()).unwrap();
        let Mixture::Weights(w) = sampler.next(&request).unwrap() else { panic!("weights expected") };
        let raw: Vec<f64> = tokens.iter().map(|&n| (n as f64).powf(1.0 / t)).collect();
        let total: f64 = raw.iter().sum();
        for (got, want) in w.iter().zip(raw.iter().map(|r| r / total)) {
            assert!((*got as f64 - want).abs() < 1e-6, "T={t}: {got} vs {want}");
        }
    }
}

#[test]
fn sparse_upcycle_plan_copies_every_ffn_into_every_expert() {
    let engine = PluginEngine::new().unwrap();
    let component = engine.load_file(support::plugin("sparse-upcycle")).unwrap();
    let shape = ModelShape { layers: 4, hidden: 32, intermediate: 96, heads: 4, kv_heads: 2, head_dim: 8, vocab: 100, tied_embeddings: true };
    let mut tensors = vec![TensorInfo { name: "model.embed_tokens.weight".into(), shape: vec![100, 32] }, TensorInfo { name: "model.norm.weight".into(), shape: vec![32] }];
    for l in 0..4 {
        for (p, s) in [("gate_proj", vec![96, 32]), ("up_proj", vec![96, 32]), ("down_proj", vec![32, 96])] {
            tensors.push(TensorInfo { name: format!("model.layers.{l}.mlp.{p}.weight"), shape: s });
        }
        tensors.push(TensorInfo { name: format!("model.layers.{l}.self_attn.q_proj.weight"), shape: vec![32, 32] });
    }
    let source = SourceModel { index: 0, architecture: "llama".into(), shape, tensors };
    let mut scheme = InitSchemePlugin::new(&engine, &component, "experts = 4\nevery = 2", 9, PluginLimits::default()).unwrap();
    let (plan, written) = scheme.plan(std::slice::from_ref(&source)).unwrap();
    let moe: Vec<u32> = plan.target.moe_layers.iter().map(|m| m.layer).collect();
    assert_eq!(moe, vec![1, 3], "every other layer, counted from the second");
    // Every expert tensor is a whole copy of the same layer's dense projection.
    for &l in &moe {
        for e in 0..4 {
            for p in ["gate_proj", "up_proj", "down_proj"] {
                let dst = format!("model.layers.{l}.mlp.experts.{e}.{p}.weight");
                let op = plan.ops.iter().find(|op| matches!(op, InitOp::Copy(c) if c.dst == dst)).unwrap_or_else(|| panic!("no op writes {dst}"));
                let InitOp::Copy(c) = op else { unreachable!() };
                assert_eq!((c.src.source, c.src.name.as_str()), (Some(0), format!("model.layers.{l}.mlp.{p}.weight").as_str()));
            }
        }
        assert_eq!(written[&format!("model.layers.{l}.mlp.gate.weight")], vec![4, 32]);
        assert!(!written.contains_key(&format!("model.layers.{l}.mlp.gate_proj.weight")), "upcycled dense FFN must not be copied");
    }
    assert!(written.contains_key("model.layers.0.mlp.gate_proj.weight"), "non-upcycled FFN is kept");
    // 2 + 4 layers x 1 attention + 2 dense layers x 3 + 2 MoE layers x (4 x 3 + router)
    assert_eq!(written.len(), 2 + 4 + 2 * 3 + 2 * (4 * 3 + 1));
}

#[test]
fn conformance_passes_for_every_reference_plugin() {
    let engine = PluginEngine::new().unwrap();
    for name in ["topk-softmax", "constant", "temperature", "sparse-upcycle"] {
        let component = engine.load_file(support::plugin(name)).unwrap();
        let mut calls = 0;
        let meta = conformance::check(&engine, &component, "", PluginLimits::default(), |_| calls += 1).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(meta.name, name);
        assert!(calls >= 5, "{name}: only {calls} calls checked");
    }
}

//! `recast bench plugins`: what plugin calls cost, measured against native work in the
//! same process.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;

use crate::moe::router::softmax_topk;
use crate::plugins::router::{LayerInfo, LayerStats, TokenLogits};
use crate::plugins::{PluginEngine, PluginLimits, RouterPlugin};

pub(super) fn plugins(router: Option<&Path>, tokens: u32, experts: u32, top_k: u32, repeats: usize) -> anyhow::Result<()> {
    if top_k == 0 || top_k > experts {
        bail!("--top-k must be between 1 and --experts ({experts})");
    }
    let file = crate::run::plugin_source::plugin_bytes(router.is_none().then_some("topk-softmax"), router, crate::plugins::PluginKind::Router)?;
    let engine = PluginEngine::new()?;
    let component = engine.load_bytes(&file.label, &file.bytes)?;
    let params = format!("top_k = {top_k}\nper_token_route = true");
    let mut plugin = RouterPlugin::new(&engine, &component, &params, 0, PluginLimits::default())?;
    println!("router {} ({}, {} KiB)", file.label, component.digest(), component.size_bytes().div_ceil(1024));

    let (layers, stats) = synthetic_layers(8, experts, tokens, top_k, |_| tokens * top_k / experts);

    const CALLS: u32 = 2000;
    let spec = median(repeats, || {
        for l in &layers[..1] {
            for _ in 0..CALLS {
                plugin.spec(l)?;
            }
        }
        Ok(())
    })? / CALLS;
    let on_step = median(repeats, || {
        for step in 0..CALLS as u64 {
            plugin.on_step(step, &stats, &layers)?;
        }
        Ok(())
    })? / CALLS;
    println!("spec call: {:.2} µs", micros(spec));
    println!("on-step call ({} layers x {experts} experts): {:.2} µs", layers.len(), micros(on_step));

    let logits = random_logits(tokens, experts);
    let mut wasm_result = None;
    let wasm = median(repeats, || {
        wasm_result = Some(plugin.route(&layers[0], &logits)?);
        Ok(())
    })?;
    let mut native_result = None;
    let native = median(repeats, || {
        native_result = Some(softmax_topk(&logits.values, experts as usize, top_k as usize, true));
        Ok(())
    })?;
    let (Some(w), Some(n)) = (wasm_result, native_result) else { bail!("no measurement was taken") };
    let agree = w.experts == n.experts && w.weights.iter().zip(&n.gates).all(|(a, b)| (a - b).abs() <= 1e-6);
    println!(
        "route {tokens}x{experts} top-{top_k}: wasm {:.3} ms, native {:.3} ms, ratio {:.2}x ({})",
        millis(wasm),
        millis(native),
        wasm.as_secs_f64() / native.as_secs_f64().max(1e-12),
        if agree { "same assignments" } else { "ASSIGNMENTS DIFFER" }
    );
    if !agree {
        bail!("the plugin's route and the native top-k disagree");
    }
    Ok(())
}

/// `count` MoE layers of `experts` experts (width 1408, d 512) routing `tokens` tokens
/// top-`top_k`, and one step's statistics for each with expert `e` receiving `load(e)`.
pub(super) fn synthetic_layers(count: u32, experts: u32, tokens: u32, top_k: u32, load: impl Fn(u32) -> u32) -> (Vec<LayerInfo>, Vec<LayerStats>) {
    let layers: Vec<LayerInfo> = (0..count)
        .map(|layer| LayerInfo { layer, num_layers: count, hidden: 512, num_experts: experts, expert_intermediate: vec![1408; experts as usize], shared_experts: 0, tokens_per_batch: tokens })
        .collect();
    let stats = layers
        .iter()
        .map(|l| LayerStats {
            layer: l.layer,
            tokens,
            top_k,
            expert_load: (0..experts).map(&load).collect(),
            dropped: 0,
            overflow_rate: 0.0,
            gate_entropy: 1.5,
            max1_over_max2: 1.2,
            load_balance_loss: 1.0,
            z_loss: 3.0,
        })
        .collect();
    (layers, stats)
}

fn random_logits(tokens: u32, experts: u32) -> TokenLogits {
    // SplitMix64 to uniform(-4, 4): fixed, irregular logits without ties.
    let mut x = 42u64;
    let values = (0..tokens * experts)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
        })
        .collect();
    TokenLogits { tokens, experts, values }
}

/// Median wall time of `repeats` runs of `f`, after one warm-up run.
pub(super) fn median(repeats: usize, mut f: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    crate::memory::enter_steady_state();
    f()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

pub(super) fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

pub(super) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

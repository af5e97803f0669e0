//! `recast bench moe-layer` and `recast bench model-step`: forward+backward timings of
//! one MoE layer and of a whole model, in the form `scripts/bench_vs_torch.py` compares
//! with PyTorch at the same shapes and thread count.

use std::path::Path;
use std::time::Instant;

use anyhow::{Context, bail};
use candle_core::{DType, Device, Tensor, Var};

use crate::cpu::matmul::{self, ComputeSettings, MatmulBackend, Precision};
use crate::model::checkpoint;
use crate::model::compute_device::ComputeDevice;
use crate::model::ffn::Ffn;
use crate::model::init::SplitMix64;
use crate::model::loss::next_token_loss;
use crate::model::training_pass::Recompute;
use crate::model::transformer::Transformer;
use crate::moe::layer::MoeLayer;
use crate::moe::spec::RouterSpec;

/// Shapes of the `moe-layer` benchmark.
pub(super) struct MoeLayerShape {
    pub tokens: usize,
    pub hidden: usize,
    pub experts: usize,
    pub top_k: usize,
    pub ffn: usize,
}

/// Weights and activations are f32 (master weights); `compute` says how the matrix
/// products run (bf16 is mixed precision, as PyTorch's autocast).
pub(super) fn moe_layer(shape: &MoeLayerShape, compute: ComputeSettings, repeats: usize) -> anyhow::Result<()> {
    let MoeLayerShape { tokens, hidden, experts, top_k, ffn } = *shape;
    if top_k == 0 || top_k > experts {
        bail!("--top-k must be between 1 and --experts ({experts})");
    }
    let dev = compute.device.open()?;
    // On CUDA, bf16 means a bf16 module (weights and activations), as PyTorch's bf16
    // MoE block it is compared with; the router still computes in f32.
    let (dtype, compute) = match (&dev, compute.precision) {
        (Device::Cuda(_), Precision::Bf16) => (DType::BF16, ComputeSettings { precision: Precision::F32, ..compute }),
        _ => (DType::F32, compute),
    };
    let matmul = matmul::configure(compute)?;
    let weight = |rows: usize, cols: usize, std: f64| -> anyhow::Result<Tensor> { Ok(Var::from_tensor(&Tensor::randn(0f32, std as f32, (rows, cols), &dev)?.to_dtype(dtype)?)?.as_tensor().clone()) };
    let experts_ffn = (0..experts).map(|_| Ok(Ffn { gate: weight(ffn, hidden, 0.02)?, up: weight(ffn, hidden, 0.02)?, down: weight(hidden, ffn, 0.02)? })).collect::<anyhow::Result<Vec<_>>>()?;
    let layer = MoeLayer {
        layer: 0,
        router: weight(experts, hidden, 0.02)?,
        experts: experts_ffn,
        shared: vec![],
        shared_gate: None,
        spec: RouterSpec::softmax_topk(top_k as u32),
        selection_bias: vec![0.0; experts],
        coefficients: Default::default(),
    };
    let x = weight(tokens, hidden, 1.0)?;
    println!("moe-layer: T={tokens} d={hidden} E={experts} k={top_k} ffn={ffn} device={} dtype={dtype:?} threads={} matmul: {matmul}", compute.device, candle_core::utils::get_num_threads());
    let ms = median_ms(repeats, || {
        let out = layer.forward(&x)?;
        let grads = out.output.sum_all()?.backward()?;
        dev.synchronize()?;
        Ok(grads.get(&x).is_some())
    })?;
    if dev.is_cuda() {
        let load = layer.forward(&x)?.stats.expert_load;
        expert_gemm_share(&layer, &load, &x, repeats)?;
    } else {
        // Forward: 6·d·ffn per routed slot (gate, up, down) and the router; backward twice that.
        let flop = 18.0 * (tokens * top_k * hidden * ffn) as f64 + 6.0 * (tokens * hidden * experts) as f64;
        println!("{}", super::bench_matmul::fraction_of_peak(flop, ms / 1e3, compute.precision));
    }
    println!("moe-layer fwd+bwd: {ms:.1} ms");
    Ok(())
}

/// The expert GEMMs' throughput (forward: gate, up and down of every expert on its rows,
/// as the layer runs them) against one plain GEMM of the same FLOPs
/// (`[T·k, d] × [d, 3·ffn]`), in the same process on the same device.
fn expert_gemm_share(layer: &MoeLayer, load: &[u32], x: &Tensor, repeats: usize) -> anyhow::Result<()> {
    let dev = x.device();
    let d = x.dim(1)?;
    let rows: usize = load.iter().map(|&c| c as usize).sum();
    let ffn = layer.experts[0].width();
    let inputs = (0..rows.div_ceil(x.dim(0)?)).map(|_| x.clone()).collect::<Vec<_>>();
    let routed = Tensor::cat(&inputs, 0)?.narrow(0, 0, rows)?.detach();
    let hidden = Tensor::randn(0f32, 1.0, (rows, ffn), dev)?.to_dtype(x.dtype())?;
    let flops = 2.0 * rows as f64 * d as f64 * ffn as f64 * 3.0;
    let experts_ms = median_ms(repeats, || {
        let mut start = 0;
        for (expert, &n) in layer.experts.iter().zip(load) {
            let n = n as usize;
            if n > 0 {
                let xs = routed.narrow(0, start, n)?;
                xs.matmul(&expert.gate.t()?)?;
                xs.matmul(&expert.up.t()?)?;
                hidden.narrow(0, start, n)?.matmul(&expert.down.t()?)?;
            }
            start += n;
        }
        dev.synchronize()?;
        Ok(true)
    })?;
    let plain_weight = Tensor::randn(0f32, 0.02, (3 * ffn, d), dev)?.to_dtype(x.dtype())?;
    let plain_ms = median_ms(repeats, || {
        routed.matmul(&plain_weight.t()?)?;
        dev.synchronize()?;
        Ok(true)
    })?;
    let tflops = |ms: f64| flops / (ms / 1000.0) / 1e12;
    println!(
        "expert GEMMs: {experts_ms:.2} ms ({:.0} TFLOP/s); one plain GEMM of the same size: {plain_ms:.2} ms ({:.0} TFLOP/s); expert GEMM throughput = {:.2} of plain",
        tflops(experts_ms),
        tflops(plain_ms),
        plain_ms / experts_ms
    );
    Ok(())
}

pub(super) fn model_step(model: &Path, batch: usize, seq: usize, repeats: usize) -> anyhow::Result<()> {
    let ckpt = checkpoint::read(model, DType::F32).with_context(|| format!("cannot read the model in {}", model.display()))?;
    let params = ckpt.params.trainable()?;
    let transformer = Transformer::new(&ckpt.config, &params, &model.display().to_string())?;
    let tokens = pseudo_random_tokens(batch * seq, ckpt.config.vocab_size as u32, 0x5eed);
    println!("model-step: {} params={} batch={batch} seq={seq} threads={}", ckpt.config.architecture.hf_class(), params.num_parameters(), candle_core::utils::get_num_threads());
    let ms = median_ms(repeats, || {
        let out = transformer.forward(&tokens, batch)?;
        let loss = next_token_loss(&out.logits, &tokens, batch)?;
        let grads = loss.backward()?;
        Ok(grads.get(&transformer.embed).is_some())
    })?;
    println!("tokens/s: {:.0}", (batch * seq) as f64 / (ms / 1000.0));
    println!("model fwd+bwd: {ms:.1} ms");
    Ok(())
}

/// Two warm-up runs, then the median of `repeats` timed runs, in milliseconds. The
/// closure returns whether the gradient it needed was produced.
fn median_ms(repeats: usize, mut run: impl FnMut() -> anyhow::Result<bool>) -> anyhow::Result<f64> {
    crate::memory::enter_steady_state();
    for _ in 0..2 {
        if !run()? {
            bail!("the backward pass produced no gradient for the input");
        }
    }
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        run()?;
        times.push(start.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// The floating-point operations of one training step of `tokens` tokens in sequences of
/// `seq`: six per active weight per token (forward and backward of every product; only
/// top-k of E routed experts are active, the embedding lookup is no product unless the
/// head shares it) plus the attention scores and values (12 · layers · seq · hidden).
fn step_flop(config: &crate::model::config::ModelConfig, parameters: usize, seq: usize, tokens: usize) -> f64 {
    let d = config.hidden_size as f64;
    let mut inactive = 0.0;
    if let Some(moe) = &config.moe {
        let idle = 1.0 - moe.top_k as f64 / moe.num_experts.max(1) as f64;
        let per_layer: f64 = moe.expert_intermediate.iter().map(|&f| 3.0 * d * f as f64).sum();
        inactive += idle * per_layer * moe.moe_layers.iter().filter(|m| **m).count() as f64;
    }
    if !config.tie_word_embeddings {
        inactive += config.vocab_size as f64 * d;
    }
    let active = (parameters as f64 - inactive).max(0.0);
    6.0 * active * tokens as f64 + 12.0 * (config.num_layers * seq) as f64 * d * tokens as f64
}

/// Deterministic token ids, the same on every run.
fn pseudo_random_tokens(n: usize, vocab: u32, seed: u64) -> Vec<u32> {
    let mut rng = SplitMix64(seed);
    (0..n).map(|_| rng.below(vocab as u64) as u32).collect()
}

/// Tokens per second of whole training steps (sampler, aux schedule, forward, backward,
/// AdamW, router `on-step`) of the run `config` describes, and the share of plugin time.
pub(super) fn train_step(config: &Path, steps: u64, precision: Option<Precision>, matmul: Option<MatmulBackend>, device: Option<ComputeDevice>, recompute: Option<Recompute>) -> anyhow::Result<()> {
    use crate::plugins::PluginEngine;
    use crate::train::config::RunConfig;
    use crate::train::trainer::Trainer;

    let text = std::fs::read_to_string(config).with_context(|| format!("cannot read {}", config.display()))?;
    let absolute = std::path::absolute(config)?;
    let mut parsed = RunConfig::parse(&text, &absolute)?;
    parsed.train.steps = parsed.train.steps.max(steps + 2);
    parsed.compute.precision = precision.unwrap_or(parsed.compute.precision);
    parsed.compute.matmul = matmul.unwrap_or(parsed.compute.matmul);
    parsed.compute.device = device.unwrap_or(parsed.compute.device);
    parsed.compute.recompute = recompute.unwrap_or(parsed.compute.recompute);
    let engine = std::sync::Arc::new(PluginEngine::new()?);
    let plugins = crate::run::plugins::load_run_plugins(&engine, &parsed)?.set;
    let run_dir = tempfile_dir()?;
    let mut trainer = Trainer::start(parsed, &run_dir, &plugins, engine)?;
    let tokens = trainer.config.train.batch_size * trainer.config.train.grad_accum * trainer.config.train.seq_len;
    println!(
        "train-step: {} params={} tokens/step={tokens} threads={} matmul: {}",
        trainer.model_config.architecture.hf_class(),
        trainer.params().num_parameters(),
        candle_core::utils::get_num_threads(),
        matmul::active()
    );
    for _ in 0..2 {
        trainer.train_step()?;
    }
    let mut times = Vec::new();
    let mut plugin = Vec::new();
    let faults_before = crate::memory::minor_faults();
    for _ in 0..steps.max(1) {
        let r = trainer.train_step()?;
        times.push(r.elapsed.as_secs_f64());
        plugin.push(r.plugin_time.as_secs_f64());
    }
    let _ = std::fs::remove_dir_all(&run_dir);
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    let plugin_share = plugin.iter().sum::<f64>() / times.iter().sum::<f64>();
    println!("step: {:.1} ms (median of {}), plugin time {:.4} % of step time", median * 1e3, times.len(), plugin_share * 100.0);
    if let Some(peak) = crate::memory::peak_rss_bytes() {
        println!("peak RSS: {:.2} GiB", peak as f64 / (1u64 << 30) as f64);
    }
    if let (_, live) = crate::memory::live_bytes()
        && live > 0
    {
        println!("peak allocated: {:.2} GiB (the most held in allocations at once; RSS adds the allocator's free pages, code and libraries)", live as f64 / (1u64 << 30) as f64);
    }
    if let (Some(before), Some(after)) = (faults_before, crate::memory::minor_faults()) {
        let per_step = after.saturating_sub(before) as f64 / times.len() as f64;
        println!("page faults per step: {per_step:.0} (pages the kernel mapped afresh; 0 when steps reuse their buffers)");
    }
    if trainer.config.compute.device == ComputeDevice::Cpu {
        let flop = step_flop(&trainer.model_config, trainer.params().num_parameters(), trainer.config.train.seq_len, tokens);
        println!("{} (≈ 6 × active weights × tokens + attention)", super::bench_matmul::fraction_of_peak(flop, median, trainer.config.compute.precision));
    }
    println!("tokens/s: {:.1}", tokens as f64 / median);
    Ok(())
}

/// A fresh scratch folder for a benchmark run.
fn tempfile_dir() -> anyhow::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("recast-bench-train-{}", std::process::id()));
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

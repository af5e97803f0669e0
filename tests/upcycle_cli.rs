//! `recast upcycle` with every reference scheme, on dense checkpoints made here, each
//! checked against an independent computation: the upcycled model's logits against the
//! dense model's (`recast forward` on both), Drop-Upcycling's re-initialised fraction and
//! statistics against the plan's parameters, and fusion against the specialists.

mod support;

use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};
use recast::model::checkpoint::{self, CheckpointReader, WriteOptions};
use recast::model::config::{Architecture, ModelConfig, RopeConfig, RopeScaling};
use recast::model::init::{InitOptions, SplitMix64, random_params};
use recast::model::params::ParamStore;
use recast::model::transformer::Transformer;
use recast::moe::spec::{RouterSpec, SelectionBias};
use support::{plugin, run, text};

const TOKENS: &str = "3,17,42,8,99,120,5,64,31,77,2,250";

fn dense_config(arch: Architecture, tied: bool) -> ModelConfig {
    ModelConfig {
        architecture: arch,
        vocab_size: 256,
        hidden_size: 32,
        intermediate_size: 64,
        num_layers: 3,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-6,
        rope: RopeConfig { theta: 10_000.0, scaling: RopeScaling::None },
        max_position_embeddings: 128,
        tie_word_embeddings: tied,
        qkv_bias: arch == Architecture::Qwen2,
        o_bias: false,
        attention_window: vec![None; 3],
        moe: None,
        passthrough: Default::default(),
    }
}

/// A random dense checkpoint whose norms and biases are off their defaults.
fn dense_params(config: &ModelConfig, seed: u64) -> ParamStore {
    let mut params = random_params(config, InitOptions { std: 0.15, seed, dtype: DType::F32 }).unwrap();
    let mut rng = SplitMix64(seed ^ 0x55);
    let names: Vec<String> = params.iter().map(|(n, _)| n.clone()).collect();
    for name in names.into_iter().filter(|n| n.ends_with("norm.weight") || n.ends_with(".bias")) {
        let t = params.get(&name).unwrap().clone();
        let noise: Vec<f32> = (0..t.elem_count()).map(|_| (rng.normal() * 0.2) as f32).collect();
        let noise = Tensor::from_vec(noise, t.dims(), &Device::Cpu).unwrap();
        params.insert(name, (t + noise).unwrap(), None);
    }
    params
}

fn write_dense(dir: &Path, arch: Architecture, tied: bool, seed: u64) -> PathBuf {
    let config = dense_config(arch, tied);
    checkpoint::write(dir, &config, &dense_params(&config, seed), &WriteOptions::default()).unwrap();
    dir.to_path_buf()
}

fn upcycle(sources: &[&Path], scheme: &str, params: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["upcycle".to_string()];
    for s in sources {
        args.extend(["--source".into(), s.display().to_string()]);
    }
    args.extend(["--scheme".into(), plugin(scheme).display().to_string(), "--params".into(), params.into(), "--out".into(), out.display().to_string()]);
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&refs)
}

fn logits(model: &Path) -> Vec<f32> {
    let out = model.with_extension("logits.safetensors");
    let o = run(&["forward", "--model", model.to_str().unwrap(), "--tokens", TOKENS, "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let bytes = std::fs::read(&out).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor("logits").unwrap().data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / scale
}

fn assert_same_function(dense: &Path, upcycled: &Path, what: &str) {
    let (a, b) = (logits(upcycled), logits(dense));
    let d = max_rel_diff(&a, &b);
    assert!(d <= 1e-5, "{what}: upcycled logits differ from the dense ones by {d:.2e} (relative to the largest logit)");
}

#[test]
fn sparse_upcycling_and_scale_out_reproduce_the_dense_model() {
    let dir = tempfile::tempdir().unwrap();
    let dense = write_dense(&dir.path().join("dense"), Architecture::Llama, false, 1);
    // The source's tokenizer and generation files travel with the upcycled model.
    let companions = [
        ("tokenizer_config.json", "{\"model_max_length\": 2048}"),
        ("special_tokens_map.json", "{\"eos_token\": \"</s>\"}"),
        ("generation_config.json", "{\"do_sample\": false}"),
        ("chat_template.jinja", "{{ messages }}"),
    ];
    for (name, body) in companions {
        std::fs::write(dense.join(name), body).unwrap();
    }
    for (scheme, params) in [("sparse-upcycle", "experts = 4\ntop_k = 2"), ("scale-out", "experts = 8")] {
        let out = dir.path().join(scheme);
        let o = upcycle(&[&dense], scheme, params, &out, &[]);
        assert!(o.status.success(), "{}", text(&o));
        let reader = CheckpointReader::open(&out).unwrap();
        let moe = reader.config.moe.clone().expect("an MoE");
        assert_eq!(reader.config.architecture, Architecture::Mixtral);
        assert_eq!(moe.moe_layers, vec![true; 3]);
        assert_same_function(&dense, &out, scheme);
        let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("upcycle.json")).unwrap()).unwrap();
        assert_eq!(record["scheme"], scheme);
        assert_eq!(record["sources"][0]["sha256"].as_str().unwrap().len(), 64);
        for (name, body) in companions {
            assert_eq!(std::fs::read_to_string(out.join(name)).unwrap(), body, "{scheme}: {name}");
        }
    }
}

#[test]
fn fine_grained_split_with_and_without_shared_expert_is_function_preserving() {
    let dir = tempfile::tempdir().unwrap();
    let dense = write_dense(&dir.path().join("dense"), Architecture::Qwen2, false, 2);
    for (name, params) in [("split", "granularity = 4"), ("split-copies", "granularity = 4\ncopies = 2"), ("innovator", "granularity = 8\nshared_expert = true")] {
        let out = dir.path().join(name);
        let o = upcycle(&[&dense], "fine-grained-split", params, &out, &["--format", "hf"]);
        assert!(o.status.success(), "{name}: {}", text(&o));
        let reader = CheckpointReader::open(&out).unwrap();
        assert_eq!(reader.config.architecture, Architecture::Qwen2Moe);
        assert_same_function(&dense, &out, name);
    }
    // The partition covers every neuron exactly once: the slices' gate rows, put back
    // together, are the dense rows.
    let split = CheckpointReader::open(&dir.path().join("split")).unwrap();
    let source = CheckpointReader::open(&dense).unwrap();
    let dense_rows = source.load("model.layers.0.mlp.gate_proj.weight", DType::F32).unwrap().to_vec2::<f32>().unwrap();
    let mut seen = Vec::new();
    for e in 0..4 {
        seen.extend(split.load(&format!("model.layers.0.mlp.experts.{e}.gate_proj.weight"), DType::F32).unwrap().to_vec2::<f32>().unwrap());
    }
    let mut want = dense_rows.clone();
    let key = |r: &Vec<f32>| r.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    want.sort_by_key(key);
    seen.sort_by_key(key);
    assert_eq!(want, seen);
}

#[test]
fn scale_up_in_width_and_depth_is_function_preserving() {
    let dir = tempfile::tempdir().unwrap();
    let dense = write_dense(&dir.path().join("dense"), Architecture::Qwen2, false, 3);
    for (name, params) in [("wide-deep", "hidden = 64\nintermediate = 128\nlayers = 6"), ("stacked", "hidden = 96\nlayers = 5\ndepth = \"stack\"")] {
        let out = dir.path().join(name);
        let o = upcycle(&[&dense], "scale-up", params, &out, &["--format", "hf"]);
        assert!(o.status.success(), "{name}: {}", text(&o));
        let c = CheckpointReader::open(&out).unwrap().config;
        assert_eq!((c.architecture, c.moe.is_none()), (Architecture::Qwen2, true));
        assert_same_function(&dense, &out, name);
    }
    let c = CheckpointReader::open(&dir.path().join("wide-deep")).unwrap().config;
    assert_eq!((c.hidden_size, c.intermediate_size, c.num_layers, c.num_heads, c.num_kv_heads), (64, 128, 6, 8, 4));
    // Then Scale-Out on the grown model, AquilaMoE's pipeline, still the same function.
    let moe = dir.path().join("scaled-out");
    let o = upcycle(&[&dir.path().join("wide-deep")], "scale-out", "experts = 4", &moe, &["--format", "hf"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_same_function(&dense, &moe, "scale-up then scale-out");
}

#[test]
fn drop_upcycling_reinitialises_exactly_the_planned_fraction_with_the_dense_statistics() {
    let dir = tempfile::tempdir().unwrap();
    let dense = write_dense(&dir.path().join("dense"), Architecture::Llama, false, 4);
    let out = dir.path().join("drop");
    let o = upcycle(&[&dense], "drop-upcycle", "experts = 4\nratio = 0.5", &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    let (src, up) = (CheckpointReader::open(&dense).unwrap(), CheckpointReader::open(&out).unwrap());
    let d_ff = 64;
    let mut sets = Vec::new();
    for layer in 0..3 {
        for e in 0..4 {
            let mut changed_sets = Vec::new();
            for (proj, axis) in [("gate_proj", 0), ("up_proj", 0), ("down_proj", 1)] {
                let dense_w = src.load(&format!("model.layers.{layer}.mlp.{proj}.weight"), DType::F32).unwrap();
                let expert_w = up.load(&format!("model.layers.{layer}.mlp.experts.{e}.{proj}.weight"), DType::F32).unwrap();
                let (a, b) = if axis == 0 { (dense_w.clone(), expert_w) } else { (dense_w.t().unwrap().contiguous().unwrap(), expert_w.t().unwrap().contiguous().unwrap()) };
                let (a, b) = (a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
                let changed: Vec<usize> = (0..d_ff).filter(|&j| a[j] != b[j]).collect();
                assert_eq!(changed.len(), 32, "layer {layer} expert {e} {proj}: {} neurons differ, want ⌊0.5·64⌋", changed.len());
                for j in 0..d_ff {
                    if !changed.contains(&j) {
                        assert!(a[j].iter().zip(&b[j]).all(|(x, y)| x.to_bits() == y.to_bits()), "kept neuron {j} is not bit-identical");
                    }
                }
                // Fresh values follow N(μ, σ²) of the whole dense matrix.
                let all: Vec<f64> = a.iter().flatten().map(|&x| x as f64).collect();
                let (mu, sigma) = mean_std(&all);
                let fresh: Vec<f64> = changed.iter().flat_map(|&j| b[j].iter().map(|&x| x as f64)).collect();
                let (m, s) = mean_std(&fresh);
                let bound = 4.0 * sigma / (fresh.len() as f64).sqrt();
                assert!((m - mu).abs() < bound && (s - sigma).abs() < bound * 2.0, "{proj}: fresh mean/std {m:.4}/{s:.4} vs dense {mu:.4}/{sigma:.4}");
                changed_sets.push(changed);
            }
            assert!(changed_sets.windows(2).all(|w| w[0] == w[1]), "one index set for all three matrices");
            sets.push(changed_sets.remove(0));
        }
    }
    // Two experts' sets overlap about r²·d_ff = 16 on average.
    let overlaps: Vec<usize> = sets.chunks(4).flat_map(|l| (1..4).map(move |e| l[0].iter().filter(|j| l[e].contains(j)).count())).collect();
    let mean = overlaps.iter().sum::<usize>() as f64 / overlaps.len() as f64;
    assert!((8.0..24.0).contains(&mean), "mean overlap {mean}");

    // Same seed, same plan: a second run writes identical bytes.
    let again = dir.path().join("drop-again");
    let o = upcycle(&[&dense], "drop-upcycle", "experts = 4\nratio = 0.5", &again, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(std::fs::read(out.join("model.safetensors")).unwrap(), std::fs::read(again.join("model.safetensors")).unwrap());
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (m, (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt())
}

#[test]
fn fusion_pinned_to_one_specialist_reproduces_it() {
    let dir = tempfile::tempdir().unwrap();
    // Three specialists that share everything but their FFNs.
    let config = dense_config(Architecture::Llama, false);
    let base = dense_params(&config, 5);
    let mut specialists = Vec::new();
    for s in 0..3u64 {
        let mut params = base.clone();
        let other = dense_params(&config, 100 + s);
        for (name, t) in other.iter().filter(|(n, _)| n.contains(".mlp.")) {
            params.insert(name.clone(), t.clone(), None);
        }
        let path = dir.path().join(format!("specialist-{s}"));
        checkpoint::write(&path, &config, &params, &WriteOptions::default()).unwrap();
        specialists.push((path, params));
    }
    let out = dir.path().join("fused");
    let sources: Vec<&Path> = specialists.iter().map(|(p, _)| p.as_path()).collect();
    let o = upcycle(&sources, "fuse-specialists", "", &out, &["--format", "hf"]);
    assert!(o.status.success(), "{}", text(&o));

    let fused = checkpoint::read(&out, DType::F32).unwrap();
    let ids: Vec<u32> = TOKENS.split(',').map(|t| t.parse().unwrap()).collect();
    for (i, (_, params)) in specialists.iter().enumerate() {
        let mut model = Transformer::new(&fused.config, &fused.params, "fused").unwrap();
        for layer in model.moe_layers_mut() {
            layer.spec = RouterSpec { selection_bias: SelectionBias::Plugin, ..RouterSpec::softmax_topk(1) };
            layer.selection_bias = (0..3).map(|e| if e == i { 10.0 } else { 0.0 }).collect();
        }
        let got = model.forward(&ids, 1).unwrap().logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = Transformer::new(&config, params, "specialist").unwrap().forward(&ids, 1).unwrap().logits.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert!(max_rel_diff(&got, &want) <= 1e-6, "pinned to specialist {i}: {:.2e}", max_rel_diff(&got, &want));
    }
}

#[test]
fn plans_that_cannot_be_used_are_refused_before_anything_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let dense = write_dense(&dir.path().join("dense"), Architecture::Llama, false, 6);
    let tied = write_dense(&dir.path().join("tied"), Architecture::Llama, true, 6);
    let cases: [(&Path, &str, &str, &[&str], &str); 4] = [
        (&dense, "fine-grained-split", "granularity = 5", &[], "granularity 5 does not divide the FFN width 64"),
        (&tied, "scale-up", "hidden = 64", &[], "ties its embeddings"),
        (&dense, "sparse-upcycle", "experts = 4\nevery = 2", &["--format", "hf"], "cannot be written as Hugging Face Qwen2MoeForCausalLM"),
        (&dense, "sparse-upcycle", "experts = 4\ntop_k = 9", &[], "need 1 <= top_k <= experts"),
    ];
    for (i, (source, scheme, params, extra, needle)) in cases.iter().enumerate() {
        let out = dir.path().join(format!("out-{i}"));
        let o = upcycle(&[source], scheme, params, &out, extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle), "{scheme} {params:?}: want {needle:?}\n{}", text(&o));
        assert!(!out.exists(), "{scheme}: nothing may be written");
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains(".tmp")).collect();
        assert!(leftovers.is_empty(), "temporary output left behind");
    }
    // The recast format holds what Hugging Face cannot (dense layers between MoE layers
    // of a model without qkv bias), and runs as is.
    let out = dir.path().join("every-other");
    let o = upcycle(&[&dense], "sparse-upcycle", "experts = 4\nevery = 2", &out, &[]);
    assert!(o.status.success(), "{}", text(&o));
    assert_same_function(&dense, &out, "every other layer");
}

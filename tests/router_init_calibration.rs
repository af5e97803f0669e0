//! Routers initialised from calibration text (`recast upcycle --calibration`, METHODS.md
//! §3.8): the rows `fuse-specialists` and `fine-grained-split` get are checked against
//! centroids computed here another way — token embeddings read straight from the
//! source's safetensors and averaged in plain Rust; MoE inputs as the final hidden state
//! of a truncated copy of the source whose last MLP adds nothing and whose final norm is
//! that layer's post-attention norm — and, right after upcycling, held-out text of each
//! domain is routed (top-1, or top-G for groups) most to its own expert.

mod support;

use std::path::Path;

use candle_core::DType;
use recast::data::builtin::generate;
use recast::model::checkpoint::{self, CheckpointReader, WriteOptions};
use recast::model::config::{Architecture, ModelConfig, RopeConfig, RopeScaling};
use recast::model::init::{InitOptions, random_params};
use recast::model::params::ParamStore;
use recast::model::transformer::Transformer;
use recast::moe::spec::RouterSpec;
use support::{plugin, run, text};

const LAYERS: usize = 3;
const HIDDEN: usize = 32;
/// The source's positions: the host's calibration windows are this long.
const POSITIONS: usize = 128;
const DOMAINS: [&str; 3] = ["arithmetic", "code", "prose"];

fn dense_config(layers: usize) -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Llama,
        vocab_size: 256,
        hidden_size: HIDDEN,
        intermediate_size: 64,
        num_layers: layers,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 8,
        rms_norm_eps: 1e-6,
        rope: RopeConfig { theta: 10_000.0, scaling: RopeScaling::None },
        max_position_embeddings: POSITIONS,
        tie_word_embeddings: false,
        qkv_bias: false,
        o_bias: false,
        attention_window: vec![None; layers],
        moe: None,
        passthrough: Default::default(),
    }
}

/// A random dense byte-level model (no tokenizer.json, so calibration text is bytes).
fn write_dense(dir: &Path) -> ParamStore {
    let params = random_params(&dense_config(LAYERS), InitOptions { std: 0.15, seed: 3, dtype: DType::F32 }).unwrap();
    checkpoint::write(dir, &dense_config(LAYERS), &params, &WriteOptions::default()).unwrap();
    params
}

fn upcycle(sources: &[&Path], scheme: &str, params: &str, calibration: &[String], tokens: usize, out: &Path) -> std::process::Output {
    let mut args = vec!["upcycle".to_string()];
    for s in sources {
        args.extend(["--source".into(), s.display().to_string()]);
    }
    args.extend(["--scheme".into(), plugin(scheme).display().to_string(), "--params".into(), params.into(), "--out".into(), out.display().to_string()]);
    for c in calibration {
        args.extend(["--calibration".into(), c.clone()]);
    }
    args.extend(["--calibration-tokens".into(), tokens.to_string()]);
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    run(&refs)
}

/// Layer `layer`'s router rows in an upcycled checkpoint, `[experts][hidden]`.
fn router_rows(out: &Path, layer: usize) -> Vec<Vec<f32>> {
    let t = CheckpointReader::open(out).unwrap().load(&format!("model.layers.{layer}.mlp.gate.weight"), DType::F32).unwrap();
    t.to_vec2().unwrap()
}

fn unit(v: Vec<f64>) -> Vec<f32> {
    let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
    v.into_iter().map(|x| (x / norm) as f32).collect()
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max)
}

/// Reference `embed-centroid`: the embedding table read from the source's safetensors
/// file as little-endian f32 and averaged over the tokens here.
fn embed_centroid(dense: &Path, tokens: &[u32]) -> Vec<f32> {
    let bytes = std::fs::read(dense.join("model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let view = st.tensor("model.embed_tokens.weight").unwrap();
    assert_eq!((view.dtype(), view.shape()), (safetensors::Dtype::F32, &[256, HIDDEN][..]));
    let table: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
    let mut sum = vec![0f64; HIDDEN];
    for &t in tokens {
        for (s, &x) in sum.iter_mut().zip(&table[t as usize * HIDDEN..(t as usize + 1) * HIDDEN]) {
            *s += x as f64;
        }
    }
    unit(sum.into_iter().map(|s| s / tokens.len() as f64).collect())
}

/// Reference `hidden-centroid` at `layer`: the source cut after `layer`, that layer's
/// MLP silenced (`down_proj` = 0) and its post-attention norm as the final norm, so the
/// model's final hidden state is exactly the layer's MoE input; run on windows of
/// [`POSITIONS`] tokens one at a time and averaged over every position.
fn hidden_centroid(dense: &ParamStore, layer: usize, tokens: &[u32]) -> Vec<f32> {
    let config = dense_config(layer + 1);
    let mut cut = ParamStore::new();
    for (name, t) in dense.iter() {
        let index = name.strip_prefix("model.layers.").and_then(|r| r.split('.').next()).and_then(|i| i.parse::<usize>().ok());
        if index.is_none_or(|i| i <= layer) {
            cut.insert(name.clone(), t.clone(), None);
        }
    }
    let down = format!("model.layers.{layer}.mlp.down_proj.weight");
    cut.insert(down.clone(), dense.get(&down).unwrap().zeros_like().unwrap(), None);
    cut.insert("model.norm.weight", dense.get(&format!("model.layers.{layer}.post_attention_layernorm.weight")).unwrap().clone(), None);
    let model = Transformer::new(&config, &cut, "cut").unwrap();
    let mut sum = vec![0f64; HIDDEN];
    for window in tokens.chunks(POSITIONS) {
        let hidden: Vec<Vec<f32>> = model.hidden_routed(window, 1, None).unwrap().hidden.to_vec2().unwrap();
        for row in hidden {
            for (s, x) in sum.iter_mut().zip(row) {
                *s += x as f64;
            }
        }
    }
    unit(sum.into_iter().map(|s| s / tokens.len() as f64).collect())
}

/// Calibration text files, one per domain, and their first `n` byte tokens.
fn calibration_files(dir: &Path, n: usize) -> (Vec<String>, Vec<Vec<u32>>) {
    DOMAINS
        .iter()
        .map(|d| {
            let text = generate(d, 4 * n, 11).unwrap();
            let path = dir.join(format!("{d}.txt"));
            std::fs::write(&path, &text).unwrap();
            (path.display().to_string(), text.bytes().take(n).map(u32::from).collect())
        })
        .unzip()
}

#[test]
fn router_rows_equal_centroids_computed_another_way() {
    let dir = tempfile::tempdir().unwrap();
    let dense_dir = dir.path().join("dense");
    let dense = write_dense(&dense_dir);
    // 600 tokens: four full windows of 128 (one forward pass) and a tail of 88.
    let n = 600;
    let (files, tokens) = calibration_files(dir.path(), n);
    let sources = [dense_dir.as_path(); 3];
    let hidden: Vec<Vec<Vec<f32>>> = (0..LAYERS).map(|l| tokens.iter().map(|t| hidden_centroid(&dense, l, t)).collect()).collect();

    let out = dir.path().join("embed");
    let o = upcycle(&sources, "fuse-specialists", "router_init = \"embed_centroid\"\ntop_k = 1", &files, n, &out);
    assert!(o.status.success(), "{}", text(&o));
    for l in 0..LAYERS {
        for (e, rows) in router_rows(&out, l).iter().enumerate() {
            let d = max_diff(rows, &embed_centroid(&dense_dir, &tokens[e]));
            assert!(d <= 1e-6, "embed-centroid, layer {l}, expert {e}: {d:.2e} from the reference");
        }
    }
    let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("upcycle.json")).unwrap()).unwrap();
    assert_eq!((record["calibration"][2]["text"].as_str(), record["calibration"][2]["tokens"].as_u64()), (Some(files[2].as_str()), Some(n as u64)));

    let out = dir.path().join("hidden");
    let o = upcycle(&sources, "fuse-specialists", "router_init = \"hidden_centroid\"\ntop_k = 1", &files, n, &out);
    assert!(o.status.success(), "{}", text(&o));
    for (l, want) in hidden.iter().enumerate() {
        for (e, rows) in router_rows(&out, l).iter().enumerate() {
            let d = max_diff(rows, &want[e]);
            assert!(d <= 1e-5, "hidden-centroid, layer {l}, expert {e}: {d:.2e} from the reference");
        }
    }

    // Groups: fine-grained-split, three copies of two slices, group g from text g;
    // without noise the rows are the centroids, with it they differ by N(0, 0.02²).
    for (std, tolerance) in [(0.0f32, 1e-5f32), (0.02, 0.0)] {
        let out = dir.path().join(format!("groups-{std}"));
        let params = format!("granularity = 2\ncopies = 3\nrouter_init = \"group_centroid\"\nrouter_std = {std}");
        let o = upcycle(&[&dense_dir], "fine-grained-split", &params, &files, n, &out);
        assert!(o.status.success(), "{}", text(&o));
        let mut noise = Vec::new();
        for (l, want) in hidden.iter().enumerate() {
            for (e, rows) in router_rows(&out, l).iter().enumerate() {
                noise.extend(rows.iter().zip(&want[e / 2]).map(|(x, c)| (x - c) as f64));
            }
        }
        let (mean, sd) = mean_std(&noise);
        if std == 0.0 {
            assert!(noise.iter().all(|x| x.abs() <= tolerance as f64), "group-centroid without noise: rows differ from the centroids");
        } else {
            // 576 draws: the sample mean and std within 4σ/√n of 0 and σ.
            let bound = 4.0 * std as f64 / (noise.len() as f64).sqrt();
            assert!(mean.abs() <= bound && (sd - std as f64).abs() <= bound, "group-centroid noise: mean {mean:.4}, std {sd:.4}, want 0 and {std} within {bound:.4}");
        }
    }
}

fn mean_std(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    (m, (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / n).sqrt())
}

/// Share of each MoE layer's top-`k` assignments that go to each group of `group`
/// experts, for `tokens` run through the upcycled model in windows of [`POSITIONS`].
fn routed_shares(model: &Path, k: u32, group: usize, tokens: &[u32]) -> Vec<Vec<f64>> {
    let ckpt = checkpoint::read(model, DType::F32).unwrap();
    let mut transformer = Transformer::new(&ckpt.config, &ckpt.params, "upcycled").unwrap();
    for layer in transformer.moe_layers_mut() {
        layer.spec = RouterSpec { renormalize: true, ..RouterSpec::softmax_topk(k) };
    }
    let windows = tokens.len() / POSITIONS;
    let stats = transformer.forward(&tokens[..windows * POSITIONS], windows).unwrap().moe_stats;
    stats
        .iter()
        .map(|s| {
            let total: u64 = s.expert_load.iter().map(|&x| x as u64).sum();
            s.expert_load.chunks(group).map(|g| g.iter().map(|&x| x as u64).sum::<u64>() as f64 / total as f64).collect()
        })
        .collect()
}

/// One upcycling whose routing of held-out text is checked.
struct Routing {
    method: &'static str,
    /// How many times the dense source is given.
    sources: usize,
    scheme: &'static str,
    params: &'static str,
    top_k: u32,
    /// Experts per group (one expert each, or fine-grained-split's slices of one copy).
    group: usize,
    /// The MoE layers (from the first) where the own expert must take the most tokens.
    checked_layers: usize,
    /// The share the own expert (group) must exceed there, besides being the largest.
    least: f64,
}

#[test]
fn right_after_upcycling_each_domain_is_routed_most_to_its_own_expert() {
    let dir = tempfile::tempdir().unwrap();
    let dense_dir = dir.path().join("dense");
    write_dense(&dense_dir);
    // Calibration: two built-in domains and a prepared one, from generated text.
    let prose = dir.path().join("prose.txt");
    std::fs::write(&prose, generate("prose", 1 << 16, 5).unwrap()).unwrap();
    let shards = dir.path().join("shards");
    let o = run(&["data", "prepare", "--out", shards.to_str().unwrap(), "--domain", &format!("prose={}", prose.display())]);
    assert!(o.status.success(), "{}", text(&o));
    let calibration = vec!["builtin:arithmetic".to_string(), "builtin:code".to_string(), shards.join("prose").display().to_string()];
    // Held out: the same generators, another seed.
    let held_out: Vec<Vec<u32>> = DOMAINS.iter().map(|d| generate(d, 8 * POSITIONS, 999).unwrap().bytes().map(u32::from).collect()).collect();
    // The embedding centroid is one row for every layer; only the first MoE layer's input
    // is close to the embeddings (in this random model the blocks' outputs soon dominate).
    let cases = [
        Routing { method: "embed-centroid", sources: 3, scheme: "fuse-specialists", params: "router_init = \"embed_centroid\"", top_k: 1, group: 1, checked_layers: 1, least: 0.0 },
        Routing { method: "hidden-centroid", sources: 3, scheme: "fuse-specialists", params: "router_init = \"hidden_centroid\"", top_k: 1, group: 1, checked_layers: LAYERS, least: 0.5 },
        Routing {
            method: "group-centroid",
            sources: 1,
            scheme: "fine-grained-split",
            params: "granularity = 2\ncopies = 3\nrouter_init = \"group_centroid\"",
            top_k: 2,
            group: 2,
            checked_layers: LAYERS,
            least: 0.5,
        },
    ];
    for Routing { method, sources, scheme, params, top_k: k, group, checked_layers: checked, least } in cases {
        let out = dir.path().join(method);
        let o = upcycle(&vec![dense_dir.as_path(); sources], scheme, params, &calibration, 4096, &out);
        assert!(o.status.success(), "{method}: {}", text(&o));
        for (d, tokens) in held_out.iter().enumerate() {
            for (l, shares) in routed_shares(&out, k, group, tokens).iter().enumerate() {
                let own = shares[d];
                let percent: Vec<f64> = shares.iter().map(|s| (s * 100.0).round()).collect();
                eprintln!("{method}: {} text, layer {l}: {:.0}% of top-{k} choices to its own expert{} (all: {percent:?})", DOMAINS[d], own * 100.0, if group > 1 { " group" } else { "" });
                if l < checked {
                    let largest = shares.iter().enumerate().all(|(g, &s)| g == d || s < own);
                    assert!(largest && own > least, "{method}: {} text in layer {l} is not routed mostly to its own expert: {percent:?}%", DOMAINS[d]);
                }
            }
        }
    }
}

#[test]
fn a_plan_that_asks_for_centroids_without_its_calibration_text_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dense_dir = dir.path().join("dense");
    write_dense(&dense_dir);
    let sources = [dense_dir.as_path(); 3];
    // (times the source is given, scheme, params, calibration, what the error says)
    let cases: [(usize, &str, &str, &[&str], &str); 3] = [
        (3, "fuse-specialists", "router_init = \"hidden_centroid\"", &[], "hidden-centroid, which needs one calibration text per expert (3)"),
        (3, "fuse-specialists", "router_init = \"embed_centroid\"", &["builtin:code"], "but 1 was given"),
        (1, "fine-grained-split", "granularity = 2\ncopies = 2\nrouter_init = \"group_centroid\"", &["builtin:code", "builtin:prose", "builtin:arithmetic"], "per expert group (2)"),
    ];
    for (i, (given, scheme, params, calibration, needle)) in cases.into_iter().enumerate() {
        let out = dir.path().join(format!("out-{i}"));
        let calibration: Vec<String> = calibration.iter().map(|s| s.to_string()).collect();
        let o = upcycle(&sources[..given], scheme, params, &calibration, 256, &out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(needle), "{scheme} {params:?}: want {needle:?}\n{}", text(&o));
        assert!(!out.exists(), "{scheme}: nothing may be written");
    }
    let o = upcycle(&sources, "fuse-specialists", "router_init = \"hidden_centroid\"", &["prose".into()], 256, &dir.path().join("bare"));
    assert!(String::from_utf8_lossy(&o.stderr).contains("builtin:prose"), "{}", text(&o));
}

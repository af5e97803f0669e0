//! Init schemes written in Python and JavaScript against the Rust reference: the Python
//! port `py-sparse-upcycle` returns the same plan as `sparse-upcycle` for every parameter
//! set (and refuses the same ones), and `recast upcycle` writes byte-identical weights and
//! config with either; the JavaScript scaffold of `recast plugin new --kind init-scheme`
//! plans sparse upcycling exactly like the Rust scheme and its noise ops run.

mod support;

use std::path::{Path, PathBuf};

use recast::plugins::init_scheme::{ModelShape, SourceModel, TensorInfo};
use recast::plugins::{InitSchemePlugin, PluginComponent, PluginEngine, PluginLimits};
use serde_json::Value;
use support::{plugin, run, text};

const LAYERS: u32 = 4;
const HIDDEN: u64 = 16;
const INTERMEDIATE: u64 = 24;
const VOCAB: u64 = 64;

/// Every tensor of a dense Llama with [`LAYERS`] layers, in safetensors' (sorted) order.
fn dense_tensors() -> Vec<(String, Vec<u64>)> {
    let (h, i, v, heads, kv, hd) = (HIDDEN, INTERMEDIATE, VOCAB, 4, 2, HIDDEN / 4);
    let mut out = vec![("lm_head.weight".to_string(), vec![v, h]), ("model.embed_tokens.weight".into(), vec![v, h]), ("model.norm.weight".into(), vec![h])];
    for l in 0..LAYERS {
        for (name, shape) in [
            ("input_layernorm.weight", vec![h]),
            ("mlp.down_proj.weight", vec![h, i]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("self_attn.k_proj.weight", vec![kv * hd, h]),
            ("self_attn.o_proj.weight", vec![h, heads * hd]),
            ("self_attn.q_proj.weight", vec![heads * hd, h]),
            ("self_attn.v_proj.weight", vec![kv * hd, h]),
        ] {
            out.push((format!("model.layers.{l}.{name}"), shape));
        }
    }
    out
}

/// A dense Hugging Face Llama checkpoint written byte by byte here (config.json and
/// one safetensors file of pseudo-random f32), independent of Recast's writer.
fn write_dense(dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu", "hidden_size": HIDDEN, "intermediate_size": INTERMEDIATE,
        "num_hidden_layers": LAYERS, "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": VOCAB, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 128, "tie_word_embeddings": false, "torch_dtype": "float32",
    });
    std::fs::write(dir.join("config.json"), serde_json::to_string_pretty(&config).unwrap()).unwrap();
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = dense_tensors()
        .into_iter()
        .map(|(name, shape)| {
            let n: u64 = shape.iter().product();
            let bytes = (0..n)
                .flat_map(|_| {
                    state = state.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                    (((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.4).to_le_bytes()
                })
                .collect();
            (name, shape.iter().map(|&d| d as usize).collect(), bytes)
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> =
        data.iter().map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    dir.to_path_buf()
}

/// The source description `recast upcycle` gives a scheme for [`write_dense`]'s model,
/// less the layers in `without_mlp`'s MLP tensors.
fn source(without_mlp: Option<u32>) -> SourceModel {
    let dropped = |name: &str| without_mlp.is_some_and(|l| name.starts_with(&format!("model.layers.{l}.mlp.")));
    SourceModel {
        index: 0,
        architecture: "llama".into(),
        shape: ModelShape { layers: LAYERS, hidden: HIDDEN as u32, intermediate: INTERMEDIATE as u32, heads: 4, kv_heads: 2, head_dim: HIDDEN as u32 / 4, vocab: VOCAB as u32, tied_embeddings: false },
        tensors: dense_tensors().into_iter().filter(|(n, _)| !dropped(n)).map(|(name, shape)| TensorInfo { name, shape }).collect(),
    }
}

/// Components loaded once per test, instantiated per parameter set.
struct Schemes {
    engine: PluginEngine,
    components: Vec<(String, PluginComponent)>,
}

impl Schemes {
    fn load(files: &[(&str, &Path)]) -> Self {
        let engine = PluginEngine::new().unwrap();
        let components = files.iter().map(|(name, file)| (name.to_string(), engine.load_bytes(name, &std::fs::read(file).unwrap()).unwrap())).collect();
        Schemes { engine, components }
    }

    /// Each scheme's plan (as JSON) for `sources`, or its error.
    fn plans(&self, params: &str, seed: u64, sources: &[SourceModel]) -> Vec<Result<Value, String>> {
        self.components
            .iter()
            .map(|(name, component)| {
                let mut scheme = InitSchemePlugin::new(&self.engine, component, params, seed, PluginLimits::default()).map_err(|e| format!("{name}: {e}"))?;
                let (plan, _) = scheme.plan(sources).map_err(|e| format!("{name}: {e}"))?;
                Ok(serde_json::to_value(plan).unwrap())
            })
            .collect()
    }
}

fn upcycle(dense: &Path, scheme: &Path, params: &str, seed: u64, out: &Path) {
    let seed = seed.to_string();
    let o = run(&["upcycle", "--source", dense.to_str().unwrap(), "--scheme", scheme.to_str().unwrap(), "--params", params, "--seed", &seed, "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}: {}", scheme.display(), text(&o));
}

fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// `recast upcycle` with both schemes; the outputs' weights and config are identical.
fn assert_same_output(dir: &Path, dense: &Path, rust: &Path, other: &Path, params: &str, seed: u64, case: &str) -> Vec<u8> {
    let (a, b) = (dir.join(format!("{case}-rust")), dir.join(format!("{case}-other")));
    upcycle(dense, rust, params, seed, &a);
    upcycle(dense, other, params, seed, &b);
    let weights = read(&a.join("model.safetensors"));
    assert!(weights == read(&b.join("model.safetensors")), "{case}: model.safetensors differs ({params:?}, seed {seed})");
    assert!(read(&a.join("config.json")) == read(&b.join("config.json")), "{case}: config.json differs ({params:?}, seed {seed})");
    weights
}

#[test]
fn python_sparse_upcycle_plans_and_writes_exactly_what_the_rust_one_does() {
    let schemes = Schemes::load(&[("sparse-upcycle", plugin("sparse-upcycle")), ("py-sparse-upcycle", plugin("py-sparse-upcycle"))]);
    let cases = [
        ("", 0),
        ("experts = 4\ntop_k = 2", 1),
        ("experts = 3\ntop_k = 3\nevery = 2\nrouter_init = \"uniform_centred\"\nrouter_std = 0.3", 7),
        ("experts = 5\ntop_k = 1\nevery = 3\nrouter_init = \"zeros\"", 18_446_744_073_709_551_615),
        ("{\"experts\": 2, \"top_k\": 1, \"router_std\": 0.125}", 12_345),
        ("experts = 2\nrouter_init = \"hidden_centroid\"", 2),
        ("experts = 2\nevery = 2\nrouter_init = \"embed_centroid\"", 2),
    ];
    for (params, seed) in cases {
        let plans = schemes.plans(params, seed, &[source(None)]);
        let rust = plans[0].as_ref().unwrap_or_else(|e| panic!("{params:?}: {e}"));
        assert_eq!(Ok(rust), plans[1].as_ref(), "{params:?}, seed {seed}: the plans differ");
        assert!(!rust["ops"].as_array().unwrap().is_empty());
    }
    // Seeds reach the plan: another seed, other router seeds.
    assert_ne!(schemes.plans("experts = 2", 1, &[source(None)])[1], schemes.plans("experts = 2", 2, &[source(None)])[1]);

    // The same refusals: bad parameters, a source without a dense MLP, two sources.
    for params in ["top_k = 9", "experts = 0", "every = 0", "router_init = \"bogus\"", "router_std = -1.0", "expert = 4", "experts = 2.5"] {
        let plans = schemes.plans(params, 0, &[source(None)]);
        assert!(plans.iter().all(Result::is_err), "{params:?}: {plans:?}");
    }
    let missing = schemes.plans("every = 1", 0, &[source(Some(2))]);
    assert!(missing.iter().all(|p| p.as_ref().is_err_and(|e| e.contains("has no `model.layers.2.mlp."))), "{missing:?}");
    let two = schemes.plans("", 0, &[source(None), SourceModel { index: 1, ..source(None) }]);
    assert!(two.iter().all(|p| p.as_ref().is_err_and(|e| e.contains("exactly one dense source, got 2"))), "{two:?}");

    // And the bytes `recast upcycle` writes, with random routers (seeded per layer).
    let dir = tempfile::tempdir().unwrap();
    let dense = write_dense(&dir.path().join("dense"));
    let (rust, py) = (plugin("sparse-upcycle"), plugin("py-sparse-upcycle"));
    let first = assert_same_output(dir.path(), &dense, rust, py, "experts = 4\ntop_k = 2\nrouter_std = 0.5", 3, "normal");
    assert_same_output(dir.path(), &dense, rust, py, "experts = 3\ntop_k = 1\nevery = 2\nrouter_init = \"uniform_centred\"", 99, "every-other");
    let reseeded = assert_same_output(dir.path(), &dense, rust, py, "experts = 4\ntop_k = 2\nrouter_std = 0.5", 4, "reseeded");
    assert!(first != reseeded, "the seed changed nothing: the comparison would not see a wrong router seed");
}

#[test]
fn javascript_scaffold_plans_sparse_upcycling_and_its_noise_runs() {
    let dir = tempfile::tempdir().unwrap();
    let new = run(&["plugin", "new", "--kind", "init-scheme", "--lang", "javascript", "my-js-scheme", "--dir", dir.path().to_str().unwrap()]);
    assert!(new.status.success(), "{}", text(&new));
    let build = run(&["plugin", "build", dir.path().join("my-js-scheme").to_str().unwrap()]);
    assert!(build.status.success(), "{}", text(&build));
    let js = PathBuf::from(String::from_utf8_lossy(&build.stdout).lines().last().unwrap().trim());

    // Its defaults are sparse-upcycle's: every layer, 8 experts, top-2, N(0, 0.02²) routers.
    let schemes = Schemes::load(&[("sparse-upcycle", plugin("sparse-upcycle")), ("my-js-scheme", &js)]);
    for (params, seed) in [("", 0), ("experts = 4\ntop_k = 1\nrouter_std = 0.5", 18_446_744_073_709_551_615)] {
        let plans = schemes.plans(params, seed, &[source(None)]);
        assert_eq!(plans[0], plans[1], "{params:?}, seed {seed}: the plans differ");
    }
    let dense = write_dense(&dir.path().join("dense"));
    assert_same_output(dir.path(), &dense, plugin("sparse-upcycle"), &js, "experts = 4\ntop_k = 1\nrouter_std = 0.5", 5, "js");

    // With noise, one noise op per expert projection, and the experts start apart.
    let noisy = schemes.plans("experts = 2\nexpert_noise = 0.1", 5, &[source(None)]).remove(1).unwrap();
    let noise_ops = noisy["ops"].as_array().unwrap().iter().filter(|op| op.get("Noise").is_some()).count();
    assert_eq!(noise_ops, LAYERS as usize * 2 * 3, "{noisy}");
    let out = dir.path().join("noisy");
    upcycle(&dense, &js, "experts = 2\nexpert_noise = 0.1", 5, &out);
    let bytes = read(&out.join("model.safetensors"));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let expert = |e: u32| st.tensor(&format!("model.layers.1.mlp.experts.{e}.up_proj.weight")).unwrap().data().to_vec();
    assert!(expert(0) != expert(1), "noise left the two experts equal");
}

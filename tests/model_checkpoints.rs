//! Checkpoints in and out, and `recast forward` / `recast convert` on broken input: each
//! failure names the file and tensor (or key) at fault.

mod support;

use std::path::Path;

use candle_core::DType;
use recast::model::checkpoint::{self, WriteOptions};
use recast::model::config::{Architecture, ModelConfig, MoeConfig, RopeConfig, RopeScaling};
use recast::model::init::{InitOptions, random_params};
use recast::model::transformer::Transformer;
use safetensors::SafeTensors;
use support::{run, text};

fn mixtral() -> ModelConfig {
    ModelConfig {
        architecture: Architecture::Mixtral,
        vocab_size: 50,
        hidden_size: 16,
        intermediate_size: 24,
        num_layers: 2,
        num_heads: 4,
        num_kv_heads: 2,
        head_dim: 4,
        rms_norm_eps: 1e-5,
        rope: RopeConfig { theta: 1e6, scaling: RopeScaling::None },
        max_position_embeddings: 128,
        tie_word_embeddings: false,
        qkv_bias: false,
        o_bias: false,
        attention_window: vec![None; 2],
        moe: Some(MoeConfig {
            num_experts: 4,
            top_k: 2,
            expert_intermediate: vec![24; 4],
            shared_expert_intermediate: vec![],
            shared_expert_gate: false,
            normalize_top_k: true,
            moe_layers: vec![true; 2],
            router_aux_loss_coef: 0.02,
        }),
        passthrough: Default::default(),
    }
}

fn write_model(dir: &Path, shard: Option<u64>) -> ModelConfig {
    let config = mixtral();
    let params = random_params(&config, InitOptions { std: 0.3, seed: 3, dtype: DType::F32 }).expect("init");
    checkpoint::write(dir, &config, &params, &WriteOptions { dtype: DType::F32, max_shard_bytes: shard, ..WriteOptions::default() }).expect("write");
    config
}

fn forward(model: &Path, out: &Path) -> std::process::Output {
    run(&["forward", "--model", model.to_str().unwrap(), "--tokens", "1,2,3,4", "--out", out.to_str().unwrap()])
}

fn logits(path: &Path) -> Vec<f32> {
    let bytes = std::fs::read(path).expect("logits file");
    let st = SafeTensors::deserialize(&bytes).expect("safetensors");
    let view = st.tensor("logits").expect("`logits` tensor");
    view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// Rewrite one safetensors file, changing its tensors with `edit`.
fn edit_tensors(file: &Path, edit: impl Fn(&str, safetensors::Dtype, Vec<usize>, Vec<u8>) -> Option<(safetensors::Dtype, Vec<usize>, Vec<u8>)>) {
    let bytes = std::fs::read(file).expect("read");
    let st = SafeTensors::deserialize(&bytes).expect("parse");
    let mut kept = Vec::new();
    for (name, view) in st.tensors() {
        if let Some(t) = edit(&name, view.dtype(), view.shape().to_vec(), view.data().to_vec()) {
            kept.push((name, t));
        }
    }
    let views: Vec<(String, safetensors::tensor::TensorView)> = kept.iter().map(|(n, (d, s, b))| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).expect("view"))).collect();
    safetensors::serialize_to_file(views, None, file).expect("write");
}

#[test]
fn written_checkpoints_read_back_identically_single_and_sharded() {
    let dir = tempfile::tempdir().unwrap();
    for (sub, shard) in [("single", None), ("sharded", Some(20_000))] {
        let path = dir.path().join(sub);
        let config = write_model(&path, shard);
        assert_eq!(path.join("model.safetensors.index.json").exists(), shard.is_some());
        let back = checkpoint::read(&path, DType::F32).expect("read");
        assert_eq!(back.config, {
            let mut c = config.clone();
            c.passthrough = back.config.passthrough.clone();
            c
        });
        let original = random_params(&config, InitOptions { std: 0.3, seed: 3, dtype: DType::F32 }).unwrap();
        assert_eq!(back.params.len(), original.len());
        for (name, t) in original.iter() {
            let a: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            let b: Vec<f32> = back.params.get(name).unwrap_or_else(|| panic!("{name} lost")).flatten_all().unwrap().to_vec1().unwrap();
            assert_eq!(a, b, "{name}");
        }
        Transformer::new(&back.config, &back.params, sub).expect("builds");
    }
}

#[test]
fn forward_and_convert_agree_and_token_files_work() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m");
    write_model(&model, None);
    let out = forward(&model, &dir.path().join("a.safetensors"));
    assert!(out.status.success(), "{}", text(&out));
    let a = logits(&dir.path().join("a.safetensors"));
    assert_eq!(a.len(), 4 * 50);

    let converted = dir.path().join("c");
    let out = run(&["convert", "--model", model.to_str().unwrap(), "--out", converted.to_str().unwrap(), "--max-shard-size", "30KB"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(converted.join("model.safetensors.index.json").exists());
    let ids = dir.path().join("ids.txt");
    std::fs::write(&ids, "1 2\n3, 4\n").unwrap();
    let out = run(&["forward", "--model", converted.to_str().unwrap(), "--tokens", ids.to_str().unwrap(), "--out", dir.path().join("b.safetensors").to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(a, logits(&dir.path().join("b.safetensors")));
}

#[test]
fn broken_checkpoints_name_the_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let out_file = dir.path().join("o.safetensors");
    let fresh = |name: &str| {
        let p = dir.path().join(name);
        write_model(&p, None);
        p
    };
    let expect_error = |model: &Path, needles: &[&str]| {
        let out = forward(model, &out_file);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success(), "should fail: {}", text(&out));
        for n in needles {
            assert!(err.contains(n), "error should mention {n:?}:\n{err}");
        }
    };

    let m = fresh("missing");
    edit_tensors(&m.join("model.safetensors"), |n, d, s, b| (n != "model.layers.1.block_sparse_moe.experts.2.w3.weight").then_some((d, s, b)));
    expect_error(&m, &["model.layers.1.block_sparse_moe.experts.2.w3.weight", "missing"]);

    let m = fresh("shape");
    edit_tensors(&m.join("model.safetensors"), |n, d, s, b| Some(if n == "model.norm.weight" { (d, vec![8], b[..32].to_vec()) } else { (d, s, b) }));
    expect_error(&m, &["model.safetensors", "model.norm.weight", "[8]", "[16]"]);

    let m = fresh("dtype");
    edit_tensors(&m.join("model.safetensors"), |n, d, s, b| Some(if n == "model.norm.weight" { (safetensors::Dtype::I32, s, b) } else { (d, s, b) }));
    expect_error(&m, &["model.safetensors", "model.norm.weight", "I32"]);

    let m2 = fresh("truncated");
    let file = m2.join("model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    expect_error(&m2, &["model.safetensors", "not a readable safetensors file"]);

    let m = fresh("arch");
    let cfg = m.join("config.json");
    let text_cfg = std::fs::read_to_string(&cfg).unwrap().replace("MixtralForCausalLM", "GPTNeoXForCausalLM");
    std::fs::write(&cfg, text_cfg).unwrap();
    expect_error(&m, &["config.json", "unsupported architecture \"GPTNeoXForCausalLM\""]);

    expect_error(&dir.path().join("nowhere"), &["nowhere", "config.json"]);

    let m = fresh("tokens");
    let out = run(&["forward", "--model", m.to_str().unwrap(), "--tokens", "1,x,3", "--out", out_file.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("item 2 (\"x\") is not a token id"), "{}", text(&out));
    let out = run(&["forward", "--model", m.to_str().unwrap(), "--tokens", "1,50", "--out", out_file.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("token id 50 at position 1 is outside the vocabulary (size 50)"), "{}", text(&out));
}

#[test]
fn leftover_tensors_are_reported() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    write_model(&m, None);
    // Add a tensor no Mixtral has.
    let bytes = std::fs::read(m.join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut views: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    let extra = vec![0u8; 16];
    views.push(("model.layers.0.mlp.shared_expert_gate.weight".into(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![1, 4], &extra).unwrap()));
    let path = dir.path().join("with-extra.safetensors");
    safetensors::serialize_to_file(views, None, &path).unwrap();
    std::fs::rename(&path, m.join("model.safetensors")).unwrap();
    let out = forward(&m, &dir.path().join("o.safetensors"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("does not account for") && err.contains("model.layers.0.mlp.shared_expert_gate.weight"), "{}", text(&out));
}

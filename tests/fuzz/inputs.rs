//! Valid inputs to start from and the generators that make them lie: run configs and
//! `config.json`s, safetensors files and checkpoint folders, bundle tars; and the echo
//! fixtures, built once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use recast::contract::{LayerStats, RouterSpec};
use recast::model::config::ModelConfig;
use recast::model::hf_config;
use recast::train::checkpoint::{DomainProgress, LayerRouting, PluginSnapshot, TrainState};
use serde_json::{Value, json};

use crate::mutate::{Case, escaped};
use crate::support;

/// The smallest valid run config (as in the config module's own tests).
pub const MINIMAL_RUN: &str = r#"[model.init]
architecture = "mixtral"
hidden_size = 32
num_layers = 2
num_heads = 4
intermediate_size = 64
num_experts = 4

[[data.domains]]
name = "math"
builtin = "arithmetic"

[train]
steps = 10
batch_size = 2
seq_len = 16
eval_tokens = 256
"#;

/// A run config that sets nearly every key: a checkpoint path, shards, plugin files and
/// bundles, trusted keys, stages with their own mixtures and plugin params.
pub const FULL_RUN: &str = r#"seed = 7
tokenizer = "tok/tokenizer.json"
on_plugin_fault = "keep-last-good"
hot_reload = false
require_pinned = true
lock_file = "run.lock"
trusted_keys = ["keys/alice.pub", "ed25519:AAAA"]

[model]
path = "models/dense"

[[data.domains]]
name = "code"
shards = "data/code"

[[data.domains]]
name = "math"
builtin = "arithmetic"

[plugins.router]
file = "plugins/router.wasm"
params = { top_k = 2, capacity_factor = 1.25 }

[plugins.aux_schedule]
bundle = "policies.tar"
plugin = "constant"

[plugins.sampler]
builtin = "staged"

[optimizer]
lr = 1e-3
beta1 = 0.9
beta2 = 0.95
eps = 1e-8
weight_decay = 0.0
clip_grad_norm = 0.5

[schedule]
kind = "warmup-stable-decay"
warmup_steps = 5
min_lr_ratio = 0.0
decay_fraction = 0.3

[train]
steps = 10
batch_size = 2
seq_len = 8
grad_accum = 2
eval_every = 5
eval_tokens = 32
checkpoint_every = 5
keep_checkpoints = 1

[compute]
precision = "bf16"
matmul = "candle"
device = "cpu"

[[stages]]
name = "router-only"
steps = 4
train = ["router", "experts"]
lr = 1e-4
mixture = [1.0, 0.0]
plugins.router = { top_k = 1 }

[[stages]]
name = "all"
steps = 6
"#;

fn llama_json() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-5, "hidden_act": "silu",
        "max_position_embeddings": 64, "tie_word_embeddings": false, "attention_bias": false, "torch_dtype": "float32",
        "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    })
}

pub fn base_configs() -> Vec<Value> {
    let mixtral = json!({
        "architectures": ["MixtralForCausalLM"], "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "num_local_experts": 4,
        "num_experts_per_tok": 2, "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}, "sliding_window": 32, "bos_token_id": 1
    });
    let qwen2 = json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "use_sliding_window": true, "sliding_window": 8,
        "max_window_layers": 1, "layer_types": ["full_attention", "sliding_attention", "sliding_attention"], "tie_word_embeddings": true,
        "max_position_embeddings": 128, "rope_scaling": {"type": "dynamic", "factor": 2.0}
    });
    let qwen2_moe = json!({
        "architectures": ["Qwen2MoeForCausalLM"], "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "moe_intermediate_size": 8,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4, "num_experts": 8, "num_experts_per_tok": 2,
        "shared_expert_intermediate_size": 16, "norm_topk_prob": false, "decoder_sparse_step": 2, "mlp_only_layers": [0], "router_aux_loss_coef": 0.001,
        "rope_scaling": {"rope_type": "linear", "factor": 4.0}
    });
    let mut recast_format = hf_config::from_json(&mixtral).expect("mixtral base");
    if let Some(moe) = recast_format.moe.as_mut() {
        moe.expert_intermediate[1] = 16;
    }
    let recast_format = hf_config::recast_json(&recast_format, serde_json::Map::new()).expect("recast json");
    vec![llama_json(), mixtral, qwen2, qwen2_moe, recast_format]
}

/// Element types with their sizes, as safetensors names them; the last ones are not
/// element types at all.
#[rustfmt::skip]
const DTYPES: &[(&str, u64)] = &[
    ("F32", 4), ("F16", 2), ("BF16", 2), ("F64", 8), ("I64", 8), ("I32", 4), ("I16", 2), ("I8", 1), ("U8", 1), ("U16", 2), ("U32", 4), ("U64", 8), ("BOOL", 1),
    ("F8_E4M3", 1), ("F8_E5M2", 1), ("F4", 1), ("E8M0", 1), ("C64", 8), ("XX", 1), ("", 1),
];

/// The honest shape of tensor `name` in a case whose shapes come from `seed`: 1 to 3
/// dims of 1 to 4; an AdamW moment (`m.NAME`, `v.NAME`) has its weight's shape.
fn honest_shape(seed: u64, name: &str) -> Vec<u64> {
    let base = name.strip_prefix("m.").or_else(|| name.strip_prefix("v.")).unwrap_or(name);
    let mut rng = Case::new(seed, base, 0).rng;
    (0..rng.range(1, 3)).map(|_| rng.range(1, 4)).collect()
}

/// A safetensors file of `tensors` (name, dtype), shaped by [`honest_shape`] with
/// `shapes`: honest when `lie` is 0, else each
/// part lies with probability `lie`: odd dtypes and shapes (0, huge, negative, products
/// that overflow, not numbers), offsets reversed, overlapping, out of range or missing,
/// a header length prefix that is wrong or huge, unpadded headers, short or long data,
/// garbage metadata, the header JSON mutated, and byte damage on top.
pub fn safetensors_file(case: &mut Case, tensors: &[(&str, &str)], shapes: u64, lie: f64) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for &(name, dtype) in tensors {
        let (dtype, size) = if case.rng.chance(lie) {
            let (d, s) = *case.rng.pick(DTYPES);
            case.note(format!("{name}: dtype {d}"));
            (Value::String(d.into()), s)
        } else {
            (Value::String(dtype.into()), DTYPES.iter().find(|(d, _)| *d == dtype).map_or(4, |(_, s)| *s))
        };
        let mut shape: Vec<Value> = honest_shape(shapes, name).into_iter().map(Value::from).collect();
        if case.rng.chance(lie) {
            let i = case.rng.index(shape.len() + 1);
            let dim = case.rng.pick(&[json!(0), json!(1u64 << 31), json!(1u64 << 32), json!(1u64 << 62), json!(u64::MAX), json!(-1), json!(1.5), json!("2"), Value::Null]).clone();
            case.note(format!("{name}: dim {i} = {dim}"));
            if i == shape.len() { shape.push(dim) } else { shape[i] = dim }
        }
        let elements = shape.iter().try_fold(1u64, |n, d| d.as_u64().and_then(|d| n.checked_mul(d)));
        let bytes = elements.and_then(|n| n.checked_mul(size)).filter(|&b| b <= 1 << 16).unwrap_or_else(|| case.rng.below(64));
        let mut offsets = json!([offset, offset + bytes]);
        if case.rng.chance(lie) {
            offsets = case
                .rng
                .pick(&[
                    json!([offset + bytes, offset]),
                    json!([0, bytes]),
                    json!([offset, u64::MAX]),
                    json!([offset, offset + bytes + 1]),
                    json!([-1, bytes]),
                    json!([offset]),
                    json!([offset, offset + bytes, 0]),
                    json!("0-4"),
                    Value::Null,
                ])
                .clone();
            case.note(format!("{name}: data_offsets {offsets}"));
        }
        offset += bytes;
        header.insert(name.to_string(), json!({ "dtype": dtype, "shape": shape, "data_offsets": offsets }));
    }
    if case.rng.chance(lie) {
        let metadata = case.rng.pick(&[json!({"format": "pt"}), json!({"format": 1}), json!([]), json!("x"), json!({"": {"nested": true}})]).clone();
        case.note(format!("__metadata__ = {metadata}"));
        header.insert("__metadata__".into(), metadata);
    }
    let mut header = Value::Object(header);
    if case.rng.chance(lie / 2.0) {
        case.mutate_json(&mut header);
    }
    let mut text = header.to_string().into_bytes();
    if !case.rng.chance(lie) {
        text.resize(text.len().div_ceil(8) * 8, b' ');
    }
    let mut length = text.len() as u64;
    if case.rng.chance(lie) {
        length = *case.rng.pick(&[0, 1, length - 1, length + 1, length + 8, u64::MAX, 1 << 63, 100_000_001, 1 << 32]);
        case.note(format!("header length prefix {length}"));
    }
    let mut data_len = offset;
    if case.rng.chance(lie) {
        data_len = case.rng.below(offset + 9);
        case.note(format!("{data_len} data bytes for {offset} declared"));
    }
    let mut file = length.to_le_bytes().to_vec();
    file.extend(text);
    file.extend((0..data_len).map(|i| (i * 37) as u8));
    if case.rng.chance(lie / 2.0) {
        case.mutate_bytes(&mut file);
    }
    file
}

/// A scratch folder reused by every case of a target.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// The tensors of the tiny model checkpoint, by Hugging Face name, plus names a reader
/// must cope with (a buffer it skips, an empty and a non-ASCII name).
#[rustfmt::skip]
pub const MODEL_TENSORS: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "F32"), ("model.layers.0.mlp.up_proj.weight", "BF16"), ("model.layers.0.self_attn.q_proj.weight", "F16"),
    ("lm_head.weight", "F64"), ("model.layers.0.self_attn.rotary_emb.inv_freq", "F32"), ("", "F32"), ("naïve ✓", "F32"),
    ("model.layers.0.block_sparse_moe.experts.0.w1.weight", "F32"), ("model.layers.0.mlp.shared_expert.up_proj.weight", "F32"), ("a.block_sparse_moe.experts", "F32"),
];

/// A model checkpoint folder: which base `config.json`, its `model.safetensors`, maybe
/// a shard index.
pub struct ModelCase {
    pub config: usize,
    pub weights: Vec<u8>,
    pub index: Option<Value>,
}

/// The train checkpoint's tensors: weights and their AdamW moments.
pub const TRAIN_TENSORS: &[(&str, &str)] = &[("w", "F32"), ("b", "F32")];

pub const MOMENT_TENSORS: &[(&str, &str)] = &[("m.w", "F32"), ("v.w", "F32"), ("m.b", "F32"), ("v.b", "F32")];

/// A training checkpoint folder's three files.
pub struct TrainCase {
    pub state: Vec<u8>,
    pub model: Vec<u8>,
    pub optimizer: Vec<u8>,
}

pub enum CheckpointCase {
    Model(ModelCase),
    Train(TrainCase),
}

/// A `state.json` as `train::checkpoint::save` writes it.
pub fn train_state() -> Value {
    let model_config: ModelConfig = hf_config::from_json(&llama_json()).expect("llama");
    let state = TrainState {
        step: 3,
        config_toml: MINIMAL_RUN.into(),
        model_config,
        tokenizer_sha256: Some("byte".into()),
        plugins: vec![PluginSnapshot { role: "router".into(), label: "topk-softmax".into(), digest: "ab".repeat(32), state: "00ff".into() }],
        layers: vec![LayerRouting { layer: 0, spec: RouterSpec::softmax_topk(2), selection_bias: vec![0.0; 4] }],
        domains: vec![DomainProgress { name: "math".into(), tokens_seen: 100, train_loss: Some(2.5), valid_loss: None }],
        last_stats: vec![LayerStats {
            layer: 0,
            tokens: 5,
            top_k: 2,
            expert_load: vec![1, 2, 3, 4],
            dropped: 0,
            overflow_rate: 0.0,
            gate_entropy: 1.0,
            max1_over_max2: 1.5,
            load_balance_loss: 1.0,
            z_loss: 0.5,
        }],
        shadows: vec![],
    };
    serde_json::to_value(&state).expect("state json")
}

/// Write `case` into `dir`, replacing the previous case's files.
pub fn write_checkpoint(dir: &Path, case: &CheckpointCase, configs: &[Value]) {
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).expect("write scratch file");
    match case {
        CheckpointCase::Model(m) => {
            write("config.json", configs[m.config].to_string().as_bytes());
            write("model.safetensors", &m.weights);
            match &m.index {
                Some(index) => write("model.safetensors.index.json", index.to_string().as_bytes()),
                None => {
                    let _ = std::fs::remove_file(dir.join("model.safetensors.index.json"));
                }
            }
        }
        CheckpointCase::Train(t) => {
            write("state.json", &t.state);
            write("model.safetensors", &t.model);
            write("optimizer.safetensors", &t.optimizer);
        }
    }
}

pub const ECHO_PLUGINS: [&str; 3] = ["echo-router", "echo-aux-schedule", "echo-sampler"];

/// The echo fixtures' components (name -> file), built once per test binary with
/// `recast plugin build`. The wasm build goes to the plugin workspace's own target
/// folder whatever `CARGO_TARGET_DIR` the test runs under, so checkouts that share a
/// host target folder do not rebuild each other's plugins.
pub fn echo_plugins() -> &'static BTreeMap<&'static str, PathBuf> {
    static BUILT: OnceLock<BTreeMap<&'static str, PathBuf>> = OnceLock::new();
    BUILT.get_or_init(|| {
        ECHO_PLUGINS
            .iter()
            .map(|&name| {
                let out = support::recast().args(["plugin", "build", &format!("tests/fixtures/{name}")]).env_remove("CARGO_TARGET_DIR").output().expect("run recast");
                assert!(out.status.success(), "recast plugin build tests/fixtures/{name} failed\n{}", support::text(&out));
                let path = String::from_utf8_lossy(&out.stdout).lines().last().map(PathBuf::from).expect("the built component's path");
                (name, path)
            })
            .collect()
    })
}

/// One tar entry as the fuzzer builds it: the bytes of its name field, its type flag,
/// the size its header declares (None: the true size) and its data.
#[derive(Clone)]
pub struct TarEntry {
    pub name: Vec<u8>,
    pub kind: u8,
    pub declared: Option<u64>,
    pub data: Vec<u8>,
}

impl TarEntry {
    pub fn file(name: &str, data: Vec<u8>) -> Self {
        TarEntry { name: name.as_bytes().to_vec(), kind: b'0', declared: None, data }
    }
}

/// The tar of `entries` in the layout `recast bundle pack` writes (ustar, mode 0644,
/// mtime 0, no owners), but with whatever names, types and declared sizes the entries
/// say, then the two end blocks unless `end` is false.
pub fn tar_bytes(entries: &[TarEntry], end: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut header = tar::Header::new_ustar();
        header.set_size(e.data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        if let Some(size) = e.declared {
            header.set_size(size);
        }
        let raw = header.as_mut_bytes();
        raw[..100].fill(0);
        raw[345..500].fill(0);
        match e.name.len() {
            0..=100 => raw[..e.name.len()].copy_from_slice(&e.name),
            n => {
                // The ustar split: the head into `prefix`, the last 100 bytes into `name`.
                let (prefix, name) = e.name.split_at(n - 100);
                raw[345..345 + prefix.len().min(155)].copy_from_slice(&prefix[..prefix.len().min(155)]);
                raw[..100].copy_from_slice(name);
            }
        }
        raw[156] = e.kind;
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    if end {
        out.resize(out.len() + 1024, 0);
    }
    out
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A bundle input: the bytes of the `.tar`.
pub struct TarCase {
    pub bytes: Vec<u8>,
}

/// Hand-made tars from the real bundle's files with 1 to 3 structural lies: files
/// dropped or duplicated, hostile names (`..`, absolute, empty, non-UTF-8, long),
/// non-regular types (links, devices, fifos, folders, PAX and GNU extension headers),
/// declared sizes that lie (huge, off by a few), thousands of empty entries, a mutated
/// manifest (with its checksum fixed, so the manifest parser sees it), no end blocks.
pub fn hand_made_tar(case: &mut Case, files: &[TarEntry]) -> TarCase {
    let mut entries = files.to_vec();
    let mut end = true;
    for _ in 0..case.rng.range(1, 3) {
        let i = case.rng.index(entries.len().max(1)).min(entries.len().saturating_sub(1));
        match case.rng.below(10) {
            0 if !entries.is_empty() => {
                case.note(format!("drop entry {i}"));
                entries.remove(i);
            }
            1 if !entries.is_empty() => {
                case.note(format!("duplicate entry {i}"));
                let e = entries[i].clone();
                entries.insert(case.rng.index(entries.len() + 1), e);
            }
            2 if !entries.is_empty() => {
                let hostile: [&[u8]; 10] =
                    [b"../bundle.toml", b"/etc/passwd", b"router/../../x.wasm", b"./bundle.toml", b"", b"a\0b", b"\xff\xfe.wasm", b"bundle.toml/", b"router//echo-router.wasm", b"C:\\x.wasm"];
                let name = case.rng.pick(&hostile).to_vec();
                let name = if case.rng.chance(0.2) { [b"d/".repeat(100), name].concat() } else { name };
                case.note(format!("entry {i} named {}", escaped(&name, 80)));
                entries[i].name = name;
            }
            3 if !entries.is_empty() => {
                let kind = *case.rng.pick(b"123456789xgLKSVZ\0A");
                case.note(format!("entry {i} of type {:?}", kind as char));
                entries[i].kind = kind;
            }
            4 if !entries.is_empty() => {
                let len = entries[i].data.len() as u64;
                let size = *case.rng.pick(&[u64::MAX, u64::MAX / 2, (1 << 33) - 1, 1 << 40, len + 1, len + 511, len + 513, len.saturating_sub(1), 0]);
                case.note(format!("entry {i} declares {size} bytes for {len}"));
                entries[i].declared = Some(size);
            }
            5 => {
                let n = *case.rng.pick(&[10usize, 1000, 5000, 20_000, 100_000]);
                let same = case.rng.chance(0.3);
                case.note(format!("insert {n} empty entries{}", if same { " all named `e`" } else { "" }));
                let at = case.rng.index(entries.len() + 1);
                let empties = (0..n).map(|k| TarEntry::file(&if same { "e".into() } else { format!("e{k}") }, Vec::new()));
                entries.splice(at..at, empties).for_each(drop);
            }
            6 => {
                let (kind, name, data): (u8, &str, Vec<u8>) = match case.rng.below(4) {
                    0 => (b'x', "PaxHeaders/x", b"30 path=router/../../evil.wasm\n".to_vec()),
                    1 => (b'x', "PaxHeaders/x", b"25 size=99999999999999\n".to_vec()),
                    2 => (b'L', "././@LongLink", [b"d/".repeat(200), b"x.wasm\0".to_vec()].concat()),
                    _ => (b'x', "PaxHeaders/x", (0..case.rng.range(1, 64)).map(|_| case.rng.next() as u8).collect()),
                };
                case.note(format!("extension header {:?} before entry {i}: {}", kind as char, escaped(&data, 60)));
                entries.insert(i, TarEntry { name: name.as_bytes().to_vec(), kind, declared: None, data });
            }
            7 => {
                // A mutated manifest with its checksum fixed, so the manifest parser sees it.
                if let Some(m) = entries.iter().position(|e| e.name == b"bundle.toml") {
                    let mut text = String::from_utf8_lossy(&entries[m].data).into_owned();
                    case.mutate_toml(&mut text);
                    let sum = format!("{}\n", sha256_hex(text.as_bytes()));
                    entries[m].data = text.into_bytes();
                    if let Some(s) = entries.iter().position(|e| e.name == b"bundle.toml.sha256") {
                        entries[s].data = sum.into_bytes();
                    }
                }
            }
            8 => {
                end = false;
                case.note("no end-of-archive blocks");
            }
            _ => {
                let name = *case.rng.pick(&["bundle.sig", "extra.wasm", "router/echo-router.wasm"]);
                let data: Vec<u8> = (0..case.rng.below(2000)).map(|_| case.rng.next() as u8).collect();
                case.note(format!("add {name} with {} random bytes", data.len()));
                entries.push(TarEntry::file(name, data));
            }
        }
    }
    TarCase { bytes: tar_bytes(&entries, end) }
}

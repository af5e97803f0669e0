//! Bounded fuzz and property tests of everything the host reads from outside: run
//! configs, `config.json`, safetensors files, training checkpoints, plugin bundles and
//! plugin outputs. Each target mutates valid inputs with a seeded SplitMix64 and checks
//! that the host never panics, answers every input within a bounded time, never makes a
//! single allocation over [`harness::MAX_SINGLE_ALLOCATION`], and keeps the contract of
//! what it accepts (an accepted plugin output has finite numbers, in-range indices and
//! matching lengths; an accepted run config survives the trainer's own write-back).
//!
//! Short and reproducible by default (a fixed seed, [`harness::DEFAULT_SECONDS`] for the
//! whole file, at most [`harness::DEFAULT_CASES`] cases a target):
//!
//! ```sh
//! cargo test --release --test fuzz -- --nocapture                         # short, as CI runs it
//! RECAST_FUZZ_SECONDS=600 RECAST_FUZZ_SEED=7 cargo test --release --test fuzz -- --nocapture
//! RECAST_FUZZ_SEED=7 RECAST_FUZZ_CASE=1234 cargo test --release --test fuzz hf_config -- --nocapture
//! ```
//!
//! `RECAST_FUZZ_SECONDS` is the budget of the whole file, shared evenly by the targets
//! (and lifts the case cap unless `RECAST_FUZZ_CASES` sets one); `RECAST_FUZZ_CASE`
//! replays one case and prints its input. Every finding is printed with its replay line,
//! the mutations that made it and, for a panic, the host frames of its backtrace.
//!
//! The first run of this suite found six host bugs (unbounded shapes in run configs and
//! config.json, a wrapping stage sum, quadratic dense-layer and bundle-entry checks,
//! mis-shaped AdamW moments in checkpoints); all are fixed and checked here again.
//!
//! This file holds the five targets; `tests/fuzz/` the harness (allocation accounting,
//! panic and hang capture, tallies), the shared mutator, the input generators and the
//! plugin-output cases with their contracts.

#![allow(clippy::result_large_err, clippy::type_complexity)]

#[path = "fuzz/harness.rs"]
mod harness;
#[path = "fuzz/inputs.rs"]
mod inputs;
#[path = "fuzz/mutate.rs"]
mod mutate;
#[path = "fuzz/outputs.rs"]
mod outputs;
mod support;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use candle_core::DType;
use recast::model::checkpoint::CheckpointReader;
use recast::model::hf_config;
use recast::plugins::bundle::{Bundle, SecretKey};
use recast::plugins::{PluginComponent, PluginEngine};
use recast::train::config::RunConfig;
use serde_json::{Value, json};

use harness::{Outcome, fuzz, install_hooks, serial};
use inputs::{
    CheckpointCase, ECHO_PLUGINS, FULL_RUN, MINIMAL_RUN, MODEL_TENSORS, MOMENT_TENSORS, ModelCase, TRAIN_TENSORS, TarCase, TarEntry, TrainCase, base_configs, echo_plugins, hand_made_tar,
    safetensors_file, scratch, sha256_hex, tar_bytes, train_state, write_checkpoint,
};
use mutate::{Case, escaped, shorten};
use outputs::{OutputCase, run_output_case};

// ---------------------------------------------------------------------------------
// Target 1: the run config
// ---------------------------------------------------------------------------------

/// Config files as the host is handed them: absolute, relative, bare, root.
const CONFIG_PATHS: &[&str] = &["/runs/fuzz/run.toml", "run.toml", "", "/"];

/// `RunConfig::parse` on mutated configs: never a panic, always `Ok` or a typed `Err`.
/// An accepted config must also build its model config (what `recast train` does next)
/// and survive the trainer's write-back: `toml::to_string` (the run's `config.toml`,
/// read again on resume) must give text that parses again.
#[test]
fn run_config_mutations_never_panic() {
    let _serial = serial();
    install_hooks();
    let bases = [include_str!("../examples/tiny-moe.toml"), MINIMAL_RUN, FULL_RUN];
    for (i, base) in bases.iter().enumerate() {
        RunConfig::parse(base, Path::new(CONFIG_PATHS[0])).unwrap_or_else(|e| panic!("base config {i} must parse: {e}"));
    }
    fuzz(
        "run_config",
        |case| {
            let mut text = case.rng.pick(&bases).to_string();
            case.mutate_toml(&mut text);
            (text, *case.rng.pick(CONFIG_PATHS))
        },
        |(text, path)| {
            let config = match RunConfig::parse(text, Path::new(path)) {
                Ok(config) => config,
                Err(e) => {
                    let _ = e.to_string();
                    return Outcome::Rejected;
                }
            };
            if let Some(init) = &config.model.init {
                let _ = init.model_config(256).validate();
            }
            // Stages must last `train.steps` in all, counted without wrapping.
            let stages = config.stages.iter().try_fold(0u64, |total, s| total.checked_add(s.steps));
            if !config.stages.is_empty() && stages != Some(config.train.steps) {
                return Outcome::Broken("stage-sum", format!("accepted stages that last {stages:?} steps in all for train.steps = {}", config.train.steps));
            }
            let written = match toml::to_string(&config) {
                Ok(written) => written,
                Err(e) => return Outcome::Broken("config-write-back", format!("accepted config cannot be written back as the trainer records it: {e}")),
            };
            match RunConfig::parse(&written, Path::new(path)) {
                Ok(_) => Outcome::Accepted,
                Err(e) => Outcome::Broken("config-write-back", format!("accepted config, written back, no longer parses: {e}\n  written:\n{written}")),
            }
        },
        |(text, path)| format!("path {path:?}\n{text}"),
    );
}

// ---------------------------------------------------------------------------------
// Target 2: config.json
// ---------------------------------------------------------------------------------

/// `hf_config::from_json` on mutated Llama, Mixtral, Qwen2, Qwen2-MoE and Recast-format
/// configs: never a panic; what it accepts must pass `validate` (it says it validated)
/// and write back with `to_json` (or say why not) without panicking.
#[test]
fn hf_config_mutations_never_panic() {
    let _serial = serial();
    install_hooks();
    let bases = base_configs();
    for base in &bases {
        hf_config::from_json(base).unwrap_or_else(|e| panic!("base config must parse: {e}\n{base}"));
    }
    fuzz(
        "hf_config",
        |case| {
            let mut value = case.rng.pick(&bases).clone();
            if case.rng.chance(0.5) {
                // Aim at the numbers: a count, a size or a rope parameter set to an edge.
                let key = *case.rng.pick(&[
                    "vocab_size",
                    "hidden_size",
                    "intermediate_size",
                    "num_hidden_layers",
                    "num_attention_heads",
                    "num_key_value_heads",
                    "head_dim",
                    "num_local_experts",
                    "num_experts",
                    "num_experts_per_tok",
                    "moe_intermediate_size",
                    "shared_expert_intermediate_size",
                    "decoder_sparse_step",
                    "max_window_layers",
                    "sliding_window",
                    "rope_theta",
                    "max_position_embeddings",
                ]);
                let number = case.json_number();
                case.note(format!("$.{key} = {number}"));
                value[key] = number;
            }
            case.mutate_json(&mut value);
            value
        },
        |value| match hf_config::from_json(value) {
            Ok(config) => {
                if let Err(e) = config.validate() {
                    return Outcome::Broken("validated", format!("from_json accepted a config that validate refuses: {e}"));
                }
                if let Ok(written) = hf_config::to_json(&config) {
                    let _ = hf_config::from_json(&written);
                }
                Outcome::Accepted
            }
            Err(_) => Outcome::Rejected,
        },
        |value| value.to_string(),
    );
}

// ---------------------------------------------------------------------------------
// Target 3: safetensors, through the model and training-checkpoint readers
// ---------------------------------------------------------------------------------

/// The model reader (`CheckpointReader` and `checkpoint::read`) and the training
/// checkpoint loader (`train::checkpoint::load`) on lying safetensors files, shard
/// indexes and `state.json`s: never a panic or an outsized allocation, a typed error for
/// each; and the honest files load.
#[test]
fn checkpoint_readers_refuse_malformed_safetensors() {
    let _serial = serial();
    install_hooks();
    let model_dir = scratch();
    let train_dir = scratch();
    // Llama, Mixtral (whose tensor names are mapped) and Qwen2-MoE.
    let configs: Vec<Value> = base_configs().into_iter().filter(|c| c["architectures"][0] != "Qwen2ForCausalLM" && c["model_type"] != "recast").collect();
    let state = train_state();

    // The honest files load, so every error below is the lie's doing.
    let mut honest = Case::new(0, "honest", 0);
    let model = CheckpointCase::Model(ModelCase { config: 0, weights: safetensors_file(&mut honest, MODEL_TENSORS, 1, 0.0), index: None });
    write_checkpoint(model_dir.path(), &model, &configs);
    let read = recast::model::checkpoint::read(model_dir.path(), DType::F32).expect("honest model checkpoint");
    assert_eq!(read.params.len(), MODEL_TENSORS.len() - 1, "every tensor but the rotary buffer");
    assert!(read.params.get("model.layers.0.mlp.experts.0.gate_proj.weight").is_none(), "Llama names are kept as they are");
    let train = TrainCase { state: state.to_string().into_bytes(), model: safetensors_file(&mut honest, TRAIN_TENSORS, 1, 0.0), optimizer: safetensors_file(&mut honest, MOMENT_TENSORS, 1, 0.0) };
    write_checkpoint(train_dir.path(), &CheckpointCase::Train(train), &configs);
    recast::train::checkpoint::load(train_dir.path()).unwrap_or_else(|e| panic!("honest train checkpoint: {e}"));

    fuzz(
        "checkpoint",
        |case| {
            let lie = *case.rng.pick(&[0.05, 0.2, 0.5]);
            let shapes = case.rng.next();
            if case.rng.chance(0.5) {
                let config = case.rng.index(configs.len());
                let weights = safetensors_file(case, MODEL_TENSORS, shapes, lie);
                let index = case.rng.chance(0.15).then(|| {
                    let file = case
                        .rng
                        .pick(&[
                            json!("model.safetensors"),
                            json!("../model.safetensors"),
                            json!("/etc/passwd"),
                            json!("sub/model.safetensors"),
                            json!("missing.safetensors"),
                            json!(".."),
                            json!(5),
                            Value::Null,
                        ])
                        .clone();
                    let mut index = json!({"metadata": {"total_size": 0}, "weight_map": {"model.embed_tokens.weight": "model.safetensors", "lm_head.weight": file}});
                    if case.rng.chance(0.3) {
                        case.mutate_json(&mut index);
                    }
                    case.note(format!("index {index}"));
                    index
                });
                CheckpointCase::Model(ModelCase { config, weights, index })
            } else {
                let mut state = state.clone();
                if case.rng.chance(0.4) {
                    case.mutate_json(&mut state);
                }
                let mut state = state.to_string().into_bytes();
                if case.rng.chance(0.1) {
                    case.mutate_bytes(&mut state);
                }
                let model = safetensors_file(case, TRAIN_TENSORS, shapes, lie);
                let optimizer = safetensors_file(case, MOMENT_TENSORS, shapes, lie);
                CheckpointCase::Train(TrainCase { state, model, optimizer })
            }
        },
        |input| match input {
            CheckpointCase::Model(_) => {
                write_checkpoint(model_dir.path(), input, &configs);
                let dir = model_dir.path();
                let lazily = CheckpointReader::open(dir).and_then(|reader| {
                    let names: Vec<String> = reader.tensors().keys().cloned().collect();
                    names.iter().try_for_each(|name| reader.load(name, DType::BF16).map(drop))
                });
                match (lazily, recast::model::checkpoint::read(dir, DType::F32)) {
                    (Ok(()), Ok(_)) => Outcome::Accepted,
                    (Err(e), Err(f)) => {
                        let _ = (e.to_string(), f.to_string());
                        Outcome::Rejected
                    }
                    (a, b) => Outcome::Broken("readers-agree", format!("the lazy reader and read() disagree: {:?} vs {:?}", a.err().map(|e| e.to_string()), b.err().map(|e| e.to_string()))),
                }
            }
            CheckpointCase::Train(_) => {
                write_checkpoint(train_dir.path(), input, &configs);
                match recast::train::checkpoint::load(train_dir.path()) {
                    Ok(loaded) => {
                        // "Any damage is an error naming the file": a moment that does not
                        // have its weight's shape is damage.
                        for (name, weight) in &loaded.params {
                            let (m, v) = &loaded.moments[name];
                            if m.dims() != weight.dims() || v.dims() != weight.dims() {
                                return Outcome::Broken("moment-shapes", format!("load accepted moments of shapes {:?} / {:?} for weight `{name}` of shape {:?}", m.dims(), v.dims(), weight.dims()));
                            }
                        }
                        Outcome::Accepted
                    }
                    Err(e) => {
                        let _ = e.to_string();
                        Outcome::Rejected
                    }
                }
            }
        },
        |input| match input {
            CheckpointCase::Model(m) => {
                format!("config.json: {}\nmodel.safetensors ({} bytes): {}\nindex: {:?}", configs[m.config], m.weights.len(), escaped(&m.weights, 600), m.index.as_ref().map(Value::to_string))
            }
            CheckpointCase::Train(t) => {
                format!("state.json: {}\nmodel.safetensors: {}\noptimizer.safetensors: {}", shorten(&String::from_utf8_lossy(&t.state), 600), escaped(&t.model, 400), escaped(&t.optimizer, 400))
            }
        },
    );
}

// ---------------------------------------------------------------------------------
// Target 4: bundle tars
// ---------------------------------------------------------------------------------

/// `Bundle::open` on damaged `.tar`s: the real packed bundle (unsigned and signed) with
/// bit flips, truncation and garbage, and hand-made tars (see [`hand_made_tar`]). Never a
/// panic or an outsized allocation, a typed error for each; an accepted bundle holds, for
/// every plugin its manifest lists, bytes with the manifest's sha256.
#[test]
fn bundles_refuse_malformed_tars() {
    let _serial = serial();
    install_hooks();
    let built = echo_plugins();
    let dir = scratch();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("router")).expect("src");
    let mut manifest = "name = \"fuzz-echo\"\nversion = \"0.1.0\"\ndescription = \"The echo fixtures\"\n".to_string();
    for name in ECHO_PLUGINS {
        let file = if name == "echo-router" { format!("router/{name}.wasm") } else { format!("{name}.wasm") };
        std::fs::copy(&built[name], src.join(&file)).expect("copy plugin");
        manifest.push_str(&format!("\n[[plugin]]\nfile = \"{file}\"\n"));
    }
    std::fs::write(src.join("bundle.toml"), manifest).expect("bundle.toml");
    let engine = PluginEngine::new().expect("engine");
    let unsigned = dir.path().join("unsigned.tar");
    recast::plugins::bundle::pack(&engine, &src, &unsigned).expect("pack");
    let signed = dir.path().join("signed.tar");
    std::fs::copy(&unsigned, &signed).expect("copy");
    recast::plugins::bundle::sign(&signed, &SecretKey::generate().expect("key")).expect("sign");
    let reals: Vec<Vec<u8>> = [&unsigned, &signed].iter().map(|p| std::fs::read(p).expect("read bundle")).collect();
    let mut files = Vec::new();
    for entry in tar::Archive::new(&reals[1][..]).entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = String::from_utf8(entry.path_bytes().into_owned()).expect("name");
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("data");
        files.push(TarEntry::file(&name, data));
    }
    assert_eq!(tar_bytes(&files, true), reals[1], "the hand-made tar writer must reproduce the packed layout byte for byte");
    for path in [&unsigned, &signed] {
        Bundle::open(path).unwrap_or_else(|e| panic!("the untouched bundle opens: {e}"));
    }

    let target = dir.path().join("case.tar");
    fuzz(
        "bundle",
        |case| {
            if case.rng.chance(0.4) {
                let mut bytes = case.rng.pick(&reals).clone();
                case.mutate_bytes(&mut bytes);
                TarCase { bytes }
            } else {
                let mut tar = hand_made_tar(case, &files);
                if case.rng.chance(0.2) {
                    case.mutate_bytes(&mut tar.bytes);
                }
                tar
            }
        },
        |input| {
            std::fs::write(&target, &input.bytes).expect("write case");
            match Bundle::open(&target) {
                Ok(bundle) => {
                    for p in &bundle.manifest.plugins {
                        let Some(kind) = p.kind else { return Outcome::Broken("plugin-listed", format!("accepted a bundle whose plugin {:?} has no kind", p.name)) };
                        match bundle.plugin(kind, Some(&p.name)) {
                            Ok((_, bytes)) if Some(sha256_hex(bytes)) == p.sha256.as_ref().map(|s| s.to_ascii_lowercase()) => {}
                            Ok(_) => return Outcome::Broken("plugin-listed", format!("accepted a bundle whose plugin {:?} does not have the listed sha256", p.name)),
                            Err(e) => return Outcome::Broken("plugin-listed", format!("accepted a bundle whose plugin {:?} cannot be taken out: {e}", p.name)),
                        }
                    }
                    Outcome::Accepted
                }
                Err(e) => {
                    let _ = e.to_string();
                    Outcome::Rejected
                }
            }
        },
        |input| format!("{} bytes (the mutations above rebuild it from the packed echo bundle)", input.bytes.len()),
    );
}

// ---------------------------------------------------------------------------------
// Target 5: plugin outputs through the echo fixtures
// ---------------------------------------------------------------------------------

/// Plugin outputs through the echo fixtures and the host's adapters: specs, on-step
/// updates, per-token routes, aux coefficients and mixtures set to edges (NaN, ±inf,
/// f32::MAX, negative, zero, k = 0 or huge, indices out of range, duplicates, wrong
/// lengths, empty and 100k to 1M-entry lists), plus log floods and odd metrics. The host
/// never panics; every output is accepted only if it keeps the contract, else refused as
/// `invalid-output`; log and metric buffers stay within their caps.
#[test]
fn plugin_outputs_are_validated() {
    let _serial = serial();
    install_hooks();
    let engine = PluginEngine::new().expect("engine");
    let components: BTreeMap<&str, PluginComponent> = echo_plugins().iter().map(|(&name, path)| (name, engine.load_file(path).expect("load echo"))).collect();
    let mut stricter = 0u64;
    fuzz(
        "plugin_outputs",
        OutputCase::generate,
        |input| match run_output_case(&engine, &components, input, &mut stricter) {
            Ok(true) => Outcome::Accepted,
            Ok(false) => Outcome::Rejected,
            Err((rule, why)) => Outcome::Broken(rule, why),
        },
        |input| shorten(&input.params(), 3000),
    );
    eprintln!("fuzz plugin_outputs: {stricter} output(s) refused that the WIT contract allows (stricter host checks)");
}

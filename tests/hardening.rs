//! Values a hostile or careless user can put in a plugin, a config, a checkpoint, a
//! bundle or a command line: each is refused up front or stops the run with a
//! checkpoint and a message naming the cause, never corrupting a run, hanging it or
//! exhausting memory. One test per finding of the 2026-12 attack round (issue 21).

mod support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use support::{TINY_MOE, plugin, recast, run, text};

/// A tiny MoE run config with the given router and aux-schedule tables and `[train]`.
fn config(dir: &Path, plugins: &str, train: &str) -> PathBuf {
    let path = dir.join("run.toml");
    let body = format!("seed = 5\n\n{TINY_MOE}\n[[data.domains]]\nname = \"arithmetic\"\nbuiltin = \"arithmetic\"\n\n{plugins}\n[train]\nbatch_size = 2\nseq_len = 16\neval_tokens = 256\n{train}\n");
    std::fs::write(&path, body).unwrap();
    path
}

fn train(args: &[&str]) -> std::process::Output {
    let mut all = vec!["train"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--threads", "1"]);
    run(&all)
}

/// Every checkpoint a run kept, oldest first.
fn checkpoints(run_dir: &Path) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(run_dir.join("checkpoints")).map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect()).unwrap_or_default();
    dirs.sort();
    dirs
}

#[test]
fn an_overflowing_bias_delta_stops_the_run_and_every_kept_checkpoint_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let router = format!("[plugins.router]\nfile = \"{}\"\nparams = {{ gamma = 3e38, top_k = 2 }}\n", plugin("aux-free-bias").display());
    let cfg = config(dir.path(), &router, "steps = 6\ncheckpoint_every = 1\nkeep_checkpoints = 10");
    let out = dir.path().join("run");
    let o = train(&[cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!o.status.success(), "a bias delta of 3e38 was accepted\n{}", text(&o));
    let message = text(&o);
    for needle in ["aux-free-bias", "on-step", "bias-delta", "out of range", "--resume"] {
        assert!(message.contains(needle), "no {needle:?} in\n{message}");
    }
    let kept = checkpoints(&out);
    assert!(!kept.is_empty(), "no checkpoint\n{message}");
    for ckpt in &kept {
        let state: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(ckpt.join("state.json")).unwrap()).unwrap();
        for layer in state["layers"].as_array().unwrap() {
            assert!(layer["selection_bias"].as_array().unwrap().iter().all(|b| b.as_f64().is_some_and(f64::is_finite)), "{}: {layer}", ckpt.display());
        }
    }
    let eval = run(&["eval", out.to_str().unwrap()]);
    assert!(eval.status.success(), "{}", text(&eval));
}

#[test]
fn a_huge_aux_coefficient_names_the_plugin_and_leaves_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let aux = format!("[plugins.aux_schedule]\nfile = \"{}\"\nparams = {{ load_balance = 3.4e38 }}\n", plugin("constant").display());
    let cfg = config(dir.path(), &aux, "steps = 4");
    let out = dir.path().join("run");
    let o = train(&[cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    let message = text(&o);
    for needle in ["constant", "coefficients", "load-balance", "at step 0", "holds step 0", "--resume"] {
        assert!(message.contains(needle), "no {needle:?} in\n{message}");
    }
    assert_eq!(checkpoints(&out).len(), 1, "{message}");
}

#[test]
fn a_router_scaling_that_saturates_the_softmax_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let router = format!("[plugins.router]\nfile = \"{}\"\nparams = {{ top_k = 2, scaling = 1e38 }}\n", plugin("sigmoid-topk").display());
    let cfg = config(dir.path(), &router, "steps = 4");
    let o = train(&[cfg.to_str().unwrap(), "--out", dir.path().join("run").to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("scaling") && text(&o).contains("out of range") && text(&o).contains("sigmoid-topk"), "{}", text(&o));
}

/// A small Llama checkpoint written by Recast, with `edit` applied to its config.json.
fn llama_checkpoint(dir: &Path, edit: impl Fn(&mut serde_json::Value)) -> PathBuf {
    llama_checkpoint_with(dir, edit, |_| {})
}

/// [`llama_checkpoint`], with `weights` applied to the weights before they are written.
fn llama_checkpoint_with(dir: &Path, edit: impl Fn(&mut serde_json::Value), weights: impl Fn(&mut recast::model::params::ParamStore)) -> PathBuf {
    use recast::model::checkpoint::{WriteOptions, write};
    use recast::model::init::{InitOptions, random_params};
    let init: recast::train::config::ModelInit = toml::from_str("architecture = \"llama\"\nhidden_size = 32\nnum_layers = 2\nnum_heads = 4\nintermediate_size = 48").unwrap();
    let config = init.model_config(256);
    let mut params = random_params(&config, InitOptions { std: 0.05, seed: 1, dtype: candle_core::DType::F32 }).unwrap();
    weights(&mut params);
    let out = dir.join("llama");
    write(&out, &config, &params, &WriteOptions::default()).unwrap();
    let path = out.join("config.json");
    let mut json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut json);
    std::fs::write(&path, json.to_string()).unwrap();
    out
}

#[test]
fn model_configs_that_would_compute_nan_are_refused_by_forward_and_upcycle() {
    let dir = tempfile::tempdir().unwrap();
    for (key, value, needle) in [("rms_norm_eps", serde_json::json!(-1.0), "rms_norm_eps"), ("rope_theta", serde_json::json!(0.0), "rope_theta"), ("rope_theta", serde_json::json!(-5.0), "rope_theta")]
    {
        let sub = dir.path().join(format!("{key}-{value}"));
        std::fs::create_dir_all(&sub).unwrap();
        let model = llama_checkpoint(&sub, |c| {
            c[key] = value.clone();
            // transformers 5 keeps theta in `rope_parameters` too, and that wins.
            if let Some(params) = c.get_mut("rope_parameters").and_then(|p| p.as_object_mut()).filter(|p| p.contains_key(key)) {
                params.insert(key.to_string(), value.clone());
            }
        });
        let forward = run(&["forward", "--model", model.to_str().unwrap(), "--tokens", "1,2,3", "--out", sub.join("logits.safetensors").to_str().unwrap()]);
        assert!(!forward.status.success() && text(&forward).contains(needle), "{key} = {value}: {}", text(&forward));
        assert!(!sub.join("logits.safetensors").exists());
        let up =
            run(&["upcycle", model.to_str().unwrap(), "--scheme", plugin("sparse-upcycle").to_str().unwrap(), "--params", "num_experts = 2\ntop_k = 1", "--out", sub.join("moe").to_str().unwrap()]);
        assert!(!up.status.success() && text(&up).contains(needle), "{key} = {value}: {}", text(&up));
        assert!(!sub.join("moe/config.json").exists(), "upcycle copied a NaN-making model on");
    }
}

#[test]
fn forward_refuses_more_tokens_than_the_model_has_positions() {
    let dir = tempfile::tempdir().unwrap();
    let model = llama_checkpoint(dir.path(), |_| {});
    let tokens = dir.path().join("tokens.txt");
    std::fs::write(&tokens, vec!["7"; 20_000].join(",")).unwrap();
    let o = run(&["forward", "--model", model.to_str().unwrap(), "--tokens", tokens.to_str().unwrap(), "--out", dir.path().join("l.safetensors").to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    let message = text(&o);
    assert!(message.contains("20000 tokens") && message.contains("max_position_embeddings (4096)"), "{message}");
    assert!(!message.contains("panicked") && !message.contains("memory allocation"), "{message}");
}

#[test]
fn out_of_range_config_values_are_refused_before_anything_is_built() {
    let dir = tempfile::tempdir().unwrap();
    let base = std::fs::read_to_string(config(dir.path(), "", "steps = 4")).unwrap();
    let cases: [(&str, &str, &str); 10] = [
        ("[optimizer]\nlr = 1e-3\n", "[schedule]\nmin_lr_ratio = -2\n", "schedule.min_lr_ratio"),
        ("[optimizer]\nbeta1 = 1.5\n", "", "optimizer.beta1"),
        ("[optimizer]\nclip_grad_norm = -1\n", "", "optimizer.clip_grad_norm"),
        ("std = 0.05", "std = -1", "model.init.std"),
        (
            "[[data.domains]]\nname = \"arithmetic\"\nbuiltin = \"arithmetic\"\n",
            "[[data.domains]]\nname = \"arithmetic\"\nbuiltin = \"arithmetic\"\n\n[[data.domains]]\nname = \"arithmetic\"\nbuiltin = \"prose\"\n",
            "data.domains[1].name",
        ),
        ("num_experts = 4", "num_experts = 100000000", "model.init.num_experts"),
        ("hidden_size = 32", "hidden_size = 4294967296", "model.init.hidden_size"),
        ("architecture = \"mixtral\"", "architecture = \"llama\"", "model.init.num_experts"),
        ("[optimizer]\nlr = 1e-3\n", "", "does not occur"),
        ("[optimizer]\neps = 0\n", "", "optimizer.eps"),
    ];
    for (i, (find, replace, key)) in cases.iter().enumerate() {
        // Cases whose `find` is a whole new section are appended.
        let body = if base.contains(find) { base.replacen(find, replace, 1) } else { format!("{base}\n{find}{replace}") };
        let path = dir.path().join(format!("case-{i}.toml"));
        std::fs::write(&path, &body).unwrap();
        let out = dir.path().join(format!("run-{i}"));
        let o = train(&[path.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        if *key == "does not occur" {
            assert!(o.status.success(), "a valid config was refused: {}", text(&o));
            continue;
        }
        assert!(!o.status.success(), "case {i} ({key}) was accepted:\n{body}");
        let message = String::from_utf8_lossy(&o.stderr);
        assert!(message.contains(&format!("`{key}`")) && message.contains("line "), "case {i}: {message}");
        assert!(!out.exists(), "case {i}: a refused config left {}", out.display());
    }
}

#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    let mut child = recast().args(["plugin", "inspect", plugin("topk-softmax").to_str().unwrap(), "--json"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("Broken pipe"), "{stderr}");
}

#[test]
fn a_failed_start_leaves_no_run_folder_and_the_same_out_works_next() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "", "steps = 2");
    let body = std::fs::read_to_string(&cfg).unwrap().replace("builtin = \"arithmetic\"", "shards = \"never-prepared\"");
    std::fs::write(&cfg, &body).unwrap();
    let out = dir.path().join("run");
    let o = train(&[cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(!o.status.success());
    let message = String::from_utf8_lossy(&o.stderr);
    assert!(message.contains("never-prepared") && message.contains("recast data prepare"), "{message}");
    assert_eq!(message.matches("(os error").count(), 0, "{message}");
    assert!(!out.exists(), "the failed start left {}", out.display());
    std::fs::write(&cfg, body.replace("shards = \"never-prepared\"", "builtin = \"arithmetic\"")).unwrap();
    let o = train(&[cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
}

#[test]
fn each_io_cause_is_printed_once() {
    // An error that quotes its I/O cause in its own message (`path: cause`) and carries
    // it as its source: the cause is printed once, not twice.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("shards/meta.json")).unwrap();
    let cfg = config(dir.path(), "", "steps = 2");
    let body = std::fs::read_to_string(&cfg).unwrap().replace("builtin = \"arithmetic\"", "shards = \"shards\"");
    std::fs::write(&cfg, body).unwrap();
    let o = train(&[cfg.to_str().unwrap(), "--out", dir.path().join("run").to_str().unwrap()]);
    let message = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && message.contains("meta.json"), "{message}");
    assert_eq!(message.matches("(os error 21)").count(), 1, "{message}");
}

#[test]
fn an_experiment_runs_again_when_its_shards_are_prepared_again() {
    let dir = tempfile::tempdir().unwrap();
    let (sources, shards) = (dir.path().join("src"), dir.path().join("data"));
    std::fs::create_dir_all(&sources).unwrap();
    let prepare = |body: &str| {
        std::fs::write(sources.join("a.py"), body.repeat(300)).unwrap();
        let o = run(&["data", "prepare", "--out", shards.to_str().unwrap(), "--domain", &format!("code={}", sources.display())]);
        assert!(o.status.success(), "{}", text(&o));
    };
    let file = support::repo().join("experiments").join("sparse-upcycling.toml");
    let out = dir.path().join("out");
    let data = format!("code={}", shards.join("code").display());
    let experiment = || run(&["experiment", file.to_str().unwrap(), "--out", out.to_str().unwrap(), "--smoke", "--threads", "1", "--data", &data]);
    let runs = || std::fs::read_dir(out.join("smoke-runs")).map(|d| d.count()).unwrap_or(0);

    prepare("def f(x):\n    return x + 1\n");
    let first = experiment();
    assert!(first.status.success(), "{}", text(&first));
    let after_first = runs();
    prepare("class A:\n    pass\n");
    let second = experiment();
    assert!(second.status.success(), "{}", text(&second));
    assert!(runs() > after_first, "the re-prepared data reused the old runs\n{}", text(&second));

    // A folder that was never prepared is named as such, each cause once.
    let empty = dir.path().join("empty");
    std::fs::create_dir_all(&empty).unwrap();
    let o = run(&["experiment", file.to_str().unwrap(), "--out", out.to_str().unwrap(), "--smoke", "--data", &format!("code={}", empty.display())]);
    assert!(!o.status.success());
    let message = String::from_utf8_lossy(&o.stderr);
    assert!(message.contains("recast data prepare") && message.matches("os error").count() == 0, "{message}");
}

#[test]
fn bundle_entries_are_bounded_before_they_are_read() {
    let dir = tempfile::tempdir().unwrap();
    // A 2 GiB entry of zeros, sparse on disk: the tar is refused from its size alone.
    let sparse = dir.path().join("sparse.tar");
    let mut header = tar::Header::new_ustar();
    header.set_path("bundle.toml").unwrap();
    header.set_size(2 << 30);
    header.set_mode(0o644);
    header.set_cksum();
    let mut f = std::fs::File::create(&sparse).unwrap();
    f.write_all(header.as_bytes()).unwrap();
    f.set_len(512 + (2 << 30) + 1024).unwrap();
    drop(f);
    let o = run(&["bundle", "verify", sparse.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("over the limit") && text(&o).contains("max_bundle_mib"), "{}", text(&o));
    // Within a raised bundle limit, the entry limit refuses it from its header.
    let o = run(&["bundle", "verify", sparse.to_str().unwrap(), "--max-bundle-mib", "4096"]);
    assert!(!o.status.success() && text(&o).contains("`bundle.toml` (2147483648 bytes)") && text(&o).contains("max_entry_mib"), "{}", text(&o));

    // 80,000 empty entries: refused at the entry limit.
    let many = dir.path().join("many.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&many).unwrap());
    for i in 0..80_000 {
        let mut h = tar::Header::new_ustar();
        h.set_path(format!("f{i}")).unwrap();
        h.set_size(0);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        builder.append(&h, std::io::empty()).unwrap();
    }
    builder.finish().unwrap();
    drop(builder);
    let o = run(&["bundle", "verify", many.to_str().unwrap(), "--max-bundle-mib", "4096"]);
    assert!(!o.status.success() && text(&o).contains("max_entries"), "{}", text(&o));

    // A traversal entry is refused naming it.
    let evil = dir.path().join("evil.tar");
    let mut raw = vec![0u8; 512];
    raw[..11].copy_from_slice(b"../evil.txt");
    let mut h = tar::Header::from_byte_slice(&raw).clone();
    h.set_size(0);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    h.set_cksum();
    let mut bytes = h.as_bytes().to_vec();
    bytes.extend(vec![0u8; 1024]);
    std::fs::write(&evil, bytes).unwrap();
    let o = run(&["bundle", "verify", evil.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("`../evil.txt`"), "{}", text(&o));
}

#[test]
fn a_checkpoint_with_non_finite_weights_is_refused_naming_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let name = "model.layers.1.mlp.up_proj.weight";
    let model = llama_checkpoint_with(
        dir.path(),
        |_| {},
        |params| {
            let t = params.get(name).unwrap();
            let mut values: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
            values[7] = f32::NAN;
            let bad = candle_core::Tensor::from_vec(values, t.shape(), t.device()).unwrap();
            params.insert(name, bad, None);
        },
    );
    let cfg = config(dir.path(), "", "steps = 2");
    let body = std::fs::read_to_string(&cfg).unwrap();
    let start = body.find("[model.init]").unwrap();
    let end = body.find("[[data.domains]]").unwrap();
    std::fs::write(&cfg, format!("{}[model]\npath = \"{}\"\n\n{}", &body[..start], model.display(), &body[end..])).unwrap();
    let o = train(&[cfg.to_str().unwrap(), "--out", dir.path().join("run").to_str().unwrap()]);
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains(name) && text(&o).contains("NaN or infinite"), "{}", text(&o));
}

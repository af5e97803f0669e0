//! `[compute] recompute`: recomputing the MoE MLPs or whole layers in the backward pass
//! instead of keeping their activations changes nothing a run computes. Twenty steps of
//! each mode give the same losses and the same final weights and moments, byte for byte,
//! as keeping everything: with gradient accumulation and aux losses, with a plugin that
//! routes every token (the recomputed layers replay its choices), and in bf16.

mod support;

use std::path::{Path, PathBuf};

use support::{config, plugin, text, train};

/// Every training record's step, loss, gradient norm and per-domain losses, as written.
fn loss_trace(run_dir: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| format!("{} {} {} {}", v["step"], v["loss"], v["grad_norm"], v["domain_loss"]))
        .collect()
}

/// The final checkpoint's weights and optimizer state.
fn final_state(run_dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let dir = run_dir.join("checkpoints/step-00000020");
    let read = |name: &str| std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("{}: {e}", dir.join(name).display()));
    (read("model.safetensors"), read("optimizer.safetensors"))
}

/// Train 20 steps of the test config, changed by `edit`, with `compute` as its
/// `[compute]` section; the run folder.
fn run_with(dir: &Path, name: &str, edit: &dyn Fn(String) -> String, compute: &str) -> PathBuf {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    let cfg = config(&sub, "grad_accum = 2\ncheckpoint_every = 20");
    let body = edit(std::fs::read_to_string(&cfg).unwrap()) + &format!("\n[compute]\n{compute}\n");
    std::fs::write(&cfg, body).unwrap();
    let out = sub.join("run");
    let o = train(&[cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{name}: {}", text(&o));
    out
}

/// Each recompute mode against `none` for one config.
fn modes_agree(case: &str, edit: &dyn Fn(String) -> String, precision: &str) {
    let dir = tempfile::tempdir().unwrap();
    let kept = run_with(dir.path(), "none", edit, &format!("precision = \"{precision}\"\nrecompute = \"none\""));
    let reference = loss_trace(&kept);
    assert_eq!(reference.len(), 20, "{case}");
    for mode in ["moe", "full"] {
        let run = run_with(dir.path(), mode, edit, &format!("precision = \"{precision}\"\nrecompute = \"{mode}\""));
        assert_eq!(loss_trace(&run), reference, "{case}: recompute = {mode} changed the losses");
        assert!(final_state(&run) == final_state(&kept), "{case}: recompute = {mode} changed the final weights or moments");
    }
}

#[test]
fn recomputing_with_accumulation_and_aux_losses_is_bit_exact() {
    modes_agree("top-k router, capacity 1.5, 2 micro-batches", &|body| body, "f32");
}

#[test]
fn recomputed_layers_replay_a_per_token_routers_choices() {
    let per_token = |body: String| {
        body.replace(&plugin("topk-softmax").display().to_string(), &plugin("lsh-route").display().to_string()).replace("params = { top_k = 2, capacity_factor = 1.5 }", "params = { top_k = 2 }")
    };
    modes_agree("per-token lsh-route", &per_token, "f32");
}

#[test]
fn recomputing_in_bf16_is_bit_exact() {
    modes_agree("bf16 mixed precision", &|body| body, "bf16");
}

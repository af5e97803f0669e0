//! `recast train` end to end: exact resume (20 steps straight equal 10 + resume + 10,
//! byte for byte), SIGKILL mid-run and mid-checkpoint losing nothing, a falling
//! validation loss, and readable errors for a misspelt key and a missing data folder.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::{config, plugin, recast, run, text, train};

fn final_weights(run_dir: &Path) -> Vec<u8> {
    let dir = run_dir.join("checkpoints").join("step-00000020");
    std::fs::read(dir.join("model.safetensors")).unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
}

/// (step, loss) of every training record.
fn loss_trace(run_dir: &Path) -> Vec<(u64, String)> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v.get("loss").is_some())
        .map(|v| (v["step"].as_u64().unwrap(), format!("{} {}", v["loss"], v["domain_loss"])))
        .collect()
}

fn straight_run(dir: &Path, cfg: &Path) -> PathBuf {
    let out = dir.join("straight");
    let o = train(&[cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    out
}

#[test]
fn ten_plus_resume_plus_ten_equals_twenty_straight() {
    resume_is_exact("");
}

/// Mixed precision (bf16 matmuls, f32 master weights and moments) resumes exactly too.
#[test]
fn bf16_mixed_precision_resumes_exactly() {
    resume_is_exact("\n[compute]\nprecision = \"bf16\"");
}

fn resume_is_exact(compute: &str) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &format!("checkpoint_every = 5\neval_every = 10{compute}"));
    let straight = straight_run(dir.path(), &cfg);

    let split = dir.path().join("split");
    let o = train(&[cfg.to_str().unwrap(), "--out", split.to_str().unwrap(), "--max-steps", "10"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(split.join("checkpoints/step-00000010").is_dir());
    let o = train(&["--resume", split.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));

    assert_eq!(final_weights(&straight), final_weights(&split), "weights differ after resume");
    let (a, b) = (loss_trace(&straight), loss_trace(&split));
    assert_eq!(a.len(), 20);
    assert_eq!(a, b, "loss traces differ after resume");
    let opt = |d: &Path| std::fs::read(d.join("checkpoints/step-00000020/optimizer.safetensors")).unwrap();
    assert_eq!(opt(&straight), opt(&split), "optimizer moments differ after resume");
}

/// The training loss of every step, as numbers.
fn losses(run_dir: &Path) -> Vec<f64> {
    loss_trace(run_dir).iter().map(|(_, l)| l.split(' ').next().unwrap().parse::<f64>().unwrap()).collect()
}

/// A 20-step run in mixed precision follows the f32 run: every step's loss within 1 %
/// of it (measured: at most 0.09 % on the tiny MoE), and not identical (bf16 did run).
#[test]
fn bf16_mixed_precision_loss_curve_stays_near_f32() {
    let dir = tempfile::tempdir().unwrap();
    let f32_run = straight_run(dir.path(), &config(dir.path(), ""));
    let bf16_dir = dir.path().join("bf16");
    std::fs::create_dir_all(&bf16_dir).unwrap();
    let bf16_run = straight_run(&bf16_dir, &config(&bf16_dir, "\n[compute]\nprecision = \"bf16\""));
    let (a, b) = (losses(&f32_run), losses(&bf16_run));
    assert_eq!((a.len(), b.len()), (20, 20));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs() / x).fold(0f64, f64::max);
    eprintln!("bf16 vs f32: largest relative loss gap {worst:.5}");
    assert!(worst < 0.01, "bf16 loss left the f32 curve by {worst:.4} (relative)\nf32 {a:?}\nbf16 {b:?}");
    assert!(a != b, "bf16 and f32 runs are identical: the bf16 path did not run");
}

/// Without a forced kernel, a bf16 run measures its bf16 kernel at start and records
/// the choice and every candidate's GFLOP/s in each `metrics.jsonl` record; where no
/// bf16 kernel beats the f32 GEMM it says so and runs its products in f32, exactly as
/// the f32 run does.
#[test]
fn the_measured_bf16_kernel_is_recorded_in_the_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "\n[compute]\nprecision = \"bf16\"");
    let out = dir.path().join("run");
    let o = recast()
        .args(["train", cfg.to_str().unwrap(), "--out", out.to_str().unwrap(), "--max-steps", "2", "--threads", "2"])
        .env_remove("RECAST_BF16_KERNEL")
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).filter(|v: &serde_json::Value| v.get("loss").is_some()).collect();
    assert_eq!(records.len(), 2);
    let Some(choice) = records[0].get("bf16_kernel").filter(|c| !c.is_null()) else {
        assert!(text(&o).contains("matmul: candle"), "no bf16_kernel recorded on a BLAS path: {}", records[0]);
        return;
    };
    let kernel = choice["kernel"].as_str().unwrap();
    assert!(["library", "avx512-bf16", "f32"].contains(&kernel), "{choice}");
    let measured = choice["measured"].as_array().unwrap();
    assert!(measured.iter().any(|m| m[0] == "f32") && measured.iter().all(|m| m[1].as_f64().unwrap() > 0.0), "{choice}");
    if kernel == "f32" {
        assert!(text(&o).contains("no bf16 kernel beats f32 here"), "{}", text(&o));
    } else {
        assert!(text(&o).contains(&format!("bf16 kernel {kernel}")), "{}", text(&o));
    }
}

/// `[compute]` asks for a BLAS that does not load: the error names the section and the
/// library.
#[test]
fn a_missing_blas_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "\n[compute]\nmatmul = \"blas\"");
    let out = dir.path().join("run");
    let o = recast().args(["train", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]).env("RECAST_BLAS", dir.path().join("libnope.so")).output().unwrap();
    assert!(!o.status.success());
    let err = text(&o);
    assert!(err.contains("[compute]") && err.contains("libnope.so"), "{err}");
}

/// `[compute] device`: a CPU build refuses CUDA naming the feature and the script that
/// builds it (once, without repeating the cause); an unknown device is a config error.
#[test]
fn cuda_on_a_cpu_build_and_unknown_devices_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    for (device, want) in [("cuda", "built without CUDA"), ("tpu", "unknown device \"tpu\"")] {
        let cfg = config(dir.path(), &format!("\n[compute]\ndevice = \"{device}\""));
        let out = dir.path().join(format!("run-{device}"));
        let o = recast().args(["train", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]).output().unwrap();
        assert!(!o.status.success());
        let err = text(&o);
        assert!(err.contains(want) && err.matches(want).count() == 1, "{err}");
        if device == "cuda" {
            assert!(err.contains("[compute] device") && err.contains("scripts/cuda-build.sh"), "{err}");
        }
    }
}

/// Without a BLAS (`RECAST_BLAS=none`), `matmul = "auto"` falls back to candle's matmul
/// and trains, in both precisions.
#[test]
fn without_a_blas_auto_falls_back_to_candle() {
    let dir = tempfile::tempdir().unwrap();
    for (name, compute) in [("f32", ""), ("bf16", "\n[compute]\nprecision = \"bf16\"")] {
        let sub = dir.path().join(name);
        std::fs::create_dir_all(&sub).unwrap();
        let cfg = config(&sub, compute);
        let out = sub.join("run");
        let o =
            recast().args(["train", cfg.to_str().unwrap(), "--out", out.to_str().unwrap(), "--max-steps", "3", "--threads", "2"]).env("RECAST_BLAS", "none").env("RUST_LOG", "info").output().unwrap();
        assert!(o.status.success(), "{}", text(&o));
        assert!(text(&o).contains("matmul: candle"), "{}", text(&o));
        assert_eq!(losses(&out).len(), 3);
    }
}

fn kill_when(cfg: &Path, out: &Path, env: Option<(&str, &str)>, ready: impl Fn() -> bool) {
    let mut cmd: Command = recast();
    cmd.args(["train", cfg.to_str().unwrap(), "--out", out.to_str().unwrap(), "--threads", "2"]).stdout(Stdio::null()).stderr(Stdio::null());
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let start = Instant::now();
    while !ready() {
        assert!(start.elapsed() < Duration::from_secs(120), "the run never reached the point to kill it");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

#[test]
fn sigkill_mid_run_and_mid_checkpoint_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "checkpoint_every = 4");
    let straight = straight_run(dir.path(), &cfg);

    // Mid-run: after step 9's metrics line, between checkpoints 8 and 12.
    let mid = dir.path().join("mid");
    kill_when(&cfg, &mid, None, || loss_trace_len(&mid) >= 9);
    let o = train(&["--resume", mid.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(final_weights(&straight), final_weights(&mid));
    assert_eq!(loss_trace(&straight), loss_trace(&mid));

    // Mid-checkpoint: while step 8's checkpoint is half written.
    let torn = dir.path().join("torn");
    let tmp = torn.join("checkpoints/.step-00000008.tmp");
    kill_when(&cfg, &torn, Some(("RECAST_TEST_SLOW_CHECKPOINT_MS", "400")), || tmp.join("model.safetensors").exists());
    assert!(!torn.join("checkpoints/step-00000008").exists(), "the torn checkpoint must not look complete");
    let o = train(&["--resume", torn.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("step-00000020"));
    assert_eq!(final_weights(&straight), final_weights(&torn));
    assert_eq!(loss_trace(&straight), loss_trace(&torn));
}

fn loss_trace_len(run_dir: &Path) -> usize {
    std::fs::read_to_string(run_dir.join("metrics.jsonl")).map(|t| t.lines().filter(|l| l.contains("\"loss\"")).count()).unwrap_or(0)
}

#[test]
fn validation_loss_falls_and_eval_reports_every_domain() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "eval_every = 10");
    let out = dir.path().join("run");
    let o = train(&[cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let evals: Vec<serde_json::Value> =
        std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|v| v.get("eval").is_some()).collect();
    // Each step reports the process's peak resident memory, a high-water mark.
    let peaks: Vec<f64> = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["peak_rss_mib"].as_f64()).collect();
    assert_eq!(peaks.len(), 20);
    assert!(peaks[0] > 1.0 && peaks.windows(2).all(|w| w[1] >= w[0]), "{peaks:?}");
    let first = &evals.first().expect("an evaluation at step 0")["eval"];
    let last = &evals.last().expect("a final evaluation")["eval"];
    assert_eq!(evals.first().unwrap()["step"], 0);
    for domain in ["arithmetic", "prose"] {
        let (a, b) = (first[domain].as_f64().unwrap(), last[domain].as_f64().unwrap());
        assert!(b < a - 0.5, "{domain}: validation loss {a} -> {b} did not fall");
    }
    let o = run(&["eval", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let shown = String::from_utf8_lossy(&o.stdout);
    assert!(shown.contains("arithmetic") && shown.contains("prose") && shown.contains("perplexity"), "{shown}");
    // The run's eval_tokens (512) by default: the final evaluation's numbers; --tokens
    // reads another amount of the validation split.
    let shown_loss = |shown: &str, domain: &str| -> f64 { shown.lines().find(|l| l.starts_with(domain)).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap() };
    assert!((shown_loss(&shown, "arithmetic") - last["arithmetic"].as_f64().unwrap()).abs() < 1e-3, "{shown} vs {last}");
    assert!(shown.contains("512 validation tokens"), "{shown}");
    let o = run(&["eval", out.to_str().unwrap(), "--tokens", "4096"]);
    assert!(o.status.success(), "{}", text(&o));
    let more = String::from_utf8_lossy(&o.stdout);
    assert!(more.contains("4096 validation tokens") && shown_loss(&more, "arithmetic") != shown_loss(&shown, "arithmetic"), "{more}");
    assert!(out.join("final/config.json").exists(), "the final model is exported for transformers");

    let o = run(&["report", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    for png in ["loss.png", "expert_load.png"] {
        let bytes = std::fs::read(out.join("report").join(png)).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{png} is a PNG");
    }
    // Every chart also as SVG, with labelled axes and one legend entry per domain and split.
    let svg = std::fs::read_to_string(out.join("report/loss.svg")).unwrap();
    for label in ["step", "loss (nats per token)", "arithmetic validation", "prose validation", "prose train"] {
        assert!(svg.contains(label), "{label} missing from loss.svg");
    }
    assert!(std::fs::read_to_string(out.join("report/expert_load.svg")).unwrap().contains("layer 0"));
    let summary = std::fs::read_to_string(out.join("report/summary.md")).unwrap();
    assert!(summary.contains("| arithmetic |") && summary.contains("plugin time"), "{summary}");
}

#[test]
fn misspelt_key_and_missing_data_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let text_cfg = std::fs::read_to_string(&cfg).unwrap().replace("batch_size = 4", "bacth_size = 4");
    std::fs::write(&cfg, text_cfg).unwrap();
    let o = train(&[cfg.to_str().unwrap(), "--out", dir.path().join("a").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("bacth_size") && err.contains("line 41"), "{}", text(&o));

    let cfg = config(dir.path(), "");
    let missing = dir.path().join("no-such-shards");
    let text_cfg = std::fs::read_to_string(&cfg).unwrap().replace("builtin = \"prose\"", &format!("shards = \"{}\"", missing.display()));
    std::fs::write(&cfg, text_cfg).unwrap();
    let o = train(&[cfg.to_str().unwrap(), "--out", dir.path().join("b").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr);
    // The folder is named, with the command that makes one.
    assert!(!o.status.success() && err.contains(&missing.display().to_string()) && err.contains("recast data prepare"), "{}", text(&o));
}

#[test]
fn continues_pretraining_a_hugging_face_qwen2_moe_checkpoint() {
    use candle_core::DType;
    use recast::model::checkpoint::{WriteOptions, write};
    use recast::model::init::{InitOptions, random_params};
    use recast::train::config::ModelInit;

    let dir = tempfile::tempdir().unwrap();
    let init: ModelInit = toml::from_str(
        "architecture = \"qwen2-moe\"\nhidden_size = 32\nnum_layers = 2\nnum_heads = 4\nnum_kv_heads = 2\nintermediate_size = 48\nnum_experts = 4\nexpert_intermediate_size = 16\nshared_expert_intermediate_size = 32",
    )
    .unwrap();
    let model_config = init.model_config(256);
    let params = random_params(&model_config, InitOptions { std: 0.05, seed: 1, dtype: DType::F32 }).unwrap();
    let hf = dir.path().join("hf");
    write(&hf, &model_config, &params, &WriteOptions::default()).unwrap();
    // Generation settings and a chat template travel from the checkpoint to final/.
    let companions = [("generation_config.json", "{\"do_sample\": false}"), ("chat_template.jinja", "{{ messages }}")];
    for (name, body) in companions {
        std::fs::write(hf.join(name), body).unwrap();
    }

    let cfg = config(dir.path(), "");
    let body = std::fs::read_to_string(&cfg).unwrap();
    let start = body.find("[model.init]").unwrap();
    let end = body.find("[[data.domains]]").unwrap();
    let body = format!("{}[model]\npath = \"{}\"\n\n{}", &body[..start], hf.display(), &body[end..]).replace("steps = 20", "steps = 4");
    std::fs::write(&cfg, body).unwrap();
    let out = dir.path().join("run");
    let o = train(&[cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let exported = recast::model::checkpoint::read(&out.join("final"), DType::F32).unwrap();
    assert_eq!(exported.config.architecture, recast::model::config::Architecture::Qwen2Moe);
    for (name, body) in companions {
        assert_eq!(std::fs::read_to_string(out.join("final").join(name)).unwrap(), body, "final/{name}");
    }
    let line = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().find(|l| l.contains("\"loss\"")).unwrap().to_string();
    assert!(line.contains("\"expert_load\""), "{line}");
}

/// Tensor name -> raw bytes of a checkpoint's weights.
fn checkpoint_tensors(run_dir: &Path, step: u64) -> std::collections::BTreeMap<String, Vec<u8>> {
    let bytes = std::fs::read(run_dir.join(format!("checkpoints/step-{step:08}/model.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensors().into_iter().map(|(n, v)| (n, v.data().to_vec())).collect()
}

#[test]
fn stages_freeze_groups_change_at_their_step_and_show_in_the_report() {
    let dir = tempfile::tempdir().unwrap();
    let stages = "keep_checkpoints = 10\n\n[[stages]]\nname = \"routing-warmup\"\nsteps = 6\ntrain = [\"router\"]\nlr = 0.01\nmixture = [1.0, 0.0]\n\n[[stages]]\nname = \"everything\"\nsteps = 14\n";
    let cfg = config(dir.path(), stages);
    let out = dir.path().join("run");
    for args in [vec![cfg.to_str().unwrap(), "--out", out.to_str().unwrap(), "--max-steps", "0"], vec!["--resume", out.to_str().unwrap(), "--max-steps", "6"], vec!["--resume", out.to_str().unwrap()]]
    {
        let o = train(&args);
        assert!(o.status.success(), "{}", text(&o));
    }
    let (before, after) = (checkpoint_tensors(&out, 0), checkpoint_tensors(&out, 6));
    let mut routers = 0;
    for (name, bytes) in &before {
        if name.ends_with(".mlp.gate.weight") {
            assert_ne!(bytes, &after[name], "{name} trains in the routing warm-up");
            routers += 1;
        } else {
            assert_eq!(bytes, &after[name], "{name} is frozen in the routing warm-up but changed");
        }
    }
    assert_eq!(routers, 2);
    let end = checkpoint_tensors(&out, 20);
    assert_ne!(after["model.embed_tokens.weight"], end["model.embed_tokens.weight"], "everything trains in the second stage");

    let journal: Vec<serde_json::Value> = std::fs::read_to_string(out.join("journal.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let starts: Vec<(u64, String)> = journal.iter().filter(|r| r["event"] == "stage").map(|r| (r["step"].as_u64().unwrap(), r["name"].as_str().unwrap().to_string())).collect();
    assert_eq!(starts, vec![(0, "routing-warmup".to_string()), (6, "everything".to_string())]);
    let records: Vec<serde_json::Value> =
        std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|v| v.get("loss").is_some()).collect();
    for r in &records[..6] {
        assert!(r["domain_loss"].get("prose").is_none(), "the warm-up's mixture is arithmetic only: {r}");
    }
    assert!(records[6..].iter().any(|r| r["domain_loss"].get("prose").is_some()));

    let o = run(&["report", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let summary = std::fs::read_to_string(out.join("report/summary.md")).unwrap();
    assert!(summary.contains("| routing-warmup | 0 |") && summary.contains("| everything | 6 |"), "{summary}");
}

#[test]
fn per_token_route_runs_in_training_and_its_overhead_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let body = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace(&plugin("topk-softmax").display().to_string(), &plugin("lsh-route").display().to_string())
        .replace("params = { top_k = 2, capacity_factor = 1.5 }", "params = { top_k = 2 }")
        .replace("steps = 20", "steps = 3");
    std::fs::write(&cfg, body).unwrap();
    let out = dir.path().join("run");
    let o = train(&[cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).filter(|v| v.get("loss").is_some()).collect();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert!(l["route_ms"].as_f64().unwrap() > 0.0, "the host times the route calls: {l}");
        assert!(l["route_ms"].as_f64().unwrap() <= l["plugin_ms"].as_f64().unwrap());
        assert_eq!(l["layers"][0]["expert_load"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).sum::<u64>(), 4 * 32 * 2);
    }
}

/// `--set KEY.PATH=VALUE` changes one value of the config, typed and checked like the
/// file; on resume the change is recorded in the run's config.toml.
#[test]
fn set_overrides_config_values_and_checks_them_like_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run_dir = dir.path().join("run");
    let run_arg = run_dir.display().to_string();
    let tiny = support::repo().join("examples/tiny-moe.toml").display().to_string();
    let small = ["--set", "train.steps=2", "--set", "train.batch_size=4", "--set", "train.seq_len=32", "--set", "train.eval_every=0", "--set", "optimizer.lr=1e-3", "--set", "train.eval_tokens=512"];
    let out = support::recast().args(["train", &tiny, "--out", &run_arg]).args(small).output().expect("run");
    assert!(out.status.success(), "{}", support::text(&out));
    let recorded = std::fs::read_to_string(run_dir.join("config.toml")).expect("config.toml");
    let recorded: toml::Table = recorded.parse().expect("toml");
    assert_eq!((recorded["train"]["steps"].as_integer(), recorded["optimizer"]["lr"].as_float()), (Some(2), Some(1e-3)));
    assert!(run_dir.join("final").is_dir(), "the schedule of 2 steps ended and exported");

    // Continue with a longer schedule: recorded for later resumes.
    let out = support::recast().args(["train", "--resume", &run_arg, "--set", "train.steps=3"]).output().expect("resume");
    assert!(out.status.success(), "{}", support::text(&out));
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).expect("metrics");
    assert_eq!(metrics.lines().filter(|l| l.contains("\"lr\"")).count(), 3);
    assert!(std::fs::read_to_string(run_dir.join("config.toml")).expect("config").contains("steps = 3"));

    // A misspelt key and a value of the wrong type are refused, naming them.
    for (set, expected) in [("train.stepz=3", "stepz"), ("train.steps=many", "invalid type"), ("train.steps", "KEY.PATH=VALUE")] {
        let out = support::recast().args(["train", &tiny, "--out", &dir.path().join("bad").display().to_string(), "--set", set]).output().expect("run");
        assert!(!out.status.success(), "--set {set} was accepted");
        assert!(support::text(&out).contains(expected), "--set {set}: {}", support::text(&out));
    }
}

/// `recast compare` overlays runs per domain (PNG and SVG, one panel per domain) and
/// tabulates each run's last validation loss per domain, as its metrics recorded them.
#[test]
fn compare_overlays_runs_and_tabulates_their_last_validation_losses() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "eval_every = 2");
    let mut last = Vec::new();
    for (name, lr) in [("fast", "3e-3"), ("slow", "1e-3")] {
        let out = dir.path().join(name);
        let o = train(&[cfg.to_str().unwrap(), "--out", out.to_str().unwrap(), "--set", "train.steps=4", "--set", &format!("optimizer.lr={lr}")]);
        assert!(o.status.success(), "{}", text(&o));
        let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let eval: serde_json::Value = metrics.lines().map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()).rfind(|v| v.get("eval").is_some()).unwrap();
        last.push(eval["eval"]["arithmetic"].as_f64().unwrap());
    }
    let cmp = dir.path().join("cmp");
    let o = run(&["compare", dir.path().join("fast").to_str().unwrap(), dir.path().join("slow").to_str().unwrap(), "--out", cmp.to_str().unwrap(), "--log"]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(&std::fs::read(cmp.join("loss.png")).unwrap()[..8], b"\x89PNG\r\n\x1a\n");
    let svg = std::fs::read_to_string(cmp.join("loss.svg")).unwrap();
    for label in ["arithmetic", "prose", "fast validation", "slow validation", "fast vs slow"] {
        assert!(svg.contains(label), "{label} missing from loss.svg");
    }
    let table = std::fs::read_to_string(cmp.join("compare.md")).unwrap();
    for (name, loss) in ["fast", "slow"].iter().zip(&last) {
        let row = table.lines().find(|l| l.starts_with(&format!("| {name} |"))).unwrap_or_else(|| panic!("no row for {name}: {table}"));
        assert!(row.contains(&format!("{loss:.4} (step 4)")), "{row} lacks {loss:.4}");
    }
    let missing = run(&["compare", dir.path().join("nope").to_str().unwrap(), "--out", cmp.to_str().unwrap()]);
    assert!(!missing.status.success() && text(&missing).contains("nope"), "{}", text(&missing));
}

/// `recast bench peak` measures both precisions, and `bench train-step` states its
/// achieved FLOP/s as a share of that peak, with its peak memory, before its tokens/s.
#[test]
fn bench_peak_and_train_step_report_their_share_of_the_peak() {
    let o = run(&["bench", "peak", "--size", "128", "--repeats", "1", "--threads", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for precision in ["f32", "bf16"] {
        let line = out.lines().find(|l| l.starts_with(&format!("peak {precision}: "))).unwrap_or_else(|| panic!("no {precision} peak in {out}"));
        let gflops: f64 = line.split_whitespace().nth(2).unwrap().parse().unwrap();
        assert!(gflops > 0.0, "{line}");
    }
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "");
    let o = run(&["bench", "train-step", cfg.to_str().unwrap(), "--steps", "1", "--threads", "1"]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines.last().unwrap().starts_with("tokens/s: "), "{out}");
    assert!(lines.iter().any(|l| l.starts_with("peak RSS: ")) && lines.iter().any(|l| l.contains("of this CPU's measured f32 peak")), "{out}");
}

//! Plugins written in Python (componentize-py) and JavaScript (componentize-js) from the
//! same WIT: each passes `recast plugin check`; a training run with the Python router
//! (aux-free-bias), the Python sampler (balanced) and the JavaScript aux schedule
//! (warmup-decay) makes exactly the same routing decisions, aux coefficients, batches,
//! loss trace, weights and plugin state as the same run with their Rust counterparts;
//! fuel, memory and deadline limits hold for these large components; and scaffolds of
//! every kind, init schemes included, build and pass. (Init schemes against their Rust
//! twins: `polyglot_init.rs`.)

mod support;

use std::path::{Path, PathBuf};

use serde_json::Value;
use support::{TINY_MOE, plugin, repo, run, text};

#[test]
fn each_builds_and_passes_plugin_check() {
    for (name, params) in [("py-aux-free-bias", "gamma = 0.01"), ("py-balanced", ""), ("js-warmup-decay", "warmup_steps = 10"), ("py-sparse-upcycle", "experts = 4\nevery = 2")] {
        let out = run(&["plugin", "check", plugin(name).to_str().unwrap(), "--params", params]);
        assert!(out.status.success(), "{name}\n{}", text(&out));
        assert!(text(&out).contains("all conformance calls passed"), "{name}\n{}", text(&out));
        let inspect = run(&["plugin", "inspect", plugin(name).to_str().unwrap()]);
        let imports = String::from_utf8_lossy(&inspect.stdout).split("imports:").nth(1).unwrap_or_default().to_string();
        assert!(!imports.contains("wasi:"), "{name} imports WASI: {imports}");
    }
}

fn config(dir: &Path, name: &str, router: &str, sampler: &str, aux: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    let body = format!(
        r#"seed = 5

{TINY_MOE}
[[data.domains]]
name = "arithmetic"
builtin = "arithmetic"

[[data.domains]]
name = "code"
builtin = "code"

[[data.domains]]
name = "prose"
builtin = "prose"

[plugins.router]
file = "{router}"
params = {{ gamma = 0.02, top_k = 2, score = "softmax", max_bias = 0.05 }}

[plugins.sampler]
file = "{sampler}"

[plugins.aux_schedule]
file = "{aux}"
params = {{ load_balance = 0.02, z_loss = 0.002, warmup_steps = 4, decay_start = 7, decay_steps = 3, final_ratio = 0.25 }}

[train]
steps = 10
batch_size = 5
seq_len = 32
eval_tokens = 512
"#,
        router = plugin(router).display(),
        sampler = plugin(sampler).display(),
        aux = plugin(aux).display(),
    );
    std::fs::write(&path, body).unwrap();
    path
}

fn train(dir: &Path, config: &Path, name: &str) -> PathBuf {
    let out = dir.join(name);
    let result = run(&["train", config.to_str().unwrap(), "--out", out.to_str().unwrap(), "--threads", "1"]);
    assert!(result.status.success(), "{}", text(&result));
    out
}

/// The step records of a run's metrics, without wall-clock and machine-dependent fields (page faults, timings).
fn trace(run_dir: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|r| r.get("loss").is_some())
        .map(|mut r| {
            for key in ["tokens_per_s", "step_ms", "plugin_ms", "route_ms", "reload_ms", "unix_ms", "peak_rss_mib", "minor_faults", "comm_ms"] {
                r.as_object_mut().unwrap().remove(key);
            }
            r
        })
        .collect()
}

#[test]
fn python_and_javascript_plugins_train_exactly_like_their_rust_twins() {
    let dir = tempfile::tempdir().unwrap();
    let rust = config(dir.path(), "rust", "aux-free-bias", "balanced", "warmup-decay");
    let poly = config(dir.path(), "poly", "py-aux-free-bias", "py-balanced", "js-warmup-decay");
    let (a, b) = (train(dir.path(), &rust, "rust"), train(dir.path(), &poly, "poly"));

    let (ta, tb) = (trace(&a), trace(&b));
    assert_eq!(ta.len(), 10);
    for (x, y) in ta.iter().zip(&tb) {
        assert_eq!(x, y, "step {} differs", x["step"]);
    }
    // The trace covers routing decisions and coefficients that change over the run.
    let loads: Vec<&Value> = ta.iter().map(|r| &r["layers"][0]["expert_load"]).collect();
    assert!(loads.windows(2).any(|w| w[0] != w[1]), "expert loads never changed");
    let coefs: Vec<f64> = ta.iter().map(|r| r["layers"][0]["load_balance_coef"].as_f64().unwrap()).collect();
    assert!(coefs[0] < coefs[4] && coefs[9] < coefs[4], "warm-up and decay not seen: {coefs:?}");

    let final_dir = |d: &Path| d.join("checkpoints/step-00000010");
    assert_eq!(std::fs::read(final_dir(&a).join("model.safetensors")).unwrap(), std::fs::read(final_dir(&b).join("model.safetensors")).unwrap(), "weights differ");
    let state = |d: &Path| -> Value { serde_json::from_str(&std::fs::read_to_string(final_dir(d).join("state.json")).unwrap()).unwrap() };
    let (sa, sb) = (state(&a), state(&b));
    assert_eq!(sa["plugins"][0]["state"], sb["plugins"][0]["state"], "the routers' states (bias per layer) differ");
    assert_eq!(sa["layers"], sb["layers"], "selection biases differ");
}

#[test]
fn fuel_memory_and_deadline_hold_for_a_python_component() {
    let build = run(&["plugin", "build", "tests/fixtures/py-faulty-router"]);
    assert!(build.status.success(), "{}", text(&build));
    let fixture = repo().join("tests/fixtures/py-faulty-router/target/plugins/py-faulty-router.wasm");
    let check = |args: &[&str]| {
        let mut all = vec!["plugin", "check", fixture.to_str().unwrap()];
        all.extend_from_slice(args);
        run(&all)
    };
    let ok = check(&["--params", "fault = \"none\""]);
    assert!(ok.status.success(), "{}", text(&ok));
    for (args, cause) in [
        // The deadline far away: fuel, not the machine's speed, ends the loop.
        (vec!["--params", "fault = \"loop\"", "--deadline-ms", "600000"], "out of fuel"),
        (vec!["--params", "fault = \"loop\"", "--fuel", "0", "--deadline-ms", "200"], "deadline exceeded"),
        (vec!["--params", "fault = \"alloc\""], "memory limit"),
        (vec!["--params", "fault = \"none\"", "--memory-mib", "8"], "memory limit"),
    ] {
        let out = check(&args);
        assert!(!out.status.success(), "{args:?} passed");
        assert!(text(&out).contains(cause) && text(&out).contains("py-faulty-router"), "{args:?}: {}", text(&out));
    }
}

#[test]
fn scaffolds_build_and_pass_plugin_check() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [("router", "python", "my-py-router"), ("sampler", "javascript", "my-js-sampler"), ("init-scheme", "python", "my-py-scheme"), ("init-scheme", "javascript", "my-js-scheme")];
    for (kind, lang, name) in cases {
        let new = run(&["plugin", "new", "--kind", kind, "--lang", lang, name, "--dir", dir.path().to_str().unwrap()]);
        assert!(new.status.success(), "{}", text(&new));
        let build = run(&["plugin", "build", dir.path().join(name).to_str().unwrap()]);
        assert!(build.status.success(), "{}", text(&build));
        let wasm = String::from_utf8_lossy(&build.stdout).lines().last().unwrap().to_string();
        let check = run(&["plugin", "check", &wasm]);
        assert!(check.status.success() && text(&check).contains(&format!("{name} 0.1.0 ({kind})")), "{}", text(&check));
    }
}

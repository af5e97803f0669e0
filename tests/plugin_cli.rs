//! The `recast plugin` command line, run as a user runs it.

mod support;

use std::path::Path;

use support::{run, text};

#[test]
fn build_then_inspect_json_shows_a_router() {
    let out = run(&["plugin", "build", "plugins/router/topk-softmax"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let wasm = stdout.lines().last().expect("a path on the last line");
    assert!(wasm.ends_with("topk-softmax.wasm") && Path::new(wasm).is_file(), "{wasm}");

    let out = run(&["plugin", "inspect", "--json", wasm]);
    assert!(out.status.success(), "{}", text(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("inspect --json prints one JSON object");
    assert_eq!(json["kind"], "router");
    assert_eq!(json["name"], "topk-softmax");
    assert_eq!(json["version"], "0.1.0");
    assert_eq!(json["wit_version"], "0.1.0");
    let bytes = std::fs::read(wasm).unwrap();
    assert_eq!(json["sha256"].as_str().unwrap(), recast::plugins::Digest::of(&bytes).to_hex());
    let exports = json["exports"][0]["functions"].as_array().unwrap();
    for f in ["info", "configure", "save-state", "load-state", "spec", "on-step", "route"] {
        assert!(exports.iter().any(|e| e == f), "{f} missing from {exports:?}");
    }

    let out = run(&["plugin", "inspect", wasm]);
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && shown.contains("kind:        router"), "{}", text(&out));
}

#[test]
fn check_passes_on_the_reference_plugins_and_fails_on_faults() {
    for name in ["topk-softmax", "constant"] {
        let out = run(&["plugin", "check", support::plugin(name).to_str().unwrap()]);
        assert!(out.status.success(), "{name}\n{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains("all conformance calls passed"));
    }
    let faulty = support::plugin("faulty-router").to_str().unwrap();
    // Which guard stops an endless loop must not depend on how loaded the machine is:
    // with fuel, the deadline is set far beyond what the fuel lasts; without fuel, only
    // the deadline can end it.
    let cases = [
        ("loop", "out-of-fuel", vec!["--deadline-ms", "600000"]),
        ("loop", "deadline", vec!["--fuel", "0", "--deadline-ms", "200"]),
        ("nan", "invalid-output", vec![]),
        ("reject-config", "config-rejected", vec![]),
    ];
    for (fault, code, limits) in cases {
        let params = format!("fault = \"{fault}\"");
        let mut args = vec!["plugin", "check", faulty, "--params", &params];
        args.extend(limits);
        let out = run(&args);
        assert!(!out.status.success(), "{fault} passed\n{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("[{code}]")), "{fault}\n{}", text(&out));
        assert!(String::from_utf8_lossy(&out.stderr).contains("faulty-router"), "{}", text(&out));
    }
    // --params also takes a file.
    let dir = tempfile::tempdir().unwrap();
    let params = dir.path().join("params.toml");
    std::fs::write(&params, "top_k = 3\nrenormalize = false\n").unwrap();
    let out = run(&["plugin", "check", support::plugin("topk-softmax").to_str().unwrap(), "--params", params.to_str().unwrap()]);
    assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("softmax top-3, not renormalised"), "{}", text(&out));
}

#[test]
fn scaffolded_plugins_of_every_kind_build_and_pass_check() {
    let dir = tempfile::tempdir().unwrap();
    let workspace = dir.path().join("my-plugins");
    std::fs::create_dir_all(&workspace).unwrap();
    std::fs::write(workspace.join("Cargo.toml"), "[workspace]\nresolver = \"3\"\nmembers = [\"*\"]\n").unwrap();
    let kinds = ["router", "aux-schedule", "init-scheme", "sampler"];
    for kind in kinds {
        let name = format!("my-{kind}");
        let out = run(&["plugin", "new", "--kind", kind, &name, "--dir", workspace.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out));
        let manifest = std::fs::read_to_string(workspace.join(&name).join("Cargo.toml")).unwrap();
        assert!(!manifest.contains("[workspace]"), "a listed member must not be its own workspace");
    }
    // Share compiled dependencies with the reference plugins' build.
    let target = support::repo().join("plugins/target");
    let out = support::recast().args(["plugin", "build", workspace.to_str().unwrap()]).env("CARGO_TARGET_DIR", &target).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let paths: Vec<String> = String::from_utf8_lossy(&out.stdout).lines().map(String::from).collect();
    assert_eq!(paths.len(), 4, "{}", text(&out));
    for (kind, path) in kinds.iter().flat_map(|k| paths.iter().filter(move |p| p.ends_with(&format!("my-{k}.wasm"))).map(move |p| (k, p))) {
        let out = run(&["plugin", "check", path]);
        assert!(out.status.success(), "{kind}\n{}", text(&out));
        let out = run(&["plugin", "inspect", "--json", path]);
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(json["kind"], *kind);
    }

    // Inside a workspace that does not list it, the scaffold becomes its own workspace.
    let foreign = dir.path().join("foreign");
    std::fs::create_dir_all(&foreign).unwrap();
    std::fs::write(foreign.join("Cargo.toml"), "[workspace]\nmembers = []\n").unwrap();
    let out = run(&["plugin", "new", "--kind", "router", "lone-router", "--dir", foreign.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let manifest = std::fs::read_to_string(foreign.join("lone-router/Cargo.toml")).unwrap();
    assert!(manifest.contains("[workspace]"), "{manifest}");
    let out = support::recast().args(["plugin", "build", foreign.join("lone-router").to_str().unwrap()]).env("CARGO_TARGET_DIR", &target).output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).trim().ends_with("lone-router.wasm"));
}

#[test]
fn bad_input_gets_a_readable_error() {
    let out = run(&["plugin", "inspect", "no/such/file.wasm"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read no/such/file.wasm"), "{}", text(&out));
    let out = run(&["plugin", "build", "no/such/crate"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("no plugin at no/such/crate"), "{}", text(&out));
    for help in [&["--help"][..], &["plugin", "--help"], &["plugin", "check", "--help"], &["bench", "plugins", "--help"]] {
        let out = run(help);
        assert!(out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Usage"), "{help:?}\n{}", text(&out));
    }
    let out = run(&["plugin", "new", "--kind", "router", "Bad Name"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("must start with a lowercase letter"), "{}", text(&out));
}

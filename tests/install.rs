//! An installed `recast` is a self-contained tool: `cargo install --path host --root
//! PREFIX`, then `PREFIX/bin/recast train` from an unrelated folder, with cargo and rustc
//! off `PATH`, trains tiny-moe on the reference plugins compiled into the binary, and
//! `recast plugin list` names each of them with the sha256 `recast plugin build` gives.

mod support;

use std::path::Path;
use std::process::Command;

use support::{repo, text};

/// `PATH` without any folder holding cargo or rustc.
fn path_without_cargo() -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let kept: Vec<_> = std::env::split_paths(&path).filter(|dir| !dir.join("cargo").exists() && !dir.join("rustc").exists()).collect();
    std::env::join_paths(kept).expect("PATH entries").to_string_lossy().into_owned()
}

/// The installed binary, run from `dir` with no trace of the build environment.
fn installed(bin: &Path, dir: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir(dir).env("PATH", path_without_cargo());
    for var in ["CARGO", "CARGO_HOME", "RUSTUP_HOME", "RUSTUP_TOOLCHAIN", "CARGO_MANIFEST_DIR", "RECAST_SDK"] {
        cmd.env_remove(var);
    }
    cmd.output().expect("run the installed recast")
}

#[test]
fn an_installed_binary_trains_from_an_unrelated_folder_without_cargo() {
    let prefix = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    // The same profile, features and target folder as this test's build: cargo reuses it.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut install = Command::new(cargo);
    install.current_dir(repo()).args(["install", "--locked", "--offline", "--path", "host", "--root"]).arg(prefix.path()).arg("--target-dir").arg(repo().join("target"));
    if cfg!(feature = "mpi") {
        install.args(["--features", "mpi"]);
    }
    if cfg!(debug_assertions) {
        install.arg("--debug");
    }
    let out = install.output().expect("cargo install");
    assert!(out.status.success(), "cargo install failed: {}", text(&out));
    let bin = prefix.path().join("bin/recast");
    assert!(bin.is_file(), "{} was not installed", bin.display());

    // Every reference plugin, with the sha256 the source build gives.
    let listed = installed(&bin, work.path(), &["plugin", "list", "--json"]);
    assert!(listed.status.success(), "{}", text(&listed));
    let list: Vec<serde_json::Value> = serde_json::from_slice(&listed.stdout).expect("plugin list --json");
    let names: Vec<&str> = list.iter().filter_map(|p| p["name"].as_str()).collect();
    for name in ["topk-softmax", "constant", "temperature", "sparse-upcycle", "drop-upcycle", "skywork-adaptive", "balanced"] {
        assert!(names.contains(&name), "{name} missing from {names:?}");
    }
    let topk = list.iter().find(|p| p["name"] == "topk-softmax").expect("topk-softmax");
    assert_eq!(topk["kind"], "router");
    assert_eq!(topk["version"], "0.1.0");
    let built = support::plugin("topk-softmax");
    let digest = sha2_hex(&std::fs::read(built).expect("built topk-softmax"));
    assert_eq!(topk["sha256"].as_str(), Some(digest.as_str()), "embedded and source-built topk-softmax differ");

    // tiny-moe from a folder that is not the checkout, with cargo out of reach.
    std::fs::copy(repo().join("examples/tiny-moe.toml"), work.path().join("tiny-moe.toml")).expect("copy tiny-moe.toml");
    let sets =
        ["--set", "train.steps=3", "--set", "train.batch_size=4", "--set", "train.seq_len=32", "--set", "train.eval_every=3", "--set", "train.checkpoint_every=3", "--set", "train.eval_tokens=512"];
    let mut args = vec!["train", "tiny-moe.toml", "--out", "runs/tiny", "--threads", "1"];
    args.extend(sets);
    let out = installed(&bin, work.path(), &args);
    assert!(out.status.success(), "installed recast train failed: {}", text(&out));
    let metrics = std::fs::read_to_string(work.path().join("runs/tiny/metrics.jsonl")).expect("metrics.jsonl");
    let losses: Vec<f64> = metrics.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter_map(|r| r["loss"].as_f64()).collect();
    assert_eq!(losses.len(), 3, "{metrics}");
    assert!(losses.iter().all(|l| l.is_finite() && *l > 0.0), "{losses:?}");
    assert!(work.path().join("runs/tiny/checkpoints/step-00000003").is_dir(), "no checkpoint at step 3");
    // The run records where each plugin came from: the binary, not a source folder.
    let state = std::fs::read_to_string(work.path().join("runs/tiny/checkpoints/step-00000003/state.json")).expect("state.json");
    assert!(state.contains("builtin:topk-softmax"), "{state}");
}

fn sha2_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

//! TensorBoard: every run writes event files under `RUN_DIR/tb/`, and the tensorboard
//! package's own reader finds in them every scalar of `metrics.jsonl` (loss per domain,
//! validation loss, lr, grad norm, aux and z values and coefficients, drops, tokens/s,
//! plugin ms, each expert's load share per layer) at the same steps with the same
//! values. Needs the `.venv` that scripts/python-env.sh makes.

mod support;

use std::process::Command;

use support::{recast, repo, text};

#[test]
fn tensorboard_reads_back_every_scalar_of_the_metrics() {
    let python = repo().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/python-env.sh (scripts/test.sh does it before the tests)", python.display());
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    let tiny = repo().join("examples/tiny-moe.toml").display().to_string();
    let out = recast()
        .args(["train", &tiny, "--out", &run.display().to_string(), "--threads", "1"])
        .args([
            "--set",
            "train.steps=4",
            "--set",
            "train.batch_size=4",
            "--set",
            "train.seq_len=32",
            "--set",
            "train.eval_every=2",
            "--set",
            "train.checkpoint_every=2",
            "--set",
            "train.eval_tokens=512",
        ])
        .output()
        .expect("train");
    assert!(out.status.success(), "{}", text(&out));
    // A resumed run adds a second event file; the reader merges both.
    let out = recast().args(["train", "--resume", &run.display().to_string(), "--set", "train.steps=6", "--threads", "1"]).output().expect("resume");
    assert!(out.status.success(), "{}", text(&out));
    let files = std::fs::read_dir(run.join("tb")).expect("tb/").filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().contains("tfevents")).count();
    assert_eq!(files, 2, "one event file per start");

    let out = Command::new(&python).arg("tests/parity/tensorboard_readback.py").arg(&run).current_dir(repo()).output().expect("run the read-back script");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "read-back failed\n{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("all equal to metrics.jsonl"));
}

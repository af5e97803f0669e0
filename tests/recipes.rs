//! Every recipe in `examples/` runs end to end with `recast recipe` on built-in data: its
//! training steps finish, their reports show their stages, and the final model's
//! validation loss is below where its last training step started.

mod support;

use std::path::Path;

use support::{run, text};

/// `(step, {domain: loss})` of every evaluation of a run.
fn evals(run_dir: &Path) -> Vec<(u64, serde_json::Map<String, serde_json::Value>)> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter_map(|v| Some((v["step"].as_u64()?, v.get("eval")?.as_object()?.clone())))
        .collect()
}

fn run_recipe(name: &str, last_train_step: &str, stages: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join(name);
    let o = run(&["recipe", &format!("examples/{name}.toml"), "--out", out.to_str().unwrap(), "--threads", "2"]);
    assert!(o.status.success(), "{name}\n{}", text(&o));
    let last = out.join(last_train_step);
    let summary = std::fs::read_to_string(last.join("report/summary.md")).unwrap();
    for stage in stages {
        assert!(summary.contains(&format!("| {stage} |")), "{name}: the report lists stage {stage}\n{summary}");
    }
    let e = evals(&last);
    let (first, final_) = (&e.first().unwrap().1, &e.last().unwrap().1);
    let mean = |m: &serde_json::Map<String, serde_json::Value>| m.values().map(|v| v.as_f64().unwrap()).sum::<f64>() / m.len() as f64;
    assert!(mean(final_) < mean(first), "{name}: mean validation loss {} -> {}", mean(first), mean(final_));
    eprintln!("{name}: final validation losses {final_:?}");
    // A rerun finds every step done and changes nothing.
    let o = run(&["recipe", &format!("examples/{name}.toml"), "--out", out.to_str().unwrap(), "--threads", "2"]);
    assert!(o.status.success() && String::from_utf8_lossy(&o.stdout).contains("already trained"), "{}", text(&o));
}

#[test]
fn drop_upcycling() {
    run_recipe("drop-upcycling", "moe", &[]);
}

#[test]
fn skywork() {
    run_recipe("skywork", "moe", &[]);
}

#[test]
fn aquila_scale_up_then_scale_out() {
    run_recipe("aquila", "moe", &[]);
}

#[test]
fn innovator_four_stages() {
    run_recipe("innovator", "integrated", &["routing-warmup", "integration"]);
}

#[test]
fn ultrafuser_two_stages_after_fusing_its_own_specialists() {
    run_recipe("ultrafuser", "fused-trained", &["gate", "all"]);
}

/// `--set STEP.PATH=VALUE` changes one value of a step, and a step that does not exist
/// is named; `recast experiment` takes the same overrides for every arm.
#[test]
fn set_changes_a_step_and_names_a_missing_one() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r");
    let o = run(&[
        "recipe",
        "examples/drop-upcycling.toml",
        "--out",
        out.to_str().unwrap(),
        "--threads",
        "2",
        "--set",
        "*.train.train.steps=2",
        "--set",
        "*.train.schedule.warmup_steps=1",
        "--set",
        "dense.train.optimizer.weight_decay=0.05",
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let config = std::fs::read_to_string(out.join("dense/config.toml")).unwrap();
    assert!(config.contains("weight_decay = 0.05") && config.contains("steps = 2"), "{config}");
    assert!(std::fs::read_to_string(out.join("moe/config.toml")).unwrap().contains("steps = 2"));
    for command in [["recipe", "examples/drop-upcycling.toml"], ["experiment", "experiments/sparse-upcycling.toml"]] {
        let o = run(&[command[0], command[1], "--out", dir.path().join("x").to_str().unwrap(), "--set", "nosuch.train.seed=1"]);
        assert!(!o.status.success(), "{command:?}");
        assert!(text(&o).contains("no step \"nosuch\""), "{command:?}: {}", text(&o));
    }
}

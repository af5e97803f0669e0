//! Training across processes: the collectives under `mpirun`, data parallelism against
//! one process, resuming a two-rank run on one rank, the layout checks, and the traffic
//! plan. The MPI tests need a `recast` built with the `mpi` feature (scripts/test.sh
//! installs Open MPI and enables it); a build without it must refuse a multi-rank job
//! and say how to build one.

mod support;

#[cfg(feature = "mpi")]
use std::path::Path;
#[cfg(feature = "mpi")]
use std::process::{Command, Output};

#[cfg(feature = "mpi")]
use support::repo;
use support::{recast, text};

/// `recast ARGS` under `mpirun -np N` (as root in CI containers, more ranks than cores).
#[cfg(feature = "mpi")]
fn mpirun(n: usize, args: &[&str]) -> Output {
    Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", &n.to_string(), env!("CARGO_BIN_EXE_recast")])
        .args(args)
        .current_dir(repo())
        .output()
        .expect("mpirun (Open MPI) is installed: scripts/test.sh installs it")
}

/// Every step's loss of a run, in order.
#[cfg(feature = "mpi")]
fn losses(run_dir: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|v| v.get("lr").is_some()).map(|v| v["loss"].as_f64().expect("loss")).collect()
}

#[cfg(feature = "mpi")]
fn tiny_moe() -> String {
    repo().join("examples/tiny-moe.toml").display().to_string()
}

#[cfg(feature = "mpi")]
#[test]
fn every_collective_is_right_on_two_ranks() {
    let out = mpirun(2, &["distributed", "check"]);
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for rank in 0..2 {
        assert!(stdout.contains(&format!("rank {rank}/2: all collectives correct")), "{}", text(&out));
        assert!(stdout.contains(&format!("rank {rank}/2 (mpi): all-to-all")), "{}", text(&out));
    }
}

#[cfg(feature = "mpi")]
#[test]
fn two_data_parallel_ranks_train_as_one_process_and_resume_on_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let out = recast().args(["train", &tiny_moe(), "--out", &one.display().to_string(), "--max-steps", "6", "--threads", "1"]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let out = mpirun(2, &["train", &tiny_moe(), "--out", &two.display().to_string(), "--max-steps", "6", "--threads", "1"]);
    assert!(out.status.success(), "{}", text(&out));

    // The first steps agree to rounding: each rank trains on half of every micro-batch,
    // gradients and the load-balancing loss's expert loads are summed over both.
    let (a, b) = (losses(&one), losses(&two));
    assert_eq!((a.len(), b.len()), (6, 6), "{a:?} {b:?}");
    for (step, (x, y)) in a.iter().zip(&b).enumerate().take(5) {
        assert!((x - y).abs() <= 1e-6 * x.abs(), "step {}: one process {x}, two ranks {y}", step + 1);
    }
    // Rank 0 alone wrote the run folder, with the layout and the time in collectives.
    let line = std::fs::read_to_string(two.join("metrics.jsonl")).expect("metrics").lines().rfind(|l| l.contains("\"lr\"")).map(str::to_string).expect("a step line");
    let record: serde_json::Value = serde_json::from_str(&line).expect("json");
    assert_eq!(record["layout"]["world"], 2, "{record}");
    assert_eq!(record["layout"]["data_parallel"], 2, "{record}");
    assert!(record["comm_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{record}");
    assert_eq!(std::fs::read_dir(two.join("checkpoints")).expect("checkpoints").count(), 1);

    // Replicas hold the same weights, so rank 0's checkpoint resumes on one process.
    let out = recast().args(["train", "--resume", &two.display().to_string(), "--max-steps", "8", "--threads", "1"]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(losses(&two).len(), 8);
}

#[cfg(feature = "mpi")]
#[test]
fn a_layout_that_does_not_fit_the_job_is_named_and_ends_every_rank() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("dp3.toml");
    let text_cfg = std::fs::read_to_string(repo().join("examples/tiny-moe.toml")).expect("tiny-moe").replace("[train]", "[distributed]\ndata_parallel = 3\n\n[train]");
    std::fs::write(&cfg, text_cfg).expect("write");
    let started = std::time::Instant::now();
    let out = mpirun(2, &["train", &cfg.display().to_string(), "--out", &dir.path().join("run").display().to_string(), "--max-steps", "2"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("data_parallel (3) × expert_parallel (1) = 3 but the launcher started 2 process(es)"), "{}", text(&out));
    assert!(started.elapsed() < std::time::Duration::from_secs(120), "a refused job must not hang");
}

#[cfg(not(feature = "mpi"))]
#[test]
fn a_build_without_mpi_refuses_a_multi_rank_job_and_says_how_to_build_one() {
    let out = recast().args(["distributed", "check"]).env("OMPI_COMM_WORLD_SIZE", "2").env("OMPI_COMM_WORLD_RANK", "0").output().expect("run");
    assert!(!out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("started 2 processes") && all.contains("--features mpi"), "{all}");
}

#[test]
fn one_process_needs_no_launcher() {
    let out = recast().args(["distributed", "check"]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("rank 0/1: all collectives correct"), "{}", text(&out));
}

#[test]
fn the_comm_plan_counts_mixtral_traffic() {
    let out = recast().args(["bench", "comm-plan", "--data-parallel", "2", "--expert-parallel", "8", "--tokens-per-rank", "4096"]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    // 4 passes × 4096 tokens × 2 experts × 7/8 of rows leaving × 4096 × 2 bytes = 0.219 GiB.
    assert!(stdout.contains("all-to-all per MoE layer: 0.219 GiB"), "{stdout}");
    assert!(stdout.contains("all-to-all over 32 MoE layers: 7.000 GiB"), "{stdout}");
}

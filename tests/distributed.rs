//! Training across processes: the collectives under `mpirun`, data and expert
//! parallelism against one process accumulating the same micro-batches, resharding
//! (2 → 1, 1 → 2), the layout checks, and the traffic plan. The MPI tests need a `recast` built with the `mpi` feature (scripts/test.sh
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

/// Every step's metrics line of a run, in order.
#[cfg(feature = "mpi")]
fn steps(run_dir: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(run_dir.join("metrics.jsonl")).expect("metrics.jsonl");
    text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).filter(|v| v.get("lr").is_some()).collect()
}

/// `examples/tiny-moe.toml` with `replace` applied, written into `dir` as `name`.
#[cfg(feature = "mpi")]
fn tiny_moe_with(dir: &Path, name: &str, replace: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(repo().join("examples/tiny-moe.toml")).expect("tiny-moe");
    for (from, to) in replace {
        assert!(text.contains(from), "{from}");
        text = text.replace(from, to);
    }
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path.display().to_string()
}

/// Every weight of the checkpoint of `step` in `run_dir`, from every shard its
/// manifest names.
#[cfg(feature = "mpi")]
fn weights(run_dir: &Path, step: u64) -> std::collections::BTreeMap<String, Vec<f64>> {
    let dir = run_dir.join(format!("checkpoints/step-{step:08}"));
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).expect("manifest")).expect("json");
    let mut all = std::collections::BTreeMap::new();
    for file in manifest["files"].as_array().expect("files").iter().filter(|f| f["kind"] == "model") {
        let bytes = std::fs::read(dir.join(file["name"].as_str().expect("name"))).expect("shard");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        for (name, view) in st.tensors() {
            let values = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64).collect();
            assert!(all.insert(name, values).is_none(), "a tensor in two shards");
        }
    }
    all
}

/// Every step's loss within `tolerance` (relative) of the reference's, and every weight
/// of the two checkpoints at `step` within `tolerance` of each other; returns the
/// largest relative difference of the weights.
#[cfg(feature = "mpi")]
fn assert_same_training(reference: &Path, run: &Path, step: u64, tolerance: f64) -> f64 {
    let (a, b) = (losses(reference), losses(run));
    assert_eq!(a.len(), b.len(), "{a:?} {b:?}");
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!((x - y).abs() <= tolerance * x.abs(), "step {}: one process {x}, the job {y}", i + 1);
    }
    let (wa, wb) = (weights(reference, step), weights(run, step));
    assert_eq!(wa.len(), wb.len(), "the same tensors");
    let mut worst = 0f64;
    for (name, x) in &wa {
        let y = wb.get(name).expect("the same tensors");
        let scale = x.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-12);
        let diff = x.iter().zip(y.iter()).fold(0f64, |m, (p, q)| m.max((p - q).abs())) / scale;
        assert!(diff <= tolerance, "{name}: weights differ by {diff:e} (relative to its largest)");
        worst = worst.max(diff);
    }
    worst
}

#[cfg(feature = "mpi")]
#[test]
fn two_data_parallel_or_expert_parallel_ranks_train_as_one_process_and_reshard() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The reference: one process accumulating the two halves of every batch, the
    // micro-batches the two ranks compute.
    let accumulating = tiny_moe_with(dir.path(), "ga2.toml", &[("batch_size = 16", "batch_size = 8\ngrad_accum = 2")]);
    let expert_parallel = tiny_moe_with(dir.path(), "ep2.toml", &[("[train]", "[distributed]\nexpert_parallel = 2\n\n[train]")]);
    let (one, dp, ep) = (dir.path().join("one"), dir.path().join("dp"), dir.path().join("ep"));
    let out = recast().args(["train", &accumulating, "--out", &one.display().to_string(), "--max-steps", "20", "--threads", "1"]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let out = mpirun(2, &["train", &tiny_moe(), "--out", &dp.display().to_string(), "--max-steps", "20", "--threads", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    let out = mpirun(2, &["train", &expert_parallel, "--out", &ep.display().to_string(), "--max-steps", "20", "--threads", "1"]);
    assert!(out.status.success(), "{}", text(&out));

    // 20 steps: every loss and every weight within 1e-5 (on one machine they are the
    // same bits: the ranks add in the order the process accumulates).
    let worst_dp = assert_same_training(&one, &dp, 20, 1e-5);
    let worst_ep = assert_same_training(&one, &ep, 20, 1e-5);
    eprintln!("largest relative weight difference after 20 steps: data parallel {worst_dp:e}, expert parallel {worst_ep:e}");
    // The routing statistics the plugins saw are the whole batch's, step by step.
    let (a, b) = (steps(&one), steps(&ep));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x["layers"], y["layers"], "step {}", x["step"]);
    }
    // Rank 0 alone wrote the run folder, with the layout and the time in collectives;
    // under expert parallelism it keeps the moments of half the experts.
    let last = b.last().expect("a step");
    assert_eq!((last["layout"]["world"].as_u64(), last["layout"]["expert_parallel"].as_u64(), last["layout"]["data_parallel"].as_u64()), (Some(2), Some(2), Some(1)), "{last}");
    assert!(last["comm_ms"].as_f64().is_some_and(|ms| ms > 0.0), "{last}");
    let (all, mine) = (a.last().expect("a step")["optimizer_state_elements"].as_u64().expect("elements"), last["optimizer_state_elements"].as_u64().expect("elements"));
    assert!(mine < all, "rank 0 holds {mine} of {all} moment values");
    // Each rank wrote its experts and their moments; rank 0 the rest, the state and the
    // manifest, last.
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(ep.join("checkpoints/step-00000020/manifest.json")).expect("manifest")).expect("json");
    let files: Vec<(&str, u64)> = manifest["files"].as_array().expect("files").iter().map(|f| (f["name"].as_str().unwrap_or(""), f["rank"].as_u64().unwrap_or(9))).collect();
    assert_eq!(files, [("model.safetensors", 0), ("optimizer.safetensors", 0), ("model.rank-00001.safetensors", 1), ("optimizer.rank-00001.safetensors", 1)], "{manifest}");
    assert_eq!(std::fs::read_dir(ep.join("checkpoints")).expect("checkpoints").count(), 1);

    // Resharding: the expert-parallel checkpoint resumes on one process (2 → 1) and
    // continues as the reference does; the one-process run resumes on two data-parallel
    // ranks (1 → 2).
    let out = recast().args(["train", "--resume", &ep.display().to_string(), "--expert-parallel", "1", "--max-steps", "22", "--threads", "1"]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let out = recast().args(["train", "--resume", &one.display().to_string(), "--max-steps", "22", "--threads", "1"]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let (a, b) = (losses(&one), losses(&ep));
    assert_eq!((a.len(), b.len()), (22, 22));
    assert!((a[21] - b[21]).abs() <= 1e-5 * a[21].abs(), "after resuming: {} vs {}", a[21], b[21]);
    let out = mpirun(2, &["train", "--resume", &one.display().to_string(), "--max-steps", "24", "--threads", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(losses(&one).len(), 24);
}

#[cfg(feature = "mpi")]
#[test]
fn an_expert_parallel_run_holds_its_experts_only_and_exports_one_whole_checkpoint() {
    let dir = tempfile::tempdir().expect("tempdir");
    let short = [("steps = 300", "steps = 3"), ("eval_every = 100", "eval_every = 0")];
    let accumulating = tiny_moe_with(dir.path(), "ga2.toml", &[short[0], short[1], ("batch_size = 16", "batch_size = 8\ngrad_accum = 2")]);
    let split = tiny_moe_with(dir.path(), "ep2.toml", &[short[0], short[1], ("[train]", "[distributed]\nexpert_parallel = 2\n\n[train]")]);
    let (one, ep) = (dir.path().join("one"), dir.path().join("ep"));
    let out = recast().args(["train", &accumulating, "--out", &one.display().to_string(), "--threads", "1"]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let out = mpirun(2, &["train", &split, "--out", &ep.display().to_string(), "--threads", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    // Rank 0 holds the weights of half the experts (and their moments) only.
    let (a, b) = (steps(&one).pop().expect("a step"), steps(&ep).pop().expect("a step"));
    let (all, held) = (a["parameter_elements"].as_u64().expect("count"), b["parameter_elements"].as_u64().expect("count"));
    assert!(held < all, "rank 0 holds {held} of {all} weights");
    // final/ is one Hugging Face checkpoint with every expert, the weights one process trained.
    let tensors = |run: &Path| {
        let bytes = std::fs::read(run.join("final/model.safetensors")).expect("final/model.safetensors");
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
        st.tensors().into_iter().map(|(n, v)| (n, (v.shape().to_vec(), v.data().to_vec()))).collect::<std::collections::BTreeMap<_, _>>()
    };
    let (x, y) = (tensors(&one), tensors(&ep));
    assert!(x.keys().any(|n| n.contains("experts.3.")), "{:?}", x.keys().collect::<Vec<_>>());
    assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
    for (name, t) in &x {
        assert!(y[name] == *t, "{name} differs in final/");
    }
    eprintln!("expert parallel 2: rank 0 holds {held} of {all} weights");
}

#[cfg(feature = "mpi")]
#[test]
fn two_replicas_of_two_expert_parallel_ranks_train_as_one_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let accumulating = tiny_moe_with(dir.path(), "ga4.toml", &[("batch_size = 16", "batch_size = 4\ngrad_accum = 4")]);
    let layout = tiny_moe_with(dir.path(), "dp2ep2.toml", &[("[train]", "[distributed]\ndata_parallel = 2\nexpert_parallel = 2\n\n[train]")]);
    let (one, four) = (dir.path().join("one"), dir.path().join("four"));
    let out = recast().args(["train", &accumulating, "--out", &one.display().to_string(), "--max-steps", "10", "--threads", "1"]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    let out = mpirun(4, &["train", &layout, "--out", &four.display().to_string(), "--max-steps", "10", "--threads", "1"]);
    assert!(out.status.success(), "{}", text(&out));
    // Each expert's gradient is summed over its two replicas, each holding the sum over
    // its two ranks' tokens: ((g0 + g1) + (g2 + g3)), where one process adds
    // (((g0 + g1) + g2) + g3). The last bits differ; the training does not.
    let worst = assert_same_training(&one, &four, 10, 1e-5);
    eprintln!("data parallel 2 × expert parallel 2: largest relative weight difference after 10 steps {worst:e}");
    let last = steps(&four).pop().expect("a step");
    assert_eq!((last["layout"]["data_parallel"].as_u64(), last["layout"]["expert_parallel"].as_u64()), (Some(2), Some(2)), "{last}");
}

#[cfg(feature = "mpi")]
#[test]
fn a_layout_that_does_not_fit_the_job_is_named_and_ends_every_rank() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("dp3.toml");
    let text_cfg = std::fs::read_to_string(repo().join("examples/tiny-moe.toml")).expect("tiny-moe").replace("[train]", "[distributed]\ndata_parallel = 3\n\n[train]");
    std::fs::write(&cfg, text_cfg).expect("write");
    // Both ranks refuse: the job ends (a hang would stop this test) with the reason.
    let out = mpirun(2, &["train", &cfg.display().to_string(), "--out", &dir.path().join("run").display().to_string(), "--max-steps", "2"]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("data_parallel (3) × expert_parallel (1) = 3 but the launcher started 2 process(es)"), "{}", text(&out));
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

/// The process of `rank` in the job whose command line names `run_dir`.
#[cfg(feature = "mpi")]
fn rank_pid(run_dir: &Path, rank: usize) -> Option<u32> {
    let wanted = format!("OMPI_COMM_WORLD_RANK={rank}");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let names_run = String::from_utf8_lossy(&cmdline).contains(&*run_dir.to_string_lossy());
        if names_run && environ.split(|&b| b == 0).any(|v| v == wanted.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// A 2-rank `recast train CFG --out RUN` started in the background, once its checkpoint
/// of step `step` exists.
#[cfg(feature = "mpi")]
fn two_ranks_until_checkpoint(cfg: &str, run: &Path, step: u64) -> std::process::Child {
    let job = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2", env!("CARGO_BIN_EXE_recast"), "train", cfg, "--out", &run.display().to_string(), "--threads", "1"])
        .current_dir(repo())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mpirun");
    let checkpoint = run.join(format!("checkpoints/step-{step:08}"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(240);
    while !checkpoint.exists() {
        assert!(std::time::Instant::now() < deadline, "no checkpoint at step {step}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    job
}

#[cfg(feature = "mpi")]
#[test]
fn a_killed_rank_ends_the_job_naming_it_and_the_run_resumes_on_two_ranks_or_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (cfg, run) = (dir.path().join("often.toml"), dir.path().join("run"));
    let text_cfg = std::fs::read_to_string(repo().join("examples/tiny-moe.toml")).expect("tiny-moe").replace("checkpoint_every = 100", "checkpoint_every = 3");
    std::fs::write(&cfg, text_cfg).expect("write");
    let job = two_ranks_until_checkpoint(&cfg.display().to_string(), &run, 3);
    let pid = rank_pid(&run, 1).expect("rank 1 is running");
    let killed = std::time::Instant::now();
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().expect("kill").success());
    // The outcome is asserted, not the time (machines are loaded); the time is reported.
    let out = job.wait_with_output().expect("mpirun ends");
    eprintln!("the job ended {:?} after rank 1 was killed", killed.elapsed());
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("rank 1"), "the launcher names the dead rank\n{}", text(&out));

    // The last complete checkpoint resumes on two ranks, then on one.
    let done = losses(&run).len();
    assert!(done >= 3, "{done} steps logged");
    let last =
        std::fs::read_dir(run.join("checkpoints")).expect("checkpoints").flatten().filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse::<u64>().ok()).max().expect("a checkpoint");
    let two = mpirun(2, &["train", "--resume", &run.display().to_string(), "--max-steps", &(last + 2).to_string(), "--threads", "1"]);
    assert!(two.status.success(), "{}", text(&two));
    assert_eq!(losses(&run).len() as u64, last + 2);
    let one = recast().args(["train", "--resume", &run.display().to_string(), "--max-steps", &(last + 4).to_string(), "--threads", "1"]).output().expect("run");
    assert!(one.status.success(), "{}", text(&one));
    assert_eq!(losses(&run).len() as u64, last + 4);
}

#[cfg(feature = "mpi")]
#[test]
fn a_rank_that_stops_answering_ends_the_job_after_the_collective_timeout() {
    let dir = tempfile::tempdir().expect("tempdir");
    let run = dir.path().join("run");
    let cfg = tiny_moe_with(dir.path(), "timeout.toml", &[("checkpoint_every = 100", "checkpoint_every = 2"), ("[train]", "[distributed]\ncollective_timeout_s = 20\n\n[train]")]);
    let job = two_ranks_until_checkpoint(&cfg, &run, 2);
    // Rank 1 stops (SIGSTOP): alive, connected, silent. Rank 0 must not wait forever.
    let pid = rank_pid(&run, 1).expect("rank 1 is running");
    assert!(Command::new("kill").args(["-STOP", &pid.to_string()]).status().expect("kill").success());
    let out = job.wait_with_output().expect("mpirun ends");
    let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
    assert!(!out.status.success(), "{}", text(&out));
    let all = text(&out);
    assert!(all.contains("rank 0: ") && all.contains("has waited") && all.contains("collective_timeout_s = 20"), "{all}");
    // The last complete checkpoint resumes.
    let out = recast().args(["train", "--resume", &run.display().to_string(), "--max-steps", "6", "--threads", "1"]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
}

#[cfg(feature = "mpi")]
#[test]
fn a_new_router_swaps_in_on_both_ranks_at_the_same_step() {
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().expect("tempdir");
    let v1 = std::fs::read(support::plugin("aux-free-bias")).expect("router");
    // The same code with a custom section appended: other bytes, another sha256.
    let mut v2 = v1.clone();
    v2.extend([0u8, 12, 11]);
    v2.extend(b"recast-test");
    std::fs::write(dir.path().join("router.wasm"), &v1).expect("write");
    let cfg = dir.path().join("run.toml");
    let body = format!(
        "seed = 3\n\n{}\n[[data.domains]]\nname = \"arithmetic\"\nbuiltin = \"arithmetic\"\n\n[plugins.router]\nfile = \"router.wasm\"\nparams = {{ gamma = 0.01, top_k = 2 }}\n\n[train]\nsteps = 1000000\nbatch_size = 4\nseq_len = 32\ncheckpoint_every = 1000\n",
        support::TINY_MOE
    );
    std::fs::write(&cfg, body).expect("write");
    let run = dir.path().join("run");
    let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log");
    let mut job = Command::new("mpirun")
        .args(["--allow-run-as-root", "--oversubscribe", "-np", "2", env!("CARGO_BIN_EXE_recast"), "train", &cfg.display().to_string(), "--out", &run.display().to_string(), "--threads", "1"])
        .current_dir(repo())
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .spawn()
        .expect("mpirun");
    let steps = |run: &Path| std::fs::read_to_string(run.join("metrics.jsonl")).map(|t| t.lines().filter(|l| l.contains("\"lr\"")).count()).unwrap_or(0);
    let wait = |what: &str, ready: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(240);
        while !ready() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait("3 steps", &|| steps(&run) >= 3);
    let tmp = dir.path().join("router.tmp");
    std::fs::write(&tmp, &v2).expect("write");
    std::fs::rename(&tmp, dir.path().join("router.wasm")).expect("rename");
    let journal = run.join("journal.jsonl");
    wait("the swap", &|| std::fs::read_to_string(&journal).is_ok_and(|t| t.contains("plugin-swap")));
    let swapped_at = steps(&run);
    wait("steps after the swap", &|| steps(&run) >= swapped_at + 3);
    let _ = job.kill();
    let _ = job.wait();

    let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).expect("stderr");
    let swaps: Vec<&str> = stderr.lines().filter(|l| l.contains("swapped in the new router plugin")).collect();
    assert_eq!(swaps.len(), 2, "one swap on each rank\n{stderr}");
    let step_of = |line: &str| line.split("step ").nth(1).and_then(|s| s.split(':').next()).map(str::to_string);
    assert_eq!(step_of(swaps[0]), step_of(swaps[1]), "both ranks swap at the same step\n{stderr}");
    let journaled = std::fs::read_to_string(&journal).expect("journal").lines().filter(|l| l.contains("plugin-swap")).count();
    assert_eq!(journaled, 1, "the swap is journaled once");
}

#[cfg(feature = "mpi")]
#[test]
fn zero_1_keeps_half_the_moments_on_each_rank_and_computes_the_same_numbers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("zero.toml");
    let text_cfg = std::fs::read_to_string(repo().join("examples/tiny-moe.toml")).expect("tiny-moe").replace("[train]", "[distributed]\nzero = 1\n\n[train]");
    std::fs::write(&cfg, text_cfg).expect("write");
    let (plain, zero) = (dir.path().join("plain"), dir.path().join("zero"));
    for (config, out) in [(tiny_moe(), &plain), (cfg.display().to_string(), &zero)] {
        let run = mpirun(2, &["train", &config, "--out", &out.display().to_string(), "--max-steps", "4", "--threads", "1"]);
        assert!(run.status.success(), "{}", text(&run));
    }
    assert_eq!(losses(&plain), losses(&zero), "sharding the moments changes no number");
    let last = |run: &Path| -> serde_json::Value {
        let text = std::fs::read_to_string(run.join("metrics.jsonl")).expect("metrics");
        serde_json::from_str(text.lines().rfind(|l| l.contains("\"lr\"")).expect("a step")).expect("json")
    };
    let (all, half) = (last(&plain)["optimizer_state_elements"].as_u64().expect("count"), last(&zero)["optimizer_state_elements"].as_u64().expect("count"));
    assert!(2 * half >= all && 2 * half <= all + all / 20, "rank 0 holds {half} of {all} moment elements");
    assert_eq!(last(&zero)["layout"]["zero"], 1);
    // Each replica wrote the moments it owns into the checkpoint; the manifest names both
    // shards and the run resumes on one process.
    let manifest = std::fs::read_to_string(zero.join("checkpoints/step-00000004/manifest.json")).expect("manifest");
    assert!(manifest.contains("\"optimizer.rank-00001.safetensors\"") && !manifest.contains("model.rank-00001"), "{manifest}");
    let out = recast().args(["train", "--resume", &zero.display().to_string(), "--max-steps", "5", "--threads", "1"]).output().expect("run");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(losses(&zero).len(), 5);
}

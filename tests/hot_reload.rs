//! Hot reload during a real `recast train`: a new router file is swapped in at a step
//! boundary with its state (the aux-free bias) carried over; broken replacements (a
//! trap in `configure`, the wrong world, the wrong major version, not a component, an
//! unpinned digest) are rejected while training goes on; the fault policies
//! `keep-last-good` and `stop`; resuming with changed plugin code needs
//! `--allow-plugin-change`; and a shadow router is swapped in, rejected and checkpointed
//! the same way without the live router changing.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{TINY_MOE, plugin, recast, run, text};

const TIMEOUT: Duration = Duration::from_secs(120);

fn config(dir: &Path, extra: &str) -> PathBuf {
    let path = dir.join("run.toml");
    let body = format!(
        r#"seed = 3
{extra}

{TINY_MOE}
[[data.domains]]
name = "arithmetic"
builtin = "arithmetic"

[plugins.router]
file = "router.wasm"
params = {{ gamma = 0.01, top_k = 2 }}

[train]
steps = 1000000
batch_size = 4
seq_len = 32
checkpoint_every = 10
keep_checkpoints = 2
"#
    );
    std::fs::write(&path, body).unwrap();
    path
}

/// The reference aux-free-bias router, and a second build of it: the same code with a
/// custom section appended, so different bytes and a different sha256.
fn versions() -> (Vec<u8>, Vec<u8>) {
    let v1 = std::fs::read(plugin("aux-free-bias")).unwrap();
    let (name, payload) = (b"recast-test-build", b"second build");
    let mut body = vec![name.len() as u8];
    body.extend_from_slice(name);
    body.extend_from_slice(payload);
    let mut v2 = v1.clone();
    v2.push(0);
    v2.push(body.len() as u8);
    v2.extend(body);
    (v1, v2)
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Replace `path` the way editors and build tools do: a temporary file renamed over it.
fn replace(path: &Path, bytes: &[u8]) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A `recast train` in the background, killed when dropped.
struct Training {
    child: Child,
    dir: PathBuf,
}

impl Training {
    fn start(dir: &Path, args: &[&str]) -> Self {
        let stderr = std::fs::File::create(dir.join("stderr.txt")).unwrap();
        let child = recast().args(["train"]).args(args).args(["--threads", "1"]).stdout(Stdio::null()).stderr(stderr).spawn().unwrap();
        Training { child, dir: dir.to_path_buf() }
    }

    fn run_dir(&self) -> PathBuf {
        self.dir.join("run")
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.txt")).unwrap_or_default()
    }

    fn steps(&self) -> u64 {
        lines(&self.run_dir().join("metrics.jsonl")).iter().filter(|r| r.get("loss").is_some()).filter_map(|r| r["step"].as_u64()).max().unwrap_or(0)
    }

    fn journal(&self, event: &str) -> Vec<Value> {
        lines(&self.run_dir().join("journal.jsonl")).into_iter().filter(|r| r["event"] == event).collect()
    }

    /// Wait until `ready` holds, failing with the run's stderr after [`TIMEOUT`] or if
    /// the run exits.
    fn wait(&mut self, what: &str, ready: impl Fn(&Self) -> bool) {
        let start = Instant::now();
        while !ready(self) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the run exited ({status}) while waiting for {what}\n{}", self.stderr());
            }
            assert!(start.elapsed() < TIMEOUT, "timed out waiting for {what}\n{}", self.stderr());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_for_steps(&mut self, more: u64) {
        let target = self.steps() + more;
        self.wait(&format!("step {target}"), |t| t.steps() >= target);
    }
}

impl Drop for Training {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// The newest checkpoint's state.json.
fn newest_state(run_dir: &Path) -> Value {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(run_dir.join("checkpoints")).unwrap().map(|e| e.unwrap().path()).filter(|p| p.join("state.json").exists()).collect();
    dirs.sort();
    serde_json::from_str(&std::fs::read_to_string(dirs.last().unwrap().join("state.json")).unwrap()).unwrap()
}

/// The aux-free-bias plugin's state: per layer, the index, the count and the biases.
fn decode_bias_state(state: &[u8]) -> Vec<(u32, Vec<f32>)> {
    let words: Vec<[u8; 4]> = state.chunks_exact(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
    let (mut out, mut i) = (Vec::new(), 0);
    while i < words.len() {
        let layer = u32::from_le_bytes(words[i]);
        let n = u32::from_le_bytes(words[i + 1]) as usize;
        out.push((layer, words[i + 2..i + 2 + n].iter().map(|w| f32::from_le_bytes(*w)).collect()));
        i += 2 + n;
    }
    out
}

#[test]
fn a_new_router_is_swapped_in_with_its_state_and_broken_ones_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = versions();
    let router = dir.path().join("router.wasm");
    std::fs::write(&router, &v1).unwrap();
    let cfg = config(dir.path(), "");
    let mut t = Training::start(dir.path(), &[cfg.to_str().unwrap(), "--out", dir.path().join("run").to_str().unwrap()]);
    t.wait_for_steps(5);

    replace(&router, &v2);
    t.wait("the swap", |t| !t.journal("plugin-swap").is_empty());
    let swap = t.journal("plugin-swap").remove(0);
    assert_eq!(swap["role"], "router");
    assert_eq!(swap["old_sha256"], sha256(&v1));
    assert_eq!(swap["new_sha256"], sha256(&v2));
    assert!(swap["state_bytes"].as_u64().unwrap() > 0, "{swap}");
    let swap_step = swap["step"].as_u64().unwrap();
    assert!(swap_step >= 5, "{swap}");

    // A checkpoint after the swap: the new version's state is the bias the host applies,
    // built up since step 0 (had the state not been carried over, it would lack the
    // bias of the steps before the swap).
    t.wait("a checkpoint after the swap", |t| t.run_dir().join("checkpoints").read_dir().map(|d| d.count()).unwrap_or(0) > 0 && newest_state(&t.run_dir())["step"].as_u64().unwrap() > swap_step);
    let state = newest_state(&t.run_dir());
    let snap = &state["plugins"][0];
    assert_eq!(snap["digest"], sha256(&v2));
    let plugin_bias = decode_bias_state(&hex::decode(snap["state"].as_str().unwrap()).unwrap());
    assert_eq!(plugin_bias.len(), 2, "one bias vector per MoE layer");
    for (layer, bias) in &plugin_bias {
        let host = state["layers"].as_array().unwrap().iter().find(|l| l["layer"] == *layer).unwrap();
        let host_bias: Vec<f64> = host["selection_bias"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        assert_eq!(bias.len(), host_bias.len());
        for (p, h) in bias.iter().zip(&host_bias) {
            assert!((*p as f64 - h).abs() < 1e-5, "layer {layer}: plugin bias {bias:?} vs host {host_bias:?}");
        }
        assert!(bias.iter().any(|b| b.abs() >= 0.01), "layer {layer}: no bias built up: {bias:?}");
    }

    // Broken replacements are rejected, one journal line each, and training goes on.
    let wrong_world = std::fs::read(plugin("constant")).unwrap();
    let broken: [(&str, Vec<u8>, &str); 4] = [
        ("traps in configure", std::fs::read(plugin("configure-trap-router")).unwrap(), "trapped"),
        ("wrong world", wrong_world, "router slot needs a router plugin"),
        ("wrong major version", std::fs::read(plugin("future-router")).unwrap(), "recast:plugins@1.0.0"),
        ("not a component", b"\0asm garbage".to_vec(), "not a WebAssembly component"),
    ];
    for (i, (what, bytes, reason)) in broken.iter().enumerate() {
        std::fs::write(&router, bytes).unwrap();
        t.wait(what, |t| t.journal("plugin-rejected").len() > i);
        let rejected = &t.journal("plugin-rejected")[i];
        assert_eq!(rejected["old_sha256"], sha256(&v2), "{what}: {rejected}");
        assert_eq!(rejected["new_sha256"], sha256(bytes), "{what}: {rejected}");
        assert!(rejected["reason"].as_str().unwrap().contains(reason), "{what}: {rejected}");
        t.wait_for_steps(3);
    }
    assert_eq!(t.journal("plugin-swap").len(), 1, "a broken version was swapped in");
    let log = t.stderr();
    assert_eq!(log.matches("rejected the new router plugin").count(), 4, "{log}");
}

#[test]
fn pinned_runs_refuse_unpinned_code_before_step_0_and_at_reload() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = versions();
    let router = dir.path().join("router.wasm");
    std::fs::write(&router, &v1).unwrap();
    let cfg = config(dir.path(), "require_pinned = true");
    let out = dir.path().join("run");
    let train = |extra: &[&str]| {
        let mut args = vec!["train", cfg.to_str().unwrap(), "--out", out.to_str().unwrap()];
        args.extend_from_slice(extra);
        run(&args)
    };

    let no_lock = train(&["--max-steps", "1"]);
    assert!(!no_lock.status.success());
    assert!(text(&no_lock).contains("run.lock") && text(&no_lock).contains("recast lock"), "{}", text(&no_lock));

    let locked = run(&["lock", cfg.to_str().unwrap()]);
    assert!(locked.status.success(), "{}", text(&locked));
    let lock = std::fs::read_to_string(dir.path().join("run.lock")).unwrap();
    assert!(lock.contains(&sha256(&v1)) && lock.contains("role = \"router\""), "{lock}");

    std::fs::write(&router, &v2).unwrap();
    let changed = train(&["--max-steps", "1"]);
    assert!(!changed.status.success());
    let message = text(&changed);
    assert!(message.contains("router") && message.contains(&sha256(&v2)[..12]) && message.contains(&sha256(&v1)), "{message}");
    assert!(!out.join("metrics.jsonl").exists(), "a step ran with an unpinned plugin");

    std::fs::write(&router, &v1).unwrap();
    let mut t = Training::start(dir.path(), &[cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    t.wait_for_steps(3);
    replace(&router, &v2);
    t.wait("the rejection", |t| !t.journal("plugin-rejected").is_empty());
    let rejected = &t.journal("plugin-rejected")[0];
    assert!(rejected["reason"].as_str().unwrap().contains("pins"), "{rejected}");
    t.wait_for_steps(3);
    assert!(t.journal("plugin-swap").is_empty());

    // Pinning the new version (during the run) lets it in.
    let relocked = run(&["lock", cfg.to_str().unwrap()]);
    assert!(relocked.status.success(), "{}", text(&relocked));
    t.wait("the swap after re-locking", |t| !t.journal("plugin-swap").is_empty());
    assert_eq!(t.journal("plugin-swap")[0]["new_sha256"], sha256(&v2));
}

#[test]
fn keep_last_good_restores_the_old_router_when_the_new_one_traps() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, _) = versions();
    let router = dir.path().join("router.wasm");
    std::fs::write(&router, &v1).unwrap();
    let cfg = config(dir.path(), "on_plugin_fault = \"keep-last-good\"");
    let mut t = Training::start(dir.path(), &[cfg.to_str().unwrap(), "--out", dir.path().join("run").to_str().unwrap()]);
    t.wait_for_steps(3);
    let trap = std::fs::read(plugin("on-step-trap-router")).unwrap();
    replace(&router, &trap);
    t.wait("the fault", |t| !t.journal("plugin-fault").is_empty());
    let fault = &t.journal("plugin-fault")[0];
    assert_eq!(t.journal("plugin-swap")[0]["new_sha256"], sha256(&trap));
    assert_eq!(fault["action"], "keep-last-good", "{fault}");
    assert_eq!(fault["call"], "on-step", "{fault}");
    assert_eq!(fault["sha256"], sha256(&trap), "{fault}");
    assert_eq!(fault["restored_sha256"], sha256(&v1), "{fault}");
    t.wait_for_steps(5);
    assert_eq!(t.journal("plugin-fault").len(), 1, "the restored version faulted too");
}

#[test]
fn stop_checkpoints_and_exits_and_a_changed_plugin_needs_allow_plugin_change() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, _) = versions();
    let router = dir.path().join("router.wasm");
    std::fs::write(&router, &v1).unwrap();
    let cfg = config(dir.path(), "on_plugin_fault = \"stop\"");
    let run_dir = dir.path().join("run");
    let mut t = Training::start(dir.path(), &[cfg.to_str().unwrap(), "--out", run_dir.to_str().unwrap()]);
    t.wait_for_steps(3);
    let trap = std::fs::read(plugin("on-step-trap-router")).unwrap();
    replace(&router, &trap);
    let start = Instant::now();
    let status = loop {
        if let Some(status) = t.child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < TIMEOUT, "the run did not stop\n{}", t.stderr());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(!status.success());
    let log = t.stderr();
    let fault = &t.journal("plugin-fault")[0];
    // The journal and the message name the same step for the fault; the checkpoint
    // holds the step after it (on-step runs after the update).
    let step = fault["checkpoint_step"].as_u64().unwrap();
    assert!(log.contains(&format!("at step {}", fault["step"].as_u64().unwrap())), "{fault}\n{log}");
    for needle in ["on-step-trap-router", "on-step", "trapped", "on_plugin_fault = \"stop\"", "--resume"] {
        assert!(log.contains(needle), "no {needle:?} in\n{log}");
    }
    assert!(log.contains(&format!("holds step {step}")), "{log}");
    assert!(run_dir.join(format!("checkpoints/step-{step:08}")).is_dir(), "no checkpoint at step {step}\n{log}");
    drop(t);

    // Back to the good router: the checkpoint recorded the trapping one, so resuming
    // says what changed and needs --allow-plugin-change.
    std::fs::write(&router, &v1).unwrap();
    let refused = run(&["train", "--resume", run_dir.to_str().unwrap(), "--max-steps", &(step + 3).to_string()]);
    assert!(!refused.status.success());
    let message = text(&refused);
    assert!(message.contains("--allow-plugin-change") && message.contains(&sha256(&trap)) && message.contains(&sha256(&v1)), "{message}");
    let allowed = run(&["train", "--resume", run_dir.to_str().unwrap(), "--allow-plugin-change", "--max-steps", &(step + 3).to_string()]);
    assert!(allowed.status.success(), "{}", text(&allowed));
    let changes: Vec<Value> = lines(&run_dir.join("journal.jsonl")).into_iter().filter(|r| r["event"] == "plugin-change-on-resume").collect();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0]["new_sha256"], sha256(&v1));
    assert_eq!(newest_state(&run_dir)["step"].as_u64().unwrap(), step + 3);
}

#[test]
fn a_fifo_in_the_plugins_place_is_rejected_without_blocking_and_the_run_still_ends() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = versions();
    let router = dir.path().join("router.wasm");
    std::fs::write(&router, &v1).unwrap();
    let cfg = config(dir.path(), "");
    std::fs::write(&cfg, std::fs::read_to_string(&cfg).unwrap().replace("checkpoint_every = 10", "checkpoint_every = 1")).unwrap();
    // The run must outlast the FIFO and the swap whatever the machine's load: a
    // checkpoint every step, each held 100 ms, makes 150 steps last at least 30 s.
    let stderr = std::fs::File::create(dir.path().join("stderr.txt")).unwrap();
    let child = recast()
        .args(["train", cfg.to_str().unwrap(), "--out", dir.path().join("run").to_str().unwrap(), "--max-steps", "150", "--threads", "1"])
        .env("RECAST_TEST_SLOW_CHECKPOINT_MS", "100")
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let mut t = Training { child, dir: dir.path().to_path_buf() };
    t.wait_for_steps(3);
    // A FIFO without a writer: opening it for reading would block forever.
    std::fs::remove_file(&router).unwrap();
    let c = std::ffi::CString::new(router.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo on a path inside the test's temporary folder.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    t.wait("the FIFO's rejection", |t| t.journal("plugin-rejected").iter().any(|r| r["reason"].as_str().is_some_and(|s| s.contains("FIFO"))));
    // The watcher is not stuck: a later version is still vetted and swapped in.
    replace(&router, &v2);
    t.wait("the swap after the FIFO", |t| t.journal("plugin-swap").iter().any(|r| r["new_sha256"] == sha256(&v2)));
    // And the run ends when training ends.
    let start = Instant::now();
    let status = loop {
        if let Some(status) = t.child.try_wait().unwrap() {
            break status;
        }
        assert!(start.elapsed() < TIMEOUT, "the run did not exit after its last step\n{}", t.stderr());
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{}", t.stderr());
}

#[test]
fn a_shadow_router_is_hot_reloaded_and_checkpointed_without_touching_training() {
    let dir = tempfile::tempdir().unwrap();
    let (v1, v2) = versions();
    std::fs::write(dir.path().join("router.wasm"), &v1).unwrap();
    let shadow = dir.path().join("shadow.wasm");
    std::fs::write(&shadow, &v1).unwrap();
    let cfg = config(dir.path(), "\n[[plugins.shadow_router]]\nfile = \"shadow.wasm\"\nparams = { gamma = 0.05, top_k = 1 }\n");
    let mut t = Training::start(dir.path(), &[cfg.to_str().unwrap(), "--out", dir.path().join("run").to_str().unwrap()]);
    t.wait_for_steps(3);

    replace(&shadow, &v2);
    t.wait("the shadow's swap", |t| !t.journal("plugin-swap").is_empty());
    let swap = t.journal("plugin-swap").remove(0);
    assert_eq!((&swap["role"], &swap["old_sha256"], &swap["new_sha256"]), (&Value::from("shadow_router.0"), &Value::from(sha256(&v1)), &Value::from(sha256(&v2))), "{swap}");
    assert!(swap["state_bytes"].as_u64().unwrap() > 0, "{swap}");
    let swap_step = swap["step"].as_u64().unwrap();

    // A broken version is rejected; the shadow goes on and so does training.
    std::fs::write(&shadow, std::fs::read(plugin("configure-trap-router")).unwrap()).unwrap();
    t.wait("the rejection", |t| !t.journal("plugin-rejected").is_empty());
    let rejected = t.journal("plugin-rejected").remove(0);
    assert_eq!((&rejected["role"], &rejected["old_sha256"]), (&Value::from("shadow_router.0"), &Value::from(sha256(&v2))), "{rejected}");
    t.wait_for_steps(2);
    t.wait("a checkpoint after the swap", |t| t.run_dir().join("checkpoints").read_dir().map(|d| d.count()).unwrap_or(0) > 0 && newest_state(&t.run_dir())["step"].as_u64().unwrap() > swap_step);
    let state = newest_state(&t.run_dir());
    assert_eq!(state["plugins"][0]["digest"], sha256(&v1), "the live router changed");
    assert_eq!(state["shadows"][0]["plugin"]["digest"], sha256(&v2));
    let last = lines(&t.run_dir().join("metrics.jsonl")).into_iter().rev().find(|r| r.get("loss").is_some()).unwrap();
    let layers = last["shadow_routers"]["shadow_router.0"]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "{last}");
    // top-1 against the live top-2: half the live slots.
    assert!(layers.iter().all(|l| l["agreement"].as_f64().unwrap() <= 0.5 + 1e-12), "{last}");
    // The shadow's own metrics come with its routing (aux-free-bias records its largest bias).
    assert!(last["shadow_routers"]["shadow_router.0"]["plugin_metrics"]["bias_abs_max"].as_f64().is_some(), "{last}");
}

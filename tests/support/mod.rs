//! Shared test helpers: the `recast` binary and the plugins built once per test binary.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("repo root")
}

/// A `recast` command, as a user would run it.
pub fn recast() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_recast"));
    cmd.current_dir(repo());
    // Mixed precision runs its bf16 kernels on any machine (unmeasured, so a run and its
    // resume multiply alike); a test of the measured choice removes this.
    if std::env::var_os("RECAST_BF16_KERNEL").is_none() {
        cmd.env("RECAST_BF16_KERNEL", "bf16");
    }
    cmd
}

/// Run `recast ARGS`, returning the output.
pub fn run(args: &[&str]) -> Output {
    recast().args(args).output().expect("run recast")
}

/// stdout and stderr of a finished command, for assertion messages.
pub fn text(out: &Output) -> String {
    format!("--- stdout\n{}\n--- stderr\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Every plugin of `plugins/` (reference plugins and fault fixtures), built once with
/// `recast plugin build plugins`: package name -> component file.
pub fn plugins() -> &'static HashMap<String, PathBuf> {
    static BUILT: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    BUILT.get_or_init(|| {
        let out = run(&["plugin", "build", "plugins"]);
        assert!(out.status.success(), "recast plugin build plugins failed\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout).lines().map(PathBuf::from).map(|p| (p.file_stem().unwrap().to_string_lossy().to_string(), p)).collect()
    })
}

/// The component file of plugin `name`.
pub fn plugin(name: &str) -> &'static Path {
    plugins().get(name).unwrap_or_else(|| panic!("plugin {name} was not built")).as_path()
}

/// The `[model.init]` table of the tests' tiny MoE (2 layers, d 32, 4 experts, top-2):
/// a training step takes milliseconds.
pub const TINY_MOE: &str = r#"[model.init]
architecture = "mixtral"
hidden_size = 32
num_layers = 2
num_heads = 4
num_kv_heads = 2
intermediate_size = 48
num_experts = 4
top_k = 2
std = 0.05
"#;

/// A small MoE run on two built-in domains with the reference router, aux schedule and
/// sampler (as files), written to `dir/run.toml`; `extra_train` joins `[train]`.
pub fn config(dir: &Path, extra_train: &str) -> PathBuf {
    let path = dir.join("run.toml");
    let body = format!(
        r#"seed = 7

{TINY_MOE}
[[data.domains]]
name = "arithmetic"
builtin = "arithmetic"

[[data.domains]]
name = "prose"
builtin = "prose"

[plugins.router]
file = "{router}"
params = {{ top_k = 2, capacity_factor = 1.5 }}

[plugins.aux_schedule]
file = "{aux}"

[plugins.sampler]
file = "{sampler}"
params = {{ temperature = 2.0 }}

[optimizer]
lr = 5e-3

[schedule]
warmup_steps = 3

[train]
steps = 20
batch_size = 4
seq_len = 32
eval_tokens = 512
{extra_train}
"#,
        router = plugin("topk-softmax").display(),
        aux = plugin("constant").display(),
        sampler = plugin("temperature").display(),
    );
    std::fs::write(&path, body).unwrap();
    path
}

/// `recast train ARGS --threads 2`.
pub fn train(args: &[&str]) -> Output {
    let mut all = vec!["train"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["--threads", "2"]);
    run(&all)
}

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

//! The `--config` flag every Rust plugin build passes to cargo, shared by the host's
//! build script (which embeds the reference plugins) and by `recast plugin build`, so both
//! write byte-identical components and share one set of compiled dependencies.
//!
//! Rust embeds the absolute paths of path and registry dependencies (panic locations);
//! remapping them keeps the build machine's directories out of shared components, so two
//! builds from the same checkout path give the same sha256. (Checkouts at different paths
//! still differ: cargo hashes these flags into symbol names.)

use std::path::Path;

/// `build.rustflags=[...]` remapping `source_root` to `/recast` and cargo's home to `/cargo`.
pub fn path_remap_config(source_root: &Path) -> String {
    let mut remaps = Vec::new();
    if let Ok(root) = source_root.canonicalize() {
        remaps.push(format!("--remap-path-prefix={}=/recast", root.display()));
    }
    let cargo_home = std::env::var_os("CARGO_HOME").map(std::path::PathBuf::from).or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cargo")));
    if let Some(home) = cargo_home.and_then(|h| h.canonicalize().ok()) {
        remaps.push(format!("--remap-path-prefix={}=/cargo", home.display()));
    }
    let quoted: Vec<String> = remaps.iter().map(|r| format!("{r:?}")).collect();
    format!("build.rustflags=[{}]", quoted.join(","))
}

/// Environment variables cargo gives a build script that must not reach the plugin build
/// it starts: they carry the host's flags, target, target folder or lint driver.
pub const NESTED_CARGO_ENV_REMOVED: [&str; 7] =
    ["CARGO_ENCODED_RUSTFLAGS", "RUSTFLAGS", "CARGO_TARGET_DIR", "CARGO_BUILD_TARGET", "CARGO_BUILD_TARGET_DIR", "CARGO_BUILD_RUSTFLAGS", "RUSTC_WORKSPACE_WRAPPER"];

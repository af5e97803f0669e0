//! `recast plugin new --kind KIND [--lang rust|python|javascript] NAME`: a plugin that
//! builds as is.

use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use super::templates;
use crate::plugins::PluginKind;

/// A plugin's source language.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Lang {
    Rust,
    /// Built with componentize-py.
    Python,
    /// Built with componentize-js.
    Javascript,
}

pub(super) fn run(kind: PluginKind, name: &str, lang: Lang, dir: &Path, sdk: Option<&Path>) -> anyhow::Result<()> {
    let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_') && name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    if !valid {
        bail!("plugin name {name:?} must start with a lowercase letter and use only a-z, 0-9, '-' and '_'");
    }
    if lang != Lang::Rust {
        return scripted(kind, name, lang, dir);
    }
    let sdk = match sdk {
        Some(p) => p.to_path_buf(),
        None => super::source_root().join("sdk"),
    };
    let sdk = sdk.canonicalize().with_context(|| format!("recast-sdk not found at {} (pass --sdk PATH)", sdk.display()))?;
    if !sdk.join("Cargo.toml").is_file() {
        bail!("{} holds no Cargo.toml; pass --sdk with the path of the recast-sdk crate", sdk.display());
    }
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    std::fs::create_dir_all(root.join("src")).with_context(|| format!("cannot create {}", root.display()))?;
    let root = root.canonicalize()?;
    let sdk_path = relative_path(&root, &sdk);
    let sdk_str = sdk_path.to_string_lossy().replace('\\', "/");

    std::fs::write(root.join("src/lib.rs"), templates::lib_rs(kind))?;
    std::fs::write(root.join("README.md"), templates::readme(name, kind))?;
    std::fs::write(root.join("Cargo.toml"), templates::cargo_toml(name, kind, &sdk_str, false))?;
    // Inside a workspace that does not list it, cargo refuses the crate unless it is its
    // own workspace root; elsewhere (standalone, or a listed member) it builds as is.
    if !cargo_accepts(&root) {
        std::fs::write(root.join("Cargo.toml"), templates::cargo_toml(name, kind, &sdk_str, true))?;
    }
    eprintln!("created {kind} plugin `{name}` in {}", root.display());
    eprintln!("build it with: recast plugin build {}", root.display());
    println!("{}", root.display());
    Ok(())
}

/// A Python or JavaScript plugin folder: manifest, module, README.
fn scripted(kind: PluginKind, name: &str, lang: Lang, dir: &Path) -> anyhow::Result<()> {
    let source = templates::script(kind, lang == Lang::Python);
    let root = dir.join(name);
    if root.exists() {
        bail!("{} already exists", root.display());
    }
    std::fs::create_dir_all(&root).with_context(|| format!("cannot create {}", root.display()))?;
    let (manifest, module) = match lang {
        Lang::Python => ("pyproject.toml", "app.py"),
        _ => ("package.json", "index.js"),
    };
    std::fs::write(root.join(module), source.replace("{{name}}", name))?;
    std::fs::write(root.join(manifest), templates::script_manifest(name, kind, lang == Lang::Python))?;
    std::fs::write(root.join("README.md"), templates::readme(name, kind))?;
    eprintln!("created {kind} plugin `{name}` ({lang:?}) in {}", root.display());
    eprintln!("build it with: recast plugin build {} (needs `bash scripts/plugin-tools.sh` once)", root.display());
    println!("{}", root.display());
    Ok(())
}

fn cargo_accepts(root: &Path) -> bool {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    Command::new(cargo).args(["metadata", "--no-deps", "--offline", "--format-version", "1", "--manifest-path"]).arg(root.join("Cargo.toml")).output().map(|o| o.status.success()).unwrap_or(false)
}

/// `to` relative to `from` (both absolute), so the scaffold survives moving the pair.
fn relative_path(from: &Path, to: &Path) -> PathBuf {
    let from: Vec<Component> = from.components().collect();
    let to: Vec<Component> = to.components().collect();
    let common = from.iter().zip(&to).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..from.len() {
        out.push("..");
    }
    for c in &to[common..] {
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::relative_path;
    use std::path::Path;

    #[test]
    fn relative_paths() {
        assert_eq!(relative_path(Path::new("/a/b/c"), Path::new("/a/sdk")), Path::new("../../sdk"));
        assert_eq!(relative_path(Path::new("/a"), Path::new("/a/sdk")), Path::new("sdk"));
    }
}

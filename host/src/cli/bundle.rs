//! `recast bundle pack|verify|list|sign` and `recast keygen`.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::Args;

use crate::plugins::bundle::{self, Bundle, BundleLimits, PublicKey, SecretKey};
use crate::plugins::{PluginEngine, PluginKind};

pub(super) fn pack(dir: &Path, out: &Path) -> anyhow::Result<()> {
    let engine = PluginEngine::new()?;
    let manifest = bundle::pack(&engine, dir, out)?;
    println!("packed {} {} ({} plugins) into {}", manifest.name, manifest.version, manifest.plugins.len(), out.display());
    for p in &manifest.plugins {
        println!("  {:<24} {:<13} sha256:{}  {}", p.name, p.kind.map(PluginKind::as_str).unwrap_or("?"), p.sha256.as_deref().unwrap_or("?"), p.file);
    }
    Ok(())
}

pub(super) fn verify(path: &Path, trusted: &[PathBuf], limits: &BundleLimits) -> anyhow::Result<()> {
    let bundle = Bundle::open_within(path, limits)?;
    let keys = trusted.iter().map(|k| PublicKey::read(k)).collect::<Result<Vec<_>, _>>()?;
    bundle.check_trust(&keys)?;
    let engine = PluginEngine::new()?;
    for p in &bundle.manifest.plugins {
        let Some(kind) = p.kind else { continue };
        let (_, bytes) = bundle.plugin(kind, Some(&p.name))?;
        let label = format!("{}:{}", path.display(), p.file);
        let component = engine.load_bytes(&label, bytes).with_context(|| format!("{}: {}", path.display(), p.file))?;
        if component.kind() != kind || Some(component.wit_version()) != p.wit_version.as_deref() {
            bail!(
                "{}: {}: bundle.toml says a {kind} plugin for recast:plugins@{}, the component is a {} plugin for recast:plugins@{}",
                path.display(),
                p.file,
                p.wit_version.as_deref().unwrap_or("?"),
                component.kind(),
                component.wit_version()
            );
        }
    }
    let signature = match (&bundle.signer, keys.is_empty()) {
        (Some(key), false) => format!("signed by trusted key {}", key.fingerprint()),
        (Some(key), true) => format!("signed by {} (no --trusted-key given to check it against)", key.fingerprint()),
        (None, _) => "not signed".into(),
    };
    println!("ok: {} {} — {} plugins, every sha256 matches, {signature}", bundle.manifest.name, bundle.manifest.version, bundle.manifest.plugins.len());
    Ok(())
}

pub(super) fn list(path: &Path, json: bool, limits: &BundleLimits) -> anyhow::Result<()> {
    let bundle = Bundle::open_within(path, limits)?;
    let m = &bundle.manifest;
    if json {
        let value = serde_json::json!({
            "name": m.name, "version": m.version, "description": m.description,
            "signer": bundle.signer.map(|k| k.to_string()), "plugins": m.plugins,
        });
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    println!("{} {} — {}", m.name, m.version, m.description);
    println!("signature: {}", bundle.signer.map(|k| format!("{k}")).unwrap_or_else(|| "none".into()));
    println!("{:<24} {:<13} {:<8} {:<66} file", "name", "kind", "wit", "sha256");
    for p in &m.plugins {
        println!("{:<24} {:<13} {:<8} {:<66} {}", p.name, p.kind.map(PluginKind::as_str).unwrap_or("?"), p.wit_version.as_deref().unwrap_or("?"), p.sha256.as_deref().unwrap_or("?"), p.file);
    }
    Ok(())
}

pub(super) fn sign(path: &Path, key: &Path) -> anyhow::Result<()> {
    let secret = SecretKey::read(key)?;
    let public = bundle::sign(path, &secret)?;
    println!("signed {} with {}", path.display(), public.fingerprint());
    Ok(())
}

pub(super) fn keygen(out: &Path) -> anyhow::Result<()> {
    let public_path = PathBuf::from(format!("{}.pub", out.display()));
    for p in [out, public_path.as_path()] {
        if p.exists() {
            bail!("{} already exists; choose another --out (keys are never overwritten)", p.display());
        }
    }
    let key = SecretKey::generate()?;
    write_secret(out, key.to_text().as_bytes()).with_context(|| format!("cannot write {}", out.display()))?;
    std::fs::write(&public_path, format!("{}\n", key.public())).with_context(|| format!("cannot write {}", public_path.display()))?;
    println!("secret key: {} (keep it to yourself)", out.display());
    println!("public key: {}  {}", public_path.display(), key.public());
    Ok(())
}

/// Create `path` readable only by its owner, refusing to replace anything.
fn write_secret(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    file.write_all(bytes)?;
    file.sync_all()
}

/// How much a bundle may hold (defaults as in the run config's `[bundle_limits]`).
#[derive(Args, Debug, Clone, Copy)]
pub(super) struct BundleLimitArgs {
    /// Largest file inside the bundle, in MiB.
    #[arg(long, default_value_t = BundleLimits::default().max_entry_mib)]
    max_entry_mib: u64,
    /// Largest bundle, in MiB.
    #[arg(long, default_value_t = BundleLimits::default().max_bundle_mib)]
    max_bundle_mib: u64,
    /// Most entries in a bundle .tar.
    #[arg(long, default_value_t = BundleLimits::default().max_entries)]
    max_entries: usize,
}

impl BundleLimitArgs {
    pub(super) fn limits(self) -> BundleLimits {
        BundleLimits { max_entry_mib: self.max_entry_mib, max_bundle_mib: self.max_bundle_mib, max_entries: self.max_entries }
    }
}

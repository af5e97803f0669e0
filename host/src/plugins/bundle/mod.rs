//! Plugin bundles: a folder or a `.tar` holding `bundle.toml` (name, version,
//! description, and per plugin its kind, file, sha256 and WIT version), the plugin
//! components, and optionally `bundle.sig`, an ed25519 signature of the manifest.
//! Opening a bundle checks everything before any plugin is handed out: the archive's
//! layout, the manifest's own checksum, every plugin's sha256, and the signature.
//!
//! ```no_run
//! use recast::plugins::bundle::{Bundle, PublicKey};
//! use recast::plugins::PluginKind;
//! let bundle = Bundle::open("routers.tar".as_ref())?;
//! bundle.check_trust(&[PublicKey::read("alice.pub".as_ref())?])?;
//! let (plugin, bytes) = bundle.plugin(PluginKind::Router, Some("aux-free-bias"))?;
//! println!("{} {} bytes", plugin.name, bytes.len());
//! # Ok::<(), recast::plugins::bundle::BundleError>(())
//! ```

mod archive;
mod error;
mod limits;
mod manifest;
mod signature;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use error::BundleError;
pub use limits::BundleLimits;
pub use manifest::{BundleManifest, BundlePlugin, MANIFEST};
pub use signature::{BundleSignature, PublicKey, SIGNATURE, SecretKey};

use super::{Digest, PluginEngine};
use archive::ArchivedFile;

/// The manifest's own sha256, so that a flipped bit in `bundle.toml` of an unsigned
/// bundle is caught too.
pub const MANIFEST_SUM: &str = "bundle.toml.sha256";

/// Names a bundle reserves for itself.
const RESERVED: [&str; 3] = [MANIFEST, MANIFEST_SUM, SIGNATURE];

/// An opened, verified bundle.
pub struct Bundle {
    /// The folder or `.tar` it was read from.
    pub path: PathBuf,
    /// The parsed manifest.
    pub manifest: BundleManifest,
    manifest_bytes: Vec<u8>,
    files: BTreeMap<String, Vec<u8>>,
    /// Who signed it, if anyone (the signature has been checked).
    pub signer: Option<PublicKey>,
}

impl Bundle {
    /// Read and verify the bundle at `path` (a folder or a `.tar`) within the default
    /// [`BundleLimits`]: layout, manifest checksum, every plugin's sha256, and the
    /// signature if there is one.
    pub fn open(path: &Path) -> Result<Self, BundleError> {
        Self::open_within(path, &BundleLimits::default())
    }

    /// [`Bundle::open`] within `limits`.
    pub fn open_within(path: &Path, limits: &BundleLimits) -> Result<Self, BundleError> {
        let (files, packed) = if path.is_dir() {
            (read_folder(path, limits)?, false)
        } else {
            let bytes = read_limited(path, limits.bundle_bytes(), path, || limits.describe_bundle_limit())?;
            let files = archive::read(path, &bytes, limits)?;
            (files.into_iter().map(|f| (f.name, f.bytes)).collect::<BTreeMap<_, _>>(), true)
        };
        let manifest_bytes = files.get(MANIFEST).cloned().ok_or_else(|| BundleError::NotABundle { bundle: path.to_path_buf(), reason: format!("it has no {MANIFEST}") })?;
        match files.get(MANIFEST_SUM) {
            Some(sum) => {
                let expected = String::from_utf8_lossy(sum).to_string();
                let actual = Digest::of(&manifest_bytes).to_hex();
                if expected != format!("{actual}\n") {
                    return Err(BundleError::DigestMismatch { bundle: path.to_path_buf(), file: MANIFEST.into(), expected: format!("{:?} in {MANIFEST_SUM}", expected.trim_end()), actual });
                }
            }
            None if packed => return Err(BundleError::MissingFile { bundle: path.to_path_buf(), file: MANIFEST_SUM.into() }),
            None => {}
        }
        let text = std::str::from_utf8(&manifest_bytes).map_err(|_| BundleError::Manifest { bundle: path.to_path_buf(), file: MANIFEST.into(), reason: "not UTF-8 text".into() })?;
        let manifest = BundleManifest::parse(text, path, true)?;
        for p in &manifest.plugins {
            let bytes = files.get(&p.file).ok_or_else(|| BundleError::MissingFile { bundle: path.to_path_buf(), file: p.file.clone() })?;
            check_digest(path, &p.file, p.sha256.as_deref().unwrap_or_default(), bytes)?;
        }
        if packed && let Some(extra) = files.keys().find(|f| !RESERVED.contains(&f.as_str()) && !manifest.plugins.iter().any(|p| &p.file == *f)) {
            return Err(BundleError::UnlistedFile { bundle: path.to_path_buf(), file: extra.clone() });
        }
        let signer = match files.get(SIGNATURE) {
            Some(sig) => Some(BundleSignature::verify(sig, &manifest_bytes, path)?),
            None => None,
        };
        let listed: BTreeMap<String, Vec<u8>> = files.into_iter().filter(|(name, _)| manifest.plugins.iter().any(|p| &p.file == name)).collect();
        Ok(Bundle { path: path.to_path_buf(), manifest, manifest_bytes, files: listed, signer })
    }

    /// Refuse the bundle unless `trusted` is empty (signatures optional) or it is signed
    /// by one of the keys in it.
    pub fn check_trust(&self, trusted: &[PublicKey]) -> Result<(), BundleError> {
        if trusted.is_empty() {
            return Ok(());
        }
        let list = trusted.iter().map(|k| k.fingerprint()).collect::<Vec<_>>().join(", ");
        match &self.signer {
            None => Err(BundleError::Unsigned { bundle: self.path.clone(), trusted: list }),
            Some(key) if trusted.contains(key) => Ok(()),
            Some(key) => Err(BundleError::UntrustedKey { bundle: self.path.clone(), key: key.fingerprint(), trusted: list }),
        }
    }

    /// The plugin of `kind` named `name` (or the only one of that kind) and its bytes.
    pub fn plugin(&self, kind: super::PluginKind, name: Option<&str>) -> Result<(&BundlePlugin, &[u8]), BundleError> {
        let of_kind: Vec<&BundlePlugin> = self.manifest.plugins.iter().filter(|p| p.kind == Some(kind) && name.is_none_or(|n| p.name == n)).collect();
        let chosen = match of_kind.as_slice() {
            [one] => *one,
            [] => {
                let available = self.manifest.plugins.iter().map(|p| format!("{} ({})", p.name, p.kind.map(|k| k.as_str()).unwrap_or("?"))).collect::<Vec<_>>().join(", ");
                return Err(BundleError::NoSuchPlugin { bundle: self.path.clone(), kind: kind.to_string(), name: name.map(str::to_string), available });
            }
            many => return Err(BundleError::AmbiguousPlugin { bundle: self.path.clone(), kind: kind.to_string(), names: many.iter().map(|p| p.name.as_str()).collect::<Vec<_>>().join(", ") }),
        };
        let bytes = self.files.get(&chosen.file).map(Vec::as_slice).unwrap_or_default();
        Ok((chosen, bytes))
    }

    /// The bytes of `bundle.toml`, as signed.
    pub fn manifest_bytes(&self) -> &[u8] {
        &self.manifest_bytes
    }
}

/// Pack the folder `dir` (with a `bundle.toml` listing at least each plugin's `file`)
/// into the `.tar` `out`: every component is compiled to learn its kind and WIT version,
/// which with its sha256 are written into the packed manifest; values the folder's
/// manifest already states must agree.
pub fn pack(engine: &PluginEngine, dir: &Path, out: &Path) -> Result<BundleManifest, BundleError> {
    let manifest_path = dir.join(MANIFEST);
    let text = std::fs::read_to_string(&manifest_path).map_err(|source| BundleError::Io { path: manifest_path.clone(), source })?;
    let mut manifest = BundleManifest::parse(&text, dir, false)?;
    let mut files = Vec::new();
    for p in &mut manifest.plugins {
        let file = dir.join(&p.file);
        let bytes = std::fs::read(&file).map_err(|source| BundleError::Io { path: file.clone(), source })?;
        let digest = Digest::of(&bytes).to_hex();
        if let Some(stated) = &p.sha256 {
            check_digest(dir, &p.file, stated, &bytes)?;
        }
        let component = engine.load_bytes(&file.display().to_string(), &bytes).map_err(|e| BundleError::Manifest { bundle: dir.to_path_buf(), file: p.file.clone(), reason: e.to_string() })?;
        let disagree = |field: &str, stated: String, found: String| BundleError::Manifest {
            bundle: dir.to_path_buf(),
            file: MANIFEST.into(),
            reason: format!("plugin {:?}: {field} is {stated} in the manifest, but the component says {found}", p.name),
        };
        if let Some(kind) = p.kind
            && kind != component.kind()
        {
            return Err(disagree("kind", kind.to_string(), component.kind().to_string()));
        }
        if let Some(v) = &p.wit_version
            && v != component.wit_version()
        {
            return Err(disagree("wit_version", v.clone(), component.wit_version().to_string()));
        }
        p.kind = Some(component.kind());
        p.sha256 = Some(digest);
        p.wit_version = Some(component.wit_version().to_string());
        files.push(ArchivedFile { name: p.file.clone(), bytes });
    }
    let manifest_text = manifest.to_toml();
    let mut archived = vec![
        ArchivedFile { name: MANIFEST.into(), bytes: manifest_text.clone().into_bytes() },
        ArchivedFile { name: MANIFEST_SUM.into(), bytes: format!("{}\n", Digest::of(manifest_text.as_bytes()).to_hex()).into_bytes() },
    ];
    archived.extend(files);
    write_archive(out, &archived)?;
    Ok(manifest)
}

/// Sign the bundle at `path` with `key` (replacing any earlier signature), after
/// verifying it. A `.tar` is rewritten atomically; a folder gets a `bundle.sig`.
pub fn sign(path: &Path, key: &SecretKey) -> Result<PublicKey, BundleError> {
    let bundle = Bundle::open(path)?;
    let signature = key.sign(bundle.manifest_bytes()).to_toml();
    if path.is_dir() {
        let sig = path.join(SIGNATURE);
        crate::atomic_file::write(&sig, signature.as_bytes()).map_err(|source| BundleError::Io { path: sig, source })?;
    } else {
        let limits = BundleLimits::default();
        let bytes = read_limited(path, limits.bundle_bytes(), path, || limits.describe_bundle_limit())?;
        let mut files: Vec<ArchivedFile> = archive::read(path, &bytes, &limits)?.into_iter().filter(|f| f.name != SIGNATURE).collect();
        files.push(ArchivedFile { name: SIGNATURE.into(), bytes: signature.into_bytes() });
        write_archive(path, &files)?;
    }
    Ok(key.public())
}

fn write_archive(out: &Path, files: &[ArchivedFile]) -> Result<(), BundleError> {
    let io = |source| BundleError::Io { path: out.to_path_buf(), source };
    let bytes = archive::write(files).map_err(io)?;
    crate::atomic_file::write(out, &bytes).map_err(io)
}

fn check_digest(bundle: &Path, file: &str, expected: &str, bytes: &[u8]) -> Result<(), BundleError> {
    let actual = Digest::of(bytes).to_hex();
    if !actual.eq_ignore_ascii_case(expected) {
        return Err(BundleError::DigestMismatch { bundle: bundle.to_path_buf(), file: file.to_string(), expected: expected.to_string(), actual });
    }
    Ok(())
}

/// The regular file `path` of the bundle `bundle`, refused unread when it is larger
/// than `limit` bytes (`limit_text` says which limit).
fn read_limited(path: &Path, limit: u64, bundle: &Path, limit_text: impl Fn() -> String) -> Result<Vec<u8>, BundleError> {
    crate::regular_file::read(path, limit).map_err(|source| match source.kind() {
        std::io::ErrorKind::FileTooLarge => BundleError::TooLarge { bundle: bundle.to_path_buf(), what: format!("{} ({source})", path.display()), limit: limit_text() },
        _ => BundleError::Io { path: path.to_path_buf(), source },
    })
}

/// The manifest, its checksum, its signature and the files it lists, from a folder,
/// each within the entry limit and all together within the bundle limit.
fn read_folder(dir: &Path, limits: &BundleLimits) -> Result<BTreeMap<String, Vec<u8>>, BundleError> {
    let total = std::cell::Cell::new(0u64);
    let read = |name: &str| -> Result<Option<Vec<u8>>, BundleError> {
        let path = dir.join(name);
        match read_limited(&path, limits.entry_bytes(), dir, || limits.describe_entry_limit()) {
            Ok(bytes) => {
                total.set(total.get() + bytes.len() as u64);
                if total.get() > limits.bundle_bytes() {
                    return Err(BundleError::TooLarge { bundle: dir.to_path_buf(), what: format!("{} bytes of files", total.get()), limit: limits.describe_bundle_limit() });
                }
                Ok(Some(bytes))
            }
            Err(BundleError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    };
    let mut files = BTreeMap::new();
    for name in RESERVED {
        if let Some(bytes) = read(name)? {
            files.insert(name.to_string(), bytes);
        }
    }
    if let Some(text) = files.get(MANIFEST).and_then(|b| std::str::from_utf8(b).ok())
        && let Ok(manifest) = BundleManifest::parse(text, dir, false)
    {
        for p in manifest.plugins {
            if let Some(bytes) = read(&p.file)? {
                files.insert(p.file, bytes);
            }
        }
    }
    Ok(files)
}

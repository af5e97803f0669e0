//! Why a bundle, a key or a signature was refused. Every message names the bundle and,
//! where one is to blame, the file inside it.

use std::path::PathBuf;

/// A bundle that cannot be packed, read, verified or signed.
#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{bundle}: {file}: {reason}")]
    Manifest { bundle: PathBuf, file: String, reason: String },
    #[error("{bundle}: not a bundle: {reason}")]
    NotABundle { bundle: PathBuf, reason: String },
    /// The tar structure itself is damaged or is not what `recast bundle pack` writes.
    #[error("{bundle}: {place}: {reason}; the bundle was altered or damaged after packing")]
    Corrupt { bundle: PathBuf, place: String, reason: String },
    /// A file's bytes do not have the sha256 the manifest gives.
    #[error("{bundle}: {file}: sha256 {actual} differs from {expected} in bundle.toml; the file was altered or damaged after packing")]
    DigestMismatch { bundle: PathBuf, file: String, expected: String, actual: String },
    /// Over a [`super::BundleLimits`] limit; refused before the bytes were read.
    #[error("{bundle}: {what} is over the limit of {limit}; raise `[bundle_limits]` in the run config (or the `--max-*` flags) only for a bundle you trust")]
    TooLarge { bundle: PathBuf, what: String, limit: String },
    #[error("{bundle}: bundle.toml lists {file}, which the bundle does not contain")]
    MissingFile { bundle: PathBuf, file: String },
    #[error("{bundle}: {file} is not listed in bundle.toml; a bundle holds only its manifest, its plugins and its signature")]
    UnlistedFile { bundle: PathBuf, file: String },
    #[error("{bundle}: bundle.sig: {reason}")]
    BadSignature { bundle: PathBuf, reason: String },
    /// Signed, and the signature holds, but not by a key the run trusts.
    #[error("{bundle}: signed by {key}, which is not among the trusted keys ({trusted}); add its public key to `trusted_keys` only if you trust its owner")]
    UntrustedKey { bundle: PathBuf, key: String, trusted: String },
    #[error("{bundle}: not signed, but the run trusts only signed bundles (trusted_keys: {trusted}); sign it with `recast bundle sign`")]
    Unsigned { bundle: PathBuf, trusted: String },
    #[error("{path}: not a Recast {what} key: {reason}")]
    BadKey { path: String, what: &'static str, reason: String },
    #[error("{bundle}: no {kind} plugin{} in the bundle (it holds: {available})", name.as_ref().map(|n| format!(" named {n:?}")).unwrap_or_default())]
    NoSuchPlugin { bundle: PathBuf, kind: String, name: Option<String>, available: String },
    #[error("{bundle}: several {kind} plugins ({names}); choose one with `plugin = \"NAME\"`")]
    AmbiguousPlugin { bundle: PathBuf, kind: String, names: String },
}

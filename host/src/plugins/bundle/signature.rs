//! ed25519 keys and bundle signatures. A signature covers the exact bytes of
//! `bundle.toml`, which holds the sha256 of every plugin, so it vouches for the whole
//! bundle. Keys are one line of text: `ed25519:<64 hex>` (public, safe to share and to
//! paste into a run config) and `ed25519-secret:<64 hex>` (the signing key).

use std::fmt;
use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

use super::error::BundleError;

/// The signature file inside a signed bundle.
pub const SIGNATURE: &str = "bundle.sig";

const PUBLIC_PREFIX: &str = "ed25519:";
const SECRET_PREFIX: &str = "ed25519-secret:";

/// A public key that may sign bundles.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

impl PublicKey {
    /// Parse `ed25519:<hex>`; `origin` (a file, or the config) names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, BundleError> {
        let bad = |reason: String| BundleError::BadKey { path: origin.to_string(), what: "public", reason };
        let text = text.trim();
        let hex_part = text.strip_prefix(PUBLIC_PREFIX).ok_or_else(|| bad(format!("expected `{PUBLIC_PREFIX}` followed by 64 hex digits")))?;
        let bytes: [u8; 32] = decode32(hex_part).map_err(bad)?;
        VerifyingKey::from_bytes(&bytes).map(PublicKey).map_err(|e| bad(e.to_string()))
    }

    /// Read a public key file (`KEY.pub` from `recast keygen`).
    pub fn read(path: &Path) -> Result<Self, BundleError> {
        let text = std::fs::read_to_string(path).map_err(|source| BundleError::Io { path: path.to_path_buf(), source })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// A public key given in a run config: the key itself, or the path of its file
    /// (relative paths resolved against `base`).
    pub fn from_config(entry: &str, base: &Path) -> Result<Self, BundleError> {
        if entry.trim().starts_with(PUBLIC_PREFIX) { Self::parse(entry, "trusted_keys") } else { Self::read(&base.join(entry)) }
    }

    /// The short form shown in messages: `ed25519:` and the first 16 hex digits.
    pub fn fingerprint(&self) -> String {
        format!("{PUBLIC_PREFIX}{}", &hex::encode(self.0.as_bytes())[..16])
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PUBLIC_PREFIX}{}", hex::encode(self.0.as_bytes()))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// A signing key, kept in a file only its owner can read.
pub struct SecretKey(SigningKey);

impl SecretKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Self, BundleError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| BundleError::BadKey { path: "(random source)".into(), what: "secret", reason: e.to_string() })?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// Read a key file written by `recast keygen`.
    pub fn read(path: &Path) -> Result<Self, BundleError> {
        let bad = |reason: String| BundleError::BadKey { path: path.display().to_string(), what: "secret", reason };
        let text = std::fs::read_to_string(path).map_err(|source| BundleError::Io { path: path.to_path_buf(), source })?;
        let text = text.trim();
        if text.starts_with(PUBLIC_PREFIX) {
            return Err(bad("this is a public key; sign with the secret key file (the one without `.pub`)".into()));
        }
        let hex_part = text.strip_prefix(SECRET_PREFIX).ok_or_else(|| bad(format!("expected `{SECRET_PREFIX}` followed by 64 hex digits")))?;
        Ok(SecretKey(SigningKey::from_bytes(&decode32(hex_part).map_err(bad)?)))
    }

    /// The key file's text.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}\n", hex::encode(self.0.to_bytes()))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// A signature over `manifest` (the bytes of `bundle.toml`).
    pub fn sign(&self, manifest: &[u8]) -> BundleSignature {
        BundleSignature { key: self.public().to_string(), signature: hex::encode(self.0.sign(manifest).to_bytes()) }
    }
}

/// The contents of `bundle.sig`.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BundleSignature {
    /// The signer's public key, `ed25519:<hex>`.
    pub key: String,
    /// The ed25519 signature of `bundle.toml`, 128 hex digits.
    pub signature: String,
}

impl BundleSignature {
    /// Parse `bundle.sig` and check it against `manifest`; the key that signed it.
    pub fn verify(text: &[u8], manifest: &[u8], bundle: &Path) -> Result<PublicKey, BundleError> {
        let bad = |reason: String| BundleError::BadSignature { bundle: bundle.to_path_buf(), reason };
        let text = std::str::from_utf8(text).map_err(|_| bad("not UTF-8 text".into()))?;
        let parsed: BundleSignature = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        // Only the exact text `sign` writes: hex is case-insensitive and TOML forgives
        // whitespace, so a flipped bit could otherwise leave a signature that still holds.
        if parsed.to_toml() != text {
            return Err(bad("not in the form `recast bundle sign` writes; the file was altered".into()));
        }
        let key = PublicKey::parse(&parsed.key, SIGNATURE).map_err(|e| bad(e.to_string()))?;
        let bytes = hex::decode(&parsed.signature).map_err(|e| bad(format!("signature: {e}")))?;
        let signature = Signature::from_slice(&bytes).map_err(|e| bad(format!("signature: {e}")))?;
        if key.to_string() != parsed.key || hex::encode(&bytes) != parsed.signature {
            return Err(bad("hex digits must be lower-case as `recast bundle sign` writes them; the file was altered".into()));
        }
        key.0.verify(manifest, &signature).map_err(|_| bad(format!("the signature by {} does not match bundle.toml; the bundle was altered after signing", key.fingerprint())))?;
        Ok(key)
    }

    /// The file's text.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

fn decode32(text: &str) -> Result<[u8; 32], String> {
    let bytes = hex::decode(text.trim()).map_err(|e| format!("not hex: {e}"))?;
    bytes.try_into().map_err(|b: Vec<u8>| format!("{} bytes, expected 32", b.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_hold_for_the_signed_bytes_only() {
        let key = SecretKey::generate().expect("key");
        let sig = key.sign(b"manifest").to_toml();
        let signer = BundleSignature::verify(sig.as_bytes(), b"manifest", Path::new("b")).expect("verifies");
        assert_eq!(signer, key.public());
        assert!(BundleSignature::verify(sig.as_bytes(), b"manifesT", Path::new("b")).is_err());
        let text = key.public().to_string();
        assert_eq!(PublicKey::parse(&text, "x").expect("parse"), key.public());
    }
}

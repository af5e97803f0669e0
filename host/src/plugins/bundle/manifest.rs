//! `bundle.toml`: what a bundle is and the sha256 of every plugin it holds. `recast
//! bundle pack` fills in digests, kinds and WIT versions; readers require them.

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::error::BundleError;
use crate::plugins::PluginKind;

/// The manifest's file name, at the bundle's root.
pub const MANIFEST: &str = "bundle.toml";

/// A bundle's manifest.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BundleManifest {
    /// Short name, e.g. `alice-routers`.
    pub name: String,
    /// The bundle's own version, e.g. `0.3.0`.
    pub version: String,
    /// One line on what the bundle is for.
    #[serde(default)]
    pub description: String,
    /// The plugins, in the order they are packed.
    #[serde(rename = "plugin", default)]
    pub plugins: Vec<BundlePlugin>,
}

/// One plugin of a bundle.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BundlePlugin {
    /// How a run config names it (`plugin = "..."`); defaults to the file's stem.
    #[serde(default)]
    pub name: String,
    /// The component file, relative to the bundle root.
    pub file: String,
    /// Its kind (filled in by `pack` from the component's exports).
    pub kind: Option<PluginKind>,
    /// sha256 of the file, 64 hex digits (filled in by `pack`).
    pub sha256: Option<String>,
    /// The `recast:plugins` version it was built against (filled in by `pack`).
    pub wit_version: Option<String>,
}

impl BundleManifest {
    /// Parse `text`, naming `bundle` in errors. `complete` requires every plugin's kind,
    /// digest and WIT version (a packed bundle); without it they may be missing (a
    /// folder about to be packed).
    pub fn parse(text: &str, bundle: &Path, complete: bool) -> Result<Self, BundleError> {
        let fail = |reason: String| BundleError::Manifest { bundle: bundle.to_path_buf(), file: MANIFEST.into(), reason };
        let mut manifest: BundleManifest = toml::from_str(text).map_err(|e| fail(e.to_string()))?;
        if manifest.plugins.is_empty() {
            return Err(fail("lists no plugins; add [[plugin]] tables with a `file`".into()));
        }
        for p in &mut manifest.plugins {
            check_relative(&p.file).map_err(|reason| fail(format!("plugin file {:?}: {reason}", p.file)))?;
            if p.name.is_empty() {
                p.name = Path::new(&p.file).file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            }
            if let Some(d) = &p.sha256
                && (d.len() != 64 || !d.bytes().all(|b| b.is_ascii_hexdigit()))
            {
                return Err(fail(format!("plugin {:?}: sha256 must be 64 hex digits, not {d:?}", p.name)));
            }
            if complete {
                let missing = [("kind", p.kind.is_none()), ("sha256", p.sha256.is_none()), ("wit_version", p.wit_version.is_none())];
                if let Some((field, _)) = missing.iter().find(|(_, m)| *m) {
                    return Err(fail(format!("plugin {:?} has no `{field}`; run `recast bundle pack` to fill it in", p.name)));
                }
            }
        }
        let mut names: Vec<&str> = manifest.plugins.iter().map(|p| p.name.as_str()).collect();
        names.sort_unstable();
        if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
            return Err(fail(format!("two plugins are named {:?}", w[0])));
        }
        let mut files: Vec<&str> = manifest.plugins.iter().map(|p| p.file.as_str()).collect();
        files.sort_unstable();
        if let Some(w) = files.windows(2).find(|w| w[0] == w[1]) {
            return Err(fail(format!("the file {:?} is listed twice", w[0])));
        }
        Ok(manifest)
    }

    /// The manifest as written into a bundle.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_default()
    }
}

/// A path inside a bundle: relative, `/`-separated, no `..`, not one of the reserved
/// names.
fn check_relative(file: &str) -> Result<(), String> {
    if file.is_empty() || file.starts_with('/') || file.contains('\\') {
        return Err("must be a relative path with `/` separators".into());
    }
    if file.split('/').any(|part| part.is_empty() || part == "." || part == "..") {
        return Err("must not contain empty, `.` or `..` parts".into());
    }
    if super::RESERVED.contains(&file) {
        return Err("is a reserved name".into());
    }
    if file.len() > 200 {
        return Err("is longer than 200 bytes".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_default_to_the_file_stem_and_must_be_unique() {
        let text = "name = \"b\"\nversion = \"1\"\n[[plugin]]\nfile = \"router/x.wasm\"\n";
        let m = BundleManifest::parse(text, Path::new("b"), false).expect("parse");
        assert_eq!(m.plugins[0].name, "x");
        assert!(BundleManifest::parse(text, Path::new("b"), true).is_err(), "incomplete accepted");
        let twice = format!("{text}[[plugin]]\nfile = \"other/x.wasm\"\n");
        assert!(BundleManifest::parse(&twice, Path::new("b"), false).is_err());
        let escape = "name = \"b\"\nversion = \"1\"\n[[plugin]]\nfile = \"../x.wasm\"\n";
        assert!(BundleManifest::parse(escape, Path::new("b"), false).is_err());
    }
}

//! The reference plugins compiled into this binary when it was built (see `build.rs`),
//! so an installed `recast` runs them without the source checkout, cargo or a network.
//! They are stored as core modules and wrapped into components on first use, by the same
//! encoder `recast plugin build` uses, so an embedded plugin and one built from the same
//! source have the same sha256.

use std::sync::OnceLock;

use crate::plugins::{Digest, PluginKind};

/// One reference plugin in the binary.
#[derive(Debug)]
pub struct EmbeddedPlugin {
    /// Package name, e.g. `topk-softmax`; what a config's `builtin = "..."` names.
    pub name: &'static str,
    /// Its kind (the `plugins/<kind>` folder it was built from).
    pub kind: PluginKind,
    /// The crate's version.
    pub version: &'static str,
    /// The crate's one-line description.
    pub description: &'static str,
    /// The core WebAssembly module cargo built.
    module: &'static [u8],
}

include!(concat!(env!("OUT_DIR"), "/embedded_plugins.rs"));

impl EmbeddedPlugin {
    /// The component's bytes, wrapped once per process.
    pub fn component(&self) -> anyhow::Result<&'static [u8]> {
        /// Per embedded plugin, its component or why it could not be made.
        type Wrapped = OnceLock<Result<Vec<u8>, String>>;
        static WRAPPED: OnceLock<Vec<Wrapped>> = OnceLock::new();
        let cells = WRAPPED.get_or_init(|| EMBEDDED.iter().map(|_| OnceLock::new()).collect());
        let index = EMBEDDED.iter().position(|p| std::ptr::eq(p, self)).unwrap_or(0);
        let wrapped = cells[index].get_or_init(|| super::rust::componentize_module(self.module).map_err(|e| format!("{e:#}")));
        wrapped.as_deref().map_err(|e| anyhow::anyhow!("the embedded plugin {} cannot be made a component: {e}", self.name))
    }

    /// The component's sha256, what lock files and bundles pin.
    pub fn digest(&self) -> anyhow::Result<Digest> {
        Ok(Digest::of(self.component()?))
    }

    /// How a loaded embedded plugin is named in logs, lock files and errors.
    pub fn label(&self) -> String {
        format!("builtin:{}@{}", self.name, self.version)
    }
}

/// Every reference plugin in this binary, by kind then name.
pub fn embedded() -> &'static [EmbeddedPlugin] {
    EMBEDDED
}

/// The embedded reference plugin `name` of `kind`, if this binary has one.
pub fn find(name: &str, kind: PluginKind) -> Option<&'static EmbeddedPlugin> {
    EMBEDDED.iter().find(|p| p.name == name && p.kind == kind)
}

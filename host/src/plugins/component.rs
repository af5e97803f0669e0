//! A compiled plugin component and what its type says about it: kind, contract
//! version, exports, imports. Nothing here runs plugin code.

use std::sync::Arc;

use wasmtime::Engine;
use wasmtime::component::Component;
use wasmtime::component::types::ComponentItem;

use super::digest::Digest;
use super::error::{FaultCause, PluginError};
use super::kind::{PluginKind, WIT_PACKAGE, WIT_VERSION, version_compatible};

/// An exported interface and its functions, as `inspect` lists them.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ExportedInterface {
    /// Full name, e.g. `recast:plugins/router@0.1.0`.
    pub name: String,
    /// Function names in the interface.
    pub functions: Vec<String>,
}

/// A compiled, type-checked plugin component, ready to instantiate any number of times.
/// Cheap to clone.
#[derive(Clone)]
pub struct PluginComponent {
    pub(crate) component: Component,
    inner: Arc<ComponentFacts>,
}

struct ComponentFacts {
    label: String,
    digest: Digest,
    kind: PluginKind,
    wit_version: String,
    exports: Vec<ExportedInterface>,
    imports: Vec<String>,
    size_bytes: usize,
}

impl PluginComponent {
    /// Where the component came from (its file, usually).
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// sha256 of the component's bytes.
    pub fn digest(&self) -> Digest {
        self.inner.digest
    }

    /// The kind, read from the exported interfaces.
    pub fn kind(&self) -> PluginKind {
        self.inner.kind
    }

    /// The `recast:plugins` version the component was built against.
    pub fn wit_version(&self) -> &str {
        &self.inner.wit_version
    }

    /// Exported interfaces with their functions.
    pub fn exports(&self) -> &[ExportedInterface] {
        &self.inner.exports
    }

    /// Imported interfaces (only `recast:plugins` ones are ever accepted).
    pub fn imports(&self) -> &[String] {
        &self.inner.imports
    }

    /// Size of the component file in bytes.
    pub fn size_bytes(&self) -> usize {
        self.inner.size_bytes
    }

    /// Read the facts off a compiled component, refusing anything that is not a
    /// plugin for this host's contract.
    pub(crate) fn describe(engine: &Engine, component: Component, label: &str, digest: Digest, size_bytes: usize) -> Result<Self, PluginError> {
        let fail = |cause| PluginError { plugin: label.to_string(), digest: Some(digest), call: "load".into(), step: None, cause };
        let ty = component.component_type();

        let mut imports = Vec::new();
        for (name, _) in ty.imports(engine) {
            imports.push(name.to_string());
            let (iface, _) = split_version(name);
            let allowed = iface.strip_prefix(WIT_PACKAGE).and_then(|rest| rest.strip_prefix('/')).is_some_and(|rest| !PluginKind::ALL.iter().any(|k| k.as_str() == rest));
            if !allowed {
                return Err(fail(FaultCause::ForbiddenImport { import: name.to_string() }));
            }
        }

        let mut exports = Vec::new();
        let mut kinds = Vec::new();
        let mut versions = Vec::new();
        for (name, item) in ty.exports(engine) {
            let functions = match &item.ty {
                ComponentItem::ComponentInstance(inst) => inst.exports(engine).filter(|(_, e)| matches!(e.ty, ComponentItem::ComponentFunc(_))).map(|(n, _)| n.to_string()).collect(),
                _ => Vec::new(),
            };
            exports.push(ExportedInterface { name: name.to_string(), functions });
            let (iface, version) = split_version(name);
            if let Some(rest) = iface.strip_prefix(WIT_PACKAGE).and_then(|r| r.strip_prefix('/')) {
                versions.push(version.unwrap_or("").to_string());
                if let Some(kind) = PluginKind::ALL.into_iter().find(|k| k.as_str() == rest) {
                    kinds.push(kind);
                }
            }
        }
        let listed = || exports.iter().map(|e| format!("`{}`", e.name)).collect::<Vec<_>>().join(", ");
        if let Some(bad) = versions.iter().find(|v| !version_compatible(v)) {
            return Err(fail(FaultCause::WrongVersion { found: if bad.is_empty() { "(unversioned)".into() } else { bad.clone() }, supported: WIT_VERSION }));
        }
        let kind = match kinds.as_slice() {
            [kind] => *kind,
            [] => {
                let exports = if exports.is_empty() { "nothing".to_string() } else { listed() };
                return Err(fail(FaultCause::NotAPlugin { exports, supported: WIT_VERSION }));
            }
            many => {
                let found = format!("it exports several kinds ({})", many.iter().map(|k| k.as_str()).collect::<Vec<_>>().join(", "));
                return Err(fail(FaultCause::WrongKind { expected: many[0], found }));
            }
        };
        let wit_version = versions.first().cloned().unwrap_or_default();
        Ok(PluginComponent { component, inner: Arc::new(ComponentFacts { label: label.to_string(), digest, kind, wit_version, exports, imports, size_bytes }) })
    }
}

/// `recast:plugins/router@0.1.0` -> (`recast:plugins/router`, Some(`0.1.0`)).
fn split_version(name: &str) -> (&str, Option<&str>) {
    match name.split_once('@') {
        Some((iface, version)) => (iface, Some(version)),
        None => (name, None),
    }
}

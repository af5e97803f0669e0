//! Files `recast plugin new` writes around a kind's source template (each kind's
//! templates live with its `Kind` implementation): manifests and the README.

use crate::plugins::PluginKind;

/// The `src/lib.rs` of a new plugin of `kind`.
pub(super) fn lib_rs(kind: PluginKind) -> &'static str {
    kind.templates().rust
}

/// The module of a new Python (`python`) or JavaScript plugin of `kind`.
pub(super) fn script(kind: PluginKind, python: bool) -> &'static str {
    let templates = kind.templates();
    if python { templates.python } else { templates.javascript }
}

/// The `pyproject.toml` (Python) or `package.json` (JavaScript) of a new plugin.
pub(super) fn script_manifest(name: &str, kind: PluginKind, python: bool) -> String {
    if python {
        format!(
            "[project]\nname = \"{name}\"\nversion = \"0.1.0\"\ndescription = \"A Recast {kind} plugin.\"\n\n# Read by `recast plugin build`.\n[tool.recast]\nkind = \"{kind}\"\nmodule = \"app\"\n"
        )
    } else {
        format!(
            "{{\n  \"name\": \"{name}\",\n  \"version\": \"0.1.0\",\n  \"description\": \"A Recast {kind} plugin.\",\n  \"type\": \"module\",\n  \"main\": \"index.js\",\n  \"recast\": {{ \"kind\": \"{kind}\" }}\n}}\n"
        )
    }
}

/// The `Cargo.toml` of a new plugin. `standalone` adds an empty `[workspace]` and a
/// release profile for crates outside any workspace.
pub(super) fn cargo_toml(name: &str, kind: PluginKind, sdk: &str, standalone: bool) -> String {
    let mut text = format!(
        r#"[package]
name = "{name}"
version = "0.1.0"
description = "A Recast {kind} plugin."
edition = "2024"

[lib]
crate-type = ["cdylib"]

[dependencies]
recast-sdk = {{ path = "{sdk}" }}
serde = {{ version = "1", features = ["derive"] }}
"#
    );
    if standalone {
        text.push_str(
            r#"
[workspace]

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
strip = "symbols"
panic = "abort"
"#,
        );
    }
    text
}

/// The README of a new plugin.
pub(super) fn readme(name: &str, kind: PluginKind) -> String {
    format!(
        "# {name}\n\nA Recast {kind} plugin.\n\n```sh\nrecast plugin build .\nrecast plugin check target/plugins/{name}.wasm\n```\n\n\
         | parameter | default | meaning |\n|---|---|---|\n| (document each field of `Params` here) | | |\n"
    )
}

//! Source templates for `recast plugin new`: one working plugin per kind.

use crate::plugins::PluginKind;

/// The `src/lib.rs` of a new plugin of `kind`.
pub(super) fn lib_rs(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Router => include_str!("templates/router.rs.tmpl"),
        PluginKind::AuxSchedule => include_str!("templates/aux-schedule.rs.tmpl"),
        PluginKind::InitScheme => include_str!("templates/init-scheme.rs.tmpl"),
        PluginKind::Sampler => include_str!("templates/sampler.rs.tmpl"),
    }
}

/// The module of a new Python (`python`) or JavaScript plugin of `kind`; `None` for
/// init schemes, which are written in Rust.
pub(super) fn script(kind: PluginKind, python: bool) -> Option<&'static str> {
    Some(match (kind, python) {
        (PluginKind::Router, true) => include_str!("templates/router.py.tmpl"),
        (PluginKind::AuxSchedule, true) => include_str!("templates/aux-schedule.py.tmpl"),
        (PluginKind::Sampler, true) => include_str!("templates/sampler.py.tmpl"),
        (PluginKind::Router, false) => include_str!("templates/router.js.tmpl"),
        (PluginKind::AuxSchedule, false) => include_str!("templates/aux-schedule.js.tmpl"),
        (PluginKind::Sampler, false) => include_str!("templates/sampler.js.tmpl"),
        (PluginKind::InitScheme, _) => return None,
    })
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

//! The four plugin kinds and how a component's exports name them.

use std::fmt;

use super::wit::types::PluginKind as WitKind;

/// The contract version this host speaks.
pub const WIT_VERSION: &str = "0.1.0";
/// The WIT package of every plugin interface.
pub const WIT_PACKAGE: &str = "recast:plugins";

/// One of the four plugin kinds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum PluginKind {
    /// Routing policy for MoE layers.
    Router,
    /// Schedule of auxiliary-loss coefficients.
    AuxSchedule,
    /// Weight-initialisation (upcycling) scheme.
    InitScheme,
    /// Data sampler choosing each batch's domain mixture.
    Sampler,
}

impl PluginKind {
    /// All kinds, in the order the docs list them.
    pub const ALL: [PluginKind; 4] = [PluginKind::Router, PluginKind::AuxSchedule, PluginKind::InitScheme, PluginKind::Sampler];

    /// The kebab-case name used in WIT, configs and the CLI.
    pub fn as_str(self) -> &'static str {
        match self {
            PluginKind::Router => "router",
            PluginKind::AuxSchedule => "aux-schedule",
            PluginKind::InitScheme => "init-scheme",
            PluginKind::Sampler => "sampler",
        }
    }

    /// The exported interface that marks a component as this kind, without version.
    pub fn interface(self) -> String {
        format!("{WIT_PACKAGE}/{}", self.as_str())
    }

    /// The WIT world a plugin of this kind targets.
    pub fn world(self) -> String {
        format!("{}-plugin", self.as_str())
    }

    pub(crate) fn from_wit(kind: WitKind) -> Self {
        match kind {
            WitKind::Router => PluginKind::Router,
            WitKind::AuxSchedule => PluginKind::AuxSchedule,
            WitKind::InitScheme => PluginKind::InitScheme,
            WitKind::Sampler => PluginKind::Sampler,
        }
    }
}

impl fmt::Display for PluginKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a component built against `found` may run on this host: same major version,
/// and for 0.x the same minor (semver's rule for pre-1.0 versions).
pub fn version_compatible(found: &str) -> bool {
    let parse = |v: &str| -> Option<(u64, u64)> {
        let mut parts = v.split('.');
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    match (parse(found), parse(WIT_VERSION)) {
        (Some((0, fmin)), Some((0, hmin))) => fmin == hmin,
        (Some((fmaj, _)), Some((hmaj, _))) => fmaj == hmaj,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert!(version_compatible("0.1.0"));
        assert!(version_compatible("0.1.7"));
        assert!(!version_compatible("0.2.0"));
        assert!(!version_compatible("1.0.0"));
        assert!(!version_compatible("garbage"));
    }
}

//! The plugin roles of a run: the kinds that steer training, each named by its run
//! config section (`[plugins.router]`, `[plugins.aux_schedule]`, `[plugins.sampler]`).
//! Derived from the kinds ([`PluginKind::run_role`]), never listed again here.

use std::fmt;

use crate::plugins::PluginKind;

/// A plugin role of a run; displays as its config section's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Role(PluginKind);

impl Role {
    /// The routing policy.
    pub const ROUTER: Role = Role(PluginKind::Router);
    /// The auxiliary-loss schedule.
    pub const AUX_SCHEDULE: Role = Role(PluginKind::AuxSchedule);
    /// The data sampler.
    pub const SAMPLER: Role = Role(PluginKind::Sampler);

    /// Every role, in checkpoint order (the kinds' order).
    pub fn all() -> impl Iterator<Item = Role> {
        PluginKind::ALL.into_iter().filter_map(Role::of)
    }

    /// The role a kind plays in training, if it plays one.
    pub fn of(kind: PluginKind) -> Option<Role> {
        kind.run_role().map(|_| Role(kind))
    }

    /// The role whose config section is `name`.
    pub fn named(name: &str) -> Option<Role> {
        Role::all().find(|r| r.as_str() == name)
    }

    /// The kind of plugin that fills this role.
    pub fn kind(self) -> PluginKind {
        self.0
    }

    /// The config section and journal name.
    pub fn as_str(self) -> &'static str {
        self.0.run_role().unwrap_or(self.0.as_str())
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::Role;

    #[test]
    fn roles_are_the_training_kinds_in_checkpoint_order() {
        let names: Vec<_> = Role::all().map(Role::as_str).collect();
        assert_eq!(names, ["router", "aux_schedule", "sampler"]);
        assert_eq!(Role::named("aux_schedule"), Some(Role::AUX_SCHEDULE));
        assert_eq!(Role::named("init_scheme"), None);
    }
}

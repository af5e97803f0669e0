//! Stages of a run: which one is in force at a step, and what changes on entering it
//! (plugin parameters, the router's specs, the journal).

use serde_json::json;

use super::slots::Role;
use super::{TrainError, Trainer};
use crate::plugins::PluginComponent;

impl Trainer {
    /// The stage in force at `step` and the step it starts at.
    pub(super) fn stage_at(&self, step: u64) -> Option<(usize, u64)> {
        let mut start = 0;
        for (i, s) in self.config.stages.iter().enumerate() {
            if step < start + s.steps {
                return Some((i, start));
            }
            start += s.steps;
        }
        None
    }

    /// Switch to stage `index`: reconfigure plugins whose params the stage changes
    /// (carrying their state, keeping the version that runs now), re-ask the router for specs at the stage's first step,
    /// and journal the change.
    pub(super) fn enter_stage(&mut self, index: usize, start: u64) -> Result<(), TrainError> {
        let stage = self.config.stages[index].clone();
        let merged = |base: Option<&(PluginComponent, String)>, over: Option<&toml::Table>| -> Result<Option<String>, TrainError> {
            let Some((_, base_params)) = base else { return Ok(None) };
            let Some(over) = over else { return Ok(Some(base_params.clone())) };
            let mut table: toml::Table = toml::from_str(base_params).map_err(|e| TrainError::Resume(format!("plugin params: {e}")))?;
            table.extend(over.clone());
            toml::to_string(&table).map(Some).map_err(|e| TrainError::Resume(format!("stage {:?} plugin params: {e}", stage.name)))
        };
        let wanted = Role::all().map(|role| Ok((role, merged(self.base_plugins.get(role), stage.plugins.get(role))?))).collect::<Result<Vec<_>, TrainError>>()?;
        let mut router_changed = false;
        for (role, params) in wanted {
            let (Some(params), Some(slot)) = (params, self.plugins.get(role)) else { continue };
            if slot.params() == params {
                continue;
            }
            let component = slot.component();
            slot.replace(&self.host, &component, &params).map_err(|source| TrainError::PluginFault { role, source })?;
            if let Some(w) = &self.watcher {
                w.set_params(role.as_str(), &params);
            }
            router_changed |= role == Role::ROUTER;
        }
        if self.step == start {
            if router_changed {
                self.initial_specs()?;
            }
            let record = json!({
                "step": self.step, "event": "stage", "index": index, "name": stage.name, "steps": stage.steps,
                "train": stage.train, "lr": stage.lr, "mixture": stage.mixture,
            });
            self.journal(&record)?;
        }
        self.stage = Some(index);
        Ok(())
    }
}

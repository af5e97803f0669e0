//! Stages of a run: which one is in force at a step, and what changes on entering it
//! (plugin parameters, the router's specs, the journal).

use serde_json::json;

use super::{Trainer, TrainError};
use crate::plugins::{AuxSchedulePlugin, PluginComponent, PluginLimits, RouterPlugin, SamplerPlugin};

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
    /// (carrying their state), re-ask the router for specs at the stage's first step,
    /// and journal the change.
    pub(super) fn enter_stage(&mut self, index: usize, start: u64) -> Result<(), TrainError> {
        let stage = self.config.stages[index].clone();
        let merged = |base: &Option<(PluginComponent, String)>, over: &Option<toml::Table>| -> Result<Option<String>, TrainError> {
            let Some((_, base_params)) = base else { return Ok(None) };
            let Some(over) = over else { return Ok(Some(base_params.clone())) };
            let mut table: toml::Table = toml::from_str(base_params).map_err(|e| TrainError::Resume(format!("plugin params: {e}")))?;
            table.extend(over.clone());
            toml::to_string(&table).map(Some).map_err(|e| TrainError::Resume(format!("stage {:?} plugin params: {e}", stage.name)))
        };
        let wanted = [
            merged(&self.base_plugins.router, &stage.plugins.router)?,
            merged(&self.base_plugins.aux_schedule, &stage.plugins.aux_schedule)?,
            merged(&self.base_plugins.sampler, &stage.plugins.sampler)?,
        ];
        let (seed, limits) = (self.config.seed, PluginLimits::default());
        let mut router_changed = false;
        for (role, params) in wanted.iter().enumerate() {
            let Some(params) = params else { continue };
            if self.live_params[role].as_ref() == Some(params) {
                continue;
            }
            let engine = &self.engine;
            match role {
                0 => {
                    if let (Some((c, _)), Some(old)) = (&self.base_plugins.router, self.plugins.router.as_mut()) {
                        let state = old.instance().save_state()?;
                        let mut new = RouterPlugin::new(engine, c, params, seed, limits.clone())?;
                        new.instance().load_state(&state)?;
                        self.plugins.router = Some(new);
                        router_changed = true;
                    }
                }
                1 => {
                    if let (Some((c, _)), Some(old)) = (&self.base_plugins.aux_schedule, self.plugins.aux.as_mut()) {
                        let state = old.instance().save_state()?;
                        let mut new = AuxSchedulePlugin::new(engine, c, params, seed, limits.clone())?;
                        new.instance().load_state(&state)?;
                        self.plugins.aux = Some(new);
                    }
                }
                _ => {
                    if let (Some((c, _)), Some(old)) = (&self.base_plugins.sampler, self.plugins.sampler.as_mut()) {
                        let state = old.instance().save_state()?;
                        let mut new = SamplerPlugin::new(engine, c, params, seed, limits.clone())?;
                        new.instance().load_state(&state)?;
                        self.plugins.sampler = Some(new);
                    }
                }
            }
            self.live_params[role] = Some(params.clone());
        }
        if self.step == start {
            if router_changed {
                self.initial_specs()?;
            }
            let record = json!({
                "step": self.step, "event": "stage", "index": index, "name": stage.name, "steps": stage.steps,
                "train": stage.train, "lr": stage.lr, "mixture": stage.mixture,
            });
            let path = self.journal.path().to_path_buf();
            self.journal.write(&record).map_err(|source| TrainError::Io { path, source })?;
        }
        self.stage = Some(index);
        Ok(())
    }
}

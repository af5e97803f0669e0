//! Hot reload on the training thread: candidates vetted by the watcher are swapped in
//! at a step boundary after the running version's state loads into them (and, for a
//! router, after it gives a valid spec for every layer); rejections are journaled and
//! the running version goes on.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;

use super::slots::Role;
use super::{TrainError, Trainer};
use crate::contract::RouterSpec;
use crate::plugins::reload::{Candidate, Rejection, ReloadEvent, ReloadWatcher, WatchedPlugin};
use crate::plugins::{PluginComponent, PluginError};

impl Trainer {
    /// Watch `plugins` (one per role, usually the run's plugin files) and swap in new
    /// versions at step boundaries from now on.
    pub fn watch(&mut self, plugins: Vec<WatchedPlugin>) -> Result<(), TrainError> {
        if plugins.is_empty() {
            return Ok(());
        }
        if !self.job.writes() {
            // In a multi-process job rank 0 watches; the others swap in what it found
            // (`apply_reloads`), at the same step.
            return Ok(());
        }
        let mut params = std::collections::BTreeMap::new();
        for role in self.plugins.roles() {
            if let Some(slot) = self.plugins.get(role) {
                params.insert(role.as_str(), slot.params().to_string());
            }
        }
        for shadow in &self.shadows {
            params.insert(shadow.role, shadow.slot.params.clone());
        }
        let lock = if self.config.require_pinned { self.config.lock_file.clone() } else { None };
        let watcher = ReloadWatcher::start(self.host.engine.clone(), plugins, params, self.host.seed, self.host.limits.clone(), lock)
            .map_err(|e| TrainError::Resume(format!("cannot watch the plugin files for hot reload: {e} (set `hot_reload = false` to run without)")))?;
        self.watcher = Some(watcher);
        Ok(())
    }

    /// Apply what the watcher found since the last step; the time it took. In a
    /// multi-process job rank 0's candidates go to every rank, which all swap them in
    /// at this step boundary.
    pub(super) fn apply_reloads(&mut self) -> Result<Duration, TrainError> {
        let events = match &self.watcher {
            Some(watcher) => watcher.poll(),
            None if self.job.is_single() => return Ok(Duration::ZERO),
            None => Vec::new(),
        };
        let events = self.agree_on_reloads(events)?;
        let clock = Instant::now();
        for event in events {
            match event {
                ReloadEvent::Rejected(r) => self.journal_rejection(&r)?,
                ReloadEvent::Candidate(c) => self.swap_in(c)?,
            }
        }
        Ok(clock.elapsed())
    }

    /// Rank 0's candidates on every rank (its rejections stay with it: only it journals).
    /// A one-process job keeps its events as they are.
    fn agree_on_reloads(&mut self, events: Vec<ReloadEvent>) -> Result<Vec<ReloadEvent>, TrainError> {
        if self.job.is_single() {
            return Ok(events);
        }
        let offered: Vec<(String, String, Vec<u8>)> = events
            .iter()
            .filter_map(|e| match e {
                ReloadEvent::Candidate(c) => Some((c.role.to_string(), c.component.label().to_string(), c.bytes.as_ref().clone())),
                ReloadEvent::Rejected(_) => None,
            })
            .collect();
        let agreed = self.job.share_from_rank0(&offered)?;
        if self.job.writes() {
            return Ok(events);
        }
        let mut candidates = Vec::new();
        for (role, label, bytes) in agreed {
            let Some(role) = Role::named(&role) else { continue };
            let component = self.host.engine.load_bytes(&label, &bytes).map_err(|source| TrainError::PluginFault { role, source })?;
            let (noticed, noticed_at) = (Instant::now(), SystemTime::now());
            candidates.push(ReloadEvent::Candidate(Candidate { role: role.as_str(), component, bytes: std::sync::Arc::new(bytes), noticed, noticed_at, vetting: Duration::ZERO }));
        }
        Ok(candidates)
    }

    fn swap_in(&mut self, candidate: Candidate) -> Result<(), TrainError> {
        if let Some(index) = self.shadows.iter().position(|s| s.role == candidate.role) {
            return self.swap_in_shadow(index, candidate);
        }
        let Some(role) = Role::all().find(|r| r.as_str() == candidate.role) else { return Ok(()) };
        let Some(slot) = self.plugins.get(role) else { return Ok(()) };
        let old = slot.component();
        if old.digest() == candidate.component.digest() {
            return Ok(());
        }
        let started = Instant::now();
        let params = slot.params().to_string();
        let state = slot.instance().save_state().map_err(|source| TrainError::PluginFault { role, source })?;
        let refuse =
            |reason: String| Rejection { role: candidate.role, label: candidate.component.label().to_string(), digest: Some(candidate.component.digest()), reason, noticed_at: candidate.noticed_at };
        if let Err(e) = slot.replace_with_state(&self.host, &candidate.component, &params, &state) {
            return self.journal_rejection(&refuse(format!("the running version's state does not load into it, or it does not configure: {e}")));
        }
        if role == Role::ROUTER {
            match self.router_specs() {
                Ok(specs) => {
                    for (layer, spec) in self.model.moe_layers_mut().zip(specs) {
                        layer.spec = spec;
                    }
                }
                Err(e) => {
                    if let Some(slot) = self.plugins.get(role) {
                        slot.replace_with_state(&self.host, &old, &params, &state).map_err(|source| TrainError::PluginFault { role, source })?;
                    }
                    return self.journal_rejection(&refuse(format!("its spec is not valid for this model: {e}")));
                }
            }
        }
        let swap = started.elapsed();
        let new = &candidate.component;
        tracing::info!(target: "reload", "step {}: swapped in the new {role} plugin {} ({}, was {}), {} bytes of state carried over, {:.0} ms after the change", self.step, new.label(), new.digest(), old.digest(), state.len(), candidate.noticed.elapsed().as_secs_f64() * 1e3);
        let record = json!({
            "step": self.step, "event": "plugin-swap", "role": role.as_str(),
            "old_sha256": old.digest().to_hex(), "new_sha256": new.digest().to_hex(), "file": new.label(),
            "state_bytes": state.len(), "noticed_unix_ms": unix_ms(candidate.noticed_at),
            "vetting_ms": ms(candidate.vetting), "swap_ms": ms(swap), "notice_to_swap_ms": ms(candidate.noticed.elapsed()),
        });
        self.journal(&record)
    }

    /// Swap a new version into shadow router `index`, carrying its state over and asking
    /// it for new specs (a shadow keeps its selection biases). A shadow that was switched
    /// off after a fault is switched on again by a version that loads.
    fn swap_in_shadow(&mut self, index: usize, candidate: Candidate) -> Result<(), TrainError> {
        let infos = self.layer_infos();
        let shadow = &mut self.shadows[index];
        let old = shadow.slot.live.instance().component().clone();
        if old.digest() == candidate.component.digest() && shadow.off.is_none() {
            return Ok(());
        }
        let started = Instant::now();
        let params = shadow.slot.params.clone();
        let refuse =
            |reason: String| Rejection { role: candidate.role, label: candidate.component.label().to_string(), digest: Some(candidate.component.digest()), reason, noticed_at: candidate.noticed_at };
        // A shadow that faulted may have no state to give: it starts afresh.
        let state = shadow.slot.live.instance().save_state().unwrap_or_default();
        let mut fresh = match super::shadows::ShadowRouter::new(shadow.role, &self.host, &candidate.component, &params, &infos) {
            Ok(fresh) => fresh,
            Err(e) => return self.journal_rejection(&refuse(format!("it does not configure or give a valid spec for every layer: {e}"))),
        };
        if !state.is_empty()
            && let Err(e) = fresh.slot.live.instance().load_state(&state)
        {
            return self.journal_rejection(&refuse(format!("the running version's state does not load into it: {e}")));
        }
        fresh.bias = std::mem::take(&mut self.shadows[index].bias);
        let role = fresh.role;
        self.shadows[index] = fresh;
        let record = json!({
            "step": self.step, "event": "plugin-swap", "role": role,
            "old_sha256": old.digest().to_hex(), "new_sha256": candidate.component.digest().to_hex(), "file": candidate.component.label(),
            "state_bytes": state.len(), "noticed_unix_ms": unix_ms(candidate.noticed_at),
            "vetting_ms": ms(candidate.vetting), "swap_ms": ms(started.elapsed()), "notice_to_swap_ms": ms(candidate.noticed.elapsed()),
        });
        self.journal(&record)
    }

    fn journal_rejection(&mut self, r: &Rejection) -> Result<(), TrainError> {
        let role = Role::all().find(|x| x.as_str() == r.role);
        let shadow = self.shadows.iter_mut().find(|s| s.role == r.role).map(|s| s.slot.live.instance().component().clone());
        let running: Option<PluginComponent> = role.and_then(|role| self.plugins.get(role)).map(|s| s.component()).or(shadow);
        let old = running.as_ref().map(|c| c.digest().to_hex());
        let digest = r.digest.map(|d| d.to_string()).unwrap_or_else(|| "unreadable".into());
        tracing::warn!(target: "reload", "step {}: rejected the new {} plugin {} ({digest}): {}; the running version {} goes on", self.step, r.role, r.label, r.reason, running.as_ref().map(|c| c.digest().to_string()).unwrap_or_default());
        let record = json!({
            "step": self.step, "event": "plugin-rejected", "role": r.role, "old_sha256": old,
            "new_sha256": r.digest.map(|d| d.to_hex()), "file": r.label, "reason": r.reason, "noticed_unix_ms": unix_ms(r.noticed_at),
        });
        self.journal(&record)
    }

    /// The router's spec for every MoE layer, all or nothing.
    pub(super) fn router_specs(&mut self) -> Result<Vec<RouterSpec>, PluginError> {
        let infos = self.layer_infos();
        let Some(router) = self.plugins.router.as_mut() else { return Ok(Vec::new()) };
        infos.iter().map(|info| router.live.spec(info)).collect()
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

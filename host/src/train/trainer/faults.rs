//! The fault policy: a plugin that traps, runs out of fuel, memory or time, or returns
//! invalid output either stops the run with a checkpoint (`stop`) or is replaced by the
//! last version that completed a step, with the state it had when the step began
//! (`keep-last-good`). Either way the journal says what happened.

use serde_json::json;

use super::slots::Role;
use super::{TrainError, Trainer};
use crate::plugins::PluginError;
use crate::train::config::FaultPolicy;

impl Trainer {
    /// Whether the run's policy lets it go on after a fault.
    pub(super) fn fault_is_recoverable(&self) -> bool {
        self.config.on_plugin_fault == FaultPolicy::KeepLastGood
    }

    /// Apply the fault policy to `source`, raised by `role`'s plugin. `Ok` means the
    /// last good version runs again and the failed work may be retried; `retried` says
    /// the fault came back after such a restore, which stops the run.
    pub(super) fn handle_fault(&mut self, role: Role, source: PluginError, retried: bool) -> Result<(), TrainError> {
        if retried || !self.fault_is_recoverable() {
            return Err(self.stop_on_fault(role, source, retried));
        }
        let step = source.step.unwrap_or(self.step);
        let Some(slot) = self.plugins.get(role) else { return Err(TrainError::PluginFault { role, source }) };
        let faulty = slot.component();
        let restored = match slot.restore_good(&self.host) {
            Ok(c) => c,
            Err(again) => {
                tracing::error!("the last good {role} plugin cannot be restored: {again}");
                return Err(self.stop_on_fault(role, source, true));
            }
        };
        if let Some(w) = &self.watcher
            && let Some(slot) = self.plugins.get(role)
        {
            w.set_params(role.as_str(), slot.params());
        }
        if role == Role::ROUTER && restored.digest() != faulty.digest() {
            self.initial_specs()?;
        }
        tracing::warn!("step {step}: {source}; keep-last-good: the {role} plugin runs {} ({}) again from the state of the step's start", restored.digest(), restored.label());
        self.journal(&json!({
            "step": step, "event": "plugin-fault", "role": role.as_str(), "sha256": faulty.digest().to_hex(), "call": source.call,
            "cause": source.cause.to_string(), "code": source.code(), "action": "keep-last-good", "restored_sha256": restored.digest().to_hex(),
        }))
    }

    /// Journal the fault, write a checkpoint, and say why the run stops.
    pub(super) fn stop_on_fault(&mut self, role: Role, source: PluginError, retried: bool) -> TrainError {
        let why = if retried { "on_plugin_fault = \"keep-last-good\", but the fault came back after restoring the last good version".to_string() } else { "on_plugin_fault = \"stop\"".to_string() };
        let digest = self.plugins.get(role).map(|s| s.component().digest().to_hex()).unwrap_or_default();
        // The step the fault happened in, as the error names it; the checkpoint may hold
        // a later one (a fault in `on-step` comes after the step's update).
        let record = json!({
            "step": source.step.unwrap_or(self.step), "event": "plugin-fault", "role": role.as_str(), "sha256": digest, "call": source.call,
            "cause": source.cause.to_string(), "code": source.code(), "action": "stop", "checkpoint_step": self.step,
        });
        if let Err(e) = self.journal(&record) {
            tracing::error!("{e}");
        }
        match self.save_checkpoint() {
            Ok(checkpoint) => TrainError::PluginStop { role, source, why, checkpoint, step: self.step, run: self.run_dir.clone() },
            Err(e) => {
                tracing::error!("the run stopped on a plugin fault and its checkpoint failed: {e}");
                TrainError::PluginFault { role, source }
            }
        }
    }
}

//! Plugins in checkpoints: each role's digest and `save-state` bytes are written with
//! the weights, and on resume the same code gets its state back, or, with
//! `--allow-plugin-change`, new code does (journaled).

use std::path::Path;

use serde_json::json;

use super::{TrainError, Trainer};
use crate::train::checkpoint::{PluginSnapshot, TrainState};

impl Trainer {
    /// Every live plugin's digest and state, for a checkpoint.
    pub(super) fn snapshots(&mut self) -> Result<Vec<PluginSnapshot>, TrainError> {
        let mut out = Vec::new();
        for role in self.plugins.roles() {
            let Some(slot) = self.plugins.get(role) else { continue };
            let state = slot.checkpoint_state()?;
            let c = slot.component();
            out.push(PluginSnapshot { role: role.as_str().into(), label: c.label().into(), digest: c.digest().to_hex(), state: hex::encode(state) });
        }
        Ok(out)
    }

    /// Give the plugins their checkpointed states, refusing changed code unless
    /// `allow_change`.
    pub(super) fn restore(&mut self, state: &TrainState, dir: &Path, allow_change: bool) -> Result<(), TrainError> {
        let state_file = dir.join("state.json");
        let roles = self.plugins.roles();
        let recorded: Vec<&str> = state.plugins.iter().map(|s| s.role.as_str()).collect();
        let configured: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        if recorded != configured {
            return Err(TrainError::Resume(format!("{}: the checkpoint used plugins {recorded:?}, the config now names {configured:?}", dir.display())));
        }
        let mut changes = Vec::new();
        for (snap, role) in state.plugins.iter().zip(&roles) {
            let Some(slot) = self.plugins.get(*role) else { continue };
            let now = slot.component();
            if now.digest().to_hex() != snap.digest {
                changes.push((*role, snap, now));
            }
        }
        if !changes.is_empty() && !allow_change {
            let lines = changes
                .iter()
                .map(|(role, snap, now)| format!("  {role}: was {} (sha256 {}), now {} (sha256 {})", snap.label, snap.digest, now.label(), now.digest().to_hex()))
                .collect::<Vec<_>>()
                .join("\n");
            return Err(TrainError::PluginChanged { checkpoint: dir.to_path_buf(), changes: lines });
        }
        for (snap, role) in state.plugins.iter().zip(&roles) {
            let bytes = hex::decode(&snap.state).map_err(|e| TrainError::Resume(format!("{}: {} state is not hex: {e}", state_file.display(), snap.role)))?;
            let Some(slot) = self.plugins.get(*role) else { continue };
            slot.instance().load_state(&bytes).map_err(|e| TrainError::Resume(format!("{}: the {role} plugin cannot load its checkpointed state: {e}", dir.display())))?;
        }
        for (role, snap, now) in &changes {
            let record = json!({
                "step": state.step, "event": "plugin-change-on-resume", "role": role.as_str(),
                "old_sha256": snap.digest, "new_sha256": now.digest().to_hex(), "old_file": snap.label, "new_file": now.label(),
            });
            tracing::warn!("resuming with a changed {role} plugin: {} -> {} ({})", &snap.digest[..12], now.digest().short(), now.label());
            self.journal(&record)?;
        }
        for (layer, saved) in self.model.moe_layers_mut().zip(&state.layers) {
            layer.spec = saved.spec;
            layer.selection_bias = saved.selection_bias.clone();
        }
        self.progress = state.domains.clone();
        self.last_stats = state.last_stats.clone();
        Ok(())
    }
}

//! The host checks its own training state every step: the language-model loss, the
//! auxiliary losses and the gradient norm must be finite before the update is applied.
//! On a non-finite value the step is abandoned, the plugins are rewound to the step's
//! start, a checkpoint of the last good step is written and the run stops, naming the
//! step and what most likely caused it.

use std::path::PathBuf;

use serde_json::json;

use super::slots::Role;
use super::{TrainError, Trainer};

/// The numbers of one step that must be finite before its update.
#[derive(Clone, Copy, Debug)]
pub(super) struct StepHealth {
    pub step: u64,
    /// Mean next-token loss over the step's micro-batches.
    pub lm_loss: f64,
    /// Sum of the MoE layers' weighted load-balancing and z losses.
    pub aux_loss: f64,
    pub grad_norm: f64,
}

/// A non-finite value found in a step, before the update.
#[derive(Debug)]
pub struct NonFinite {
    pub step: u64,
    /// What was not finite: `loss`, `aux loss` or `gradient norm`.
    pub what: &'static str,
    pub value: f64,
    /// The plugin, coefficient or setting most likely responsible.
    pub suspect: String,
}

/// Which of a step's numbers was not finite; each points at its own likely cause.
#[derive(Clone, Copy)]
enum Quantity {
    AuxLoss,
    Loss,
    GradNorm,
}

impl Quantity {
    fn name(self) -> &'static str {
        match self {
            Quantity::AuxLoss => "aux loss",
            Quantity::Loss => "loss",
            Quantity::GradNorm => "gradient norm",
        }
    }
}

impl StepHealth {
    /// The first non-finite value, if any, in the order that names its cause best: the
    /// aux loss before the total that contains it, the losses before the gradients.
    fn first_bad(&self) -> Option<(Quantity, f64)> {
        [(Quantity::AuxLoss, self.aux_loss), (Quantity::Loss, self.lm_loss), (Quantity::GradNorm, self.grad_norm)].into_iter().find(|(_, v)| !v.is_finite())
    }
}

impl Trainer {
    /// `Err` when the step's numbers are not all finite.
    pub(super) fn check_health(&mut self, health: StepHealth) -> Result<(), NonFinite> {
        let Some((what, value)) = health.first_bad() else { return Ok(()) };
        let suspect = match what {
            Quantity::AuxLoss => self.aux_suspect(),
            Quantity::Loss => self.router_suspect(),
            Quantity::GradNorm => format!("{}, or optimizer.lr = {} is too large for these weights", self.aux_suspect(), self.config.optimizer.lr),
        };
        Err(NonFinite { step: health.step, what: what.name(), value, suspect })
    }

    /// The aux-loss coefficients in force and where they came from.
    fn aux_suspect(&mut self) -> String {
        let (lb, z) = self.model.moe_layers().fold((0f32, 0f32), |(lb, z), l| (lb.max(l.coefficients.load_balance), z.max(l.coefficients.z_loss)));
        let source = match self.plugins.get(Role::AUX_SCHEDULE) {
            Some(slot) => {
                let c = slot.component();
                format!("the aux_schedule plugin {} ({})", c.label(), c.digest().short())
            }
            None => "the checkpoint's aux coefficients".to_string(),
        };
        format!("{source}: load-balance coefficient up to {lb}, z-loss coefficient up to {z}")
    }

    /// The routing in force and where it came from.
    fn router_suspect(&mut self) -> String {
        let scaling = self.model.moe_layers().map(|l| l.spec.scaling).fold(0f32, f32::max);
        let routing = match self.plugins.get(Role::ROUTER) {
            Some(slot) => {
                let c = slot.component();
                format!("the router plugin {} ({}) with gate scaling up to {scaling}", c.label(), c.digest().short())
            }
            None if self.model.moe_layers().next().is_some() => format!("the default routing (gate scaling up to {scaling})"),
            None => "the weights".to_string(),
        };
        format!("{routing}, or optimizer.lr = {}", self.config.optimizer.lr)
    }

    /// Abandon the step: rewind the plugins to its start, journal the fault, write a
    /// checkpoint of the last good step, and say why the run stops.
    pub(super) fn stop_non_finite(&mut self, bad: NonFinite) -> TrainError {
        for role in self.plugins.roles() {
            if let Some(slot) = self.plugins.get(role)
                && let Err(e) = slot.rewind()
            {
                tracing::error!("cannot rewind the {role} plugin to the start of step {}: {e}", bad.step);
            }
        }
        let record = json!({ "step": bad.step, "event": "non-finite", "what": bad.what, "value": bad.value.to_string(), "suspect": bad.suspect, "checkpoint_step": self.step });
        if let Err(e) = self.journal(&record) {
            tracing::error!("{e}");
        }
        let checkpoint: Option<PathBuf> = match self.save_checkpoint() {
            Ok(dir) => Some(dir),
            Err(e) => {
                tracing::error!("the run stopped on a non-finite {} and its checkpoint failed: {e}", bad.what);
                None
            }
        };
        TrainError::NonFinite { step: bad.step, what: bad.what, value: bad.value, suspect: bad.suspect, checkpoint, good_step: self.step, run: self.run_dir.clone() }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{PluginSet, TrainError, Trainer};
    use crate::moe::spec::AuxCoefficients;
    use crate::plugins::PluginEngine;
    use crate::train::config::RunConfig;

    const CONFIG: &str = "seed = 1\n[model.init]\narchitecture = \"mixtral\"\nhidden_size = 16\nnum_layers = 1\nnum_heads = 2\nintermediate_size = 16\nnum_experts = 2\ntop_k = 1\n[[data.domains]]\nname = \"a\"\nbuiltin = \"arithmetic\"\n[train]\nsteps = 5\nbatch_size = 1\nseq_len = 8\n";

    fn weights(trainer: &Trainer) -> Vec<(String, Vec<f32>)> {
        trainer.params().iter().map(|(n, t)| (n.clone(), t.flatten_all().and_then(|t| t.to_vec1()).expect("f32 weights"))).collect()
    }

    #[test]
    fn a_non_finite_aux_loss_stops_before_the_update_with_a_checkpoint_of_the_last_good_step() {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = dir.path().join("run");
        let engine = Arc::new(PluginEngine::new().expect("engine"));
        let config = RunConfig::parse(CONFIG, &dir.path().join("c.toml")).expect("config");
        let mut trainer = Trainer::start(config.clone(), &run, &PluginSet::default(), engine.clone()).expect("start");
        trainer.train_step().expect("a good step");
        let good = weights(&trainer);
        for layer in trainer.model.moe_layers_mut() {
            layer.coefficients = AuxCoefficients { load_balance: f32::INFINITY, z_loss: 0.0 };
        }
        let err = trainer.train_step().expect_err("an infinite aux loss was trained on");
        match &err {
            TrainError::NonFinite { step: 1, what: "aux loss", checkpoint: Some(_), good_step: 1, suspect, .. } => {
                assert!(suspect.contains("load-balance coefficient up to inf"), "{suspect}");
            }
            other => panic!("expected a non-finite stop at step 1, got {other}"),
        }
        let message = err.to_string();
        assert!(message.contains("step 1: the aux loss is") && message.contains("holds step 1") && message.contains("--resume"), "{message}");
        assert_eq!(weights(&trainer), good, "the bad step changed the weights");
        let journal = std::fs::read_to_string(run.join("journal.jsonl")).expect("journal");
        assert!(journal.contains("\"non-finite\"") && journal.contains("\"checkpoint_step\":1"), "{journal}");
        let resumed = Trainer::resume(config, &run, &PluginSet::default(), engine, false).expect("resume");
        assert_eq!(resumed.step, 1);
        assert_eq!(weights(&resumed), good);
    }
}

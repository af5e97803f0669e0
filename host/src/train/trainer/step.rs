//! One optimizer step, and what a plugin fault in it leads to: every plugin call before
//! the update can be retried after the fault policy restored the plugin; the router's
//! `on-step` after the update is retried alone.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use serde_json::json;

use super::health::StepHealth;
use super::shadows::ShadowTally;
use super::slots::Role;
use super::{StepReport, TrainError, Trainer, tensor_err};
use crate::contract::LogLevel;
use crate::contract::{DomainStats, Mixture, SampleRequest, TokenLogits};
use crate::data::batch::{Batch, training_batch};
use crate::model::loss::chunked_next_token_loss;
use crate::model::training_pass::TrainingPass;
use crate::moe::spec::LayerStats;
use crate::moe::stats::merge;
use crate::plugins::PluginError;
use crate::plugins::router::validate_bias_sums;
use crate::train::config::{ParamGroup, Stage};
use crate::train::optimizer::Gradients;
use crate::train::routing_trace::MicroBatchTrace;
use crate::train::schedule::learning_rate;

/// A step computed up to the optimizer update.
struct StepWork {
    tokens: usize,
    seq_len: usize,
    batch_domains: Vec<usize>,
    domain_loss: Vec<(f64, usize)>,
    stats: Vec<LayerStats>,
    total_loss: f64,
    lr: f64,
    grad_norm: f64,
    plugin_time: Duration,
    route_time: Duration,
    /// Time in collectives (0 in a one-process job).
    comm_time: Duration,
    trace: Vec<MicroBatchTrace>,
    shadow: Vec<Vec<Option<ShadowTally>>>,
    shadow_time: Duration,
}

/// What the micro-batches of one step add up: gradients, losses, statistics and the
/// time spent in per-token routing.
struct Accumulated {
    grads: Gradients,
    domain_loss: Vec<(f64, usize)>,
    stats: Vec<LayerStats>,
    total_loss: f64,
    aux_total: f64,
    route_time: Duration,
    /// The step's routing trace, when the step is traced.
    trace: Vec<MicroBatchTrace>,
    /// Per shadow router, per MoE layer: what it would have done.
    shadow: Vec<Vec<Option<ShadowTally>>>,
    /// Time the shadow routers took.
    shadow_time: Duration,
}

/// Logs (at debug level, `-v`) the memory resident after a phase of step `step`: which
/// phase raises a run's peak.
fn log_rss(step: u64, phase: &str) {
    if tracing::enabled!(tracing::Level::DEBUG) {
        let mib = crate::memory::rss_bytes().map(|b| b / (1 << 20));
        let (live, peak) = crate::memory::live_bytes();
        tracing::debug!(step = step + 1, phase, rss_mib = ?mib, live_mib = live >> 20, peak_live_mib = peak >> 20, "resident memory");
    }
}

fn fault(role: Role) -> impl FnOnce(PluginError) -> TrainError {
    move |source| TrainError::PluginFault { role, source }
}

impl Trainer {
    /// One optimizer step. Plugin versions that changed on disk are swapped in first,
    /// at the step boundary.
    pub fn train_step(&mut self) -> Result<StepReport, TrainError> {
        let started = Instant::now();
        let step = self.step;
        crate::memory::enter_steady_state();
        log_rss(step, "start");
        let reload_time = self.apply_reloads()?;
        if let Some((index, start)) = self.stage_at(step)
            && self.stage != Some(index)
        {
            self.enter_stage(index, start)?;
        }
        let mut retried = false;
        let mut work = loop {
            match self.snapshot_plugins().and_then(|()| self.compute_step(step)) {
                Err(TrainError::PluginFault { role, source }) => {
                    self.handle_fault(role, source, retried)?;
                    retried = true;
                }
                other => break other?,
            }
        };
        let mut retried = false;
        loop {
            match self.router_feedback(step, &work.stats) {
                Ok(time) => {
                    work.plugin_time += time;
                    break;
                }
                Err(TrainError::PluginFault { role, source }) => {
                    if retried || !self.fault_is_recoverable() {
                        // The update is done: count the step, then stop with it saved.
                        self.finish_step(work, started, reload_time)?;
                        return Err(self.stop_on_fault(role, source, retried));
                    }
                    self.handle_fault(role, source, false)?;
                    retried = true;
                }
                Err(e) => return Err(e),
            }
        }
        for role in self.plugins.roles() {
            if let Some(slot) = self.plugins.get(role) {
                slot.completed_step();
            }
        }
        self.finish_step(work, started, reload_time)
    }

    /// Remember every plugin's state at the start of the step, to fall back to.
    fn snapshot_plugins(&mut self) -> Result<(), TrainError> {
        for role in self.plugins.roles() {
            if let Some(slot) = self.plugins.get(role) {
                slot.snapshot().map_err(fault(role))?;
            }
        }
        Ok(())
    }

    /// Everything of step `step` up to and including the optimizer update: the sampler's
    /// mixture, the aux schedule's coefficients, forward and backward of each
    /// micro-batch (with per-token routing), the update. A plugin fault returns before
    /// anything is changed, so the step can be retried.
    fn compute_step(&mut self, step: u64) -> Result<StepWork, TrainError> {
        let stage = self.stage_at(step).map(|(i, _)| self.config.stages[i].clone());
        let t = self.config.train.clone();
        let sequences = t.batch_size * t.grad_accum;

        let clock = Instant::now();
        let mixture = self.step_mixture(step, stage.as_ref(), sequences)?;
        self.apply_aux_coefficients(step)?;
        let steering_time = clock.elapsed();

        let batch = training_batch(&self.domains, &mixture, self.config.seed, step, sequences, t.seq_len);
        let mut acc = Accumulated {
            grads: BTreeMap::new(),
            domain_loss: vec![(0f64, 0usize); self.domains.len()],
            stats: Vec::new(),
            total_loss: 0.0,
            aux_total: 0.0,
            route_time: Duration::ZERO,
            trace: Vec::new(),
            shadow: vec![Vec::new(); self.shadows.len()],
            shadow_time: Duration::ZERO,
        };
        for micro in 0..t.grad_accum {
            self.micro_batch(step, &batch, micro, &mut acc)?;
        }
        let comm_time = self.reduce_over_replicas(&mut acc)?;
        let (lr, grad_norm, gather_time) = self.update(step, stage.as_ref(), &acc)?;
        Ok(StepWork {
            tokens: sequences * t.seq_len,
            seq_len: t.seq_len,
            batch_domains: batch.domains,
            domain_loss: acc.domain_loss,
            stats: acc.stats,
            total_loss: acc.total_loss,
            lr,
            grad_norm,
            plugin_time: steering_time + acc.route_time,
            route_time: acc.route_time,
            comm_time: comm_time + gather_time,
            trace: acc.trace,
            shadow: acc.shadow,
            shadow_time: acc.shadow_time,
        })
    }

    /// What the ranks computed, summed: averaged gradients and losses, summed
    /// per-domain losses, merged routing statistics. Nothing in a one-process job.
    fn reduce_over_replicas(&mut self, acc: &mut Accumulated) -> Result<Duration, TrainError> {
        if self.job.is_single() {
            return Ok(Duration::ZERO);
        }
        // The experts' all-to-alls ran inside the forward and backward passes.
        let mut spent = self.job.take_dispatch_time();
        spent += self.job.average_gradients(&mut acc.grads)?;
        let replicas = self.job.layout.world as f64;
        let mut sums = vec![acc.total_loss, acc.aux_total];
        sums.extend(acc.domain_loss.iter().flat_map(|&(sum, n)| [sum, n as f64]));
        spent += self.job.sum(&mut sums)?;
        (acc.total_loss, acc.aux_total) = (sums[0] / replicas, sums[1] / replicas);
        for (d, pair) in acc.domain_loss.iter_mut().zip(sums[2..].chunks_exact(2)) {
            *d = (pair[0], pair[1] as usize);
        }
        spent += self.job.merge_stats(&mut acc.stats)?;
        Ok(spent)
    }

    /// The step's domain mixture: the stage's fixed one, else the sampler's, else uniform.
    fn step_mixture(&mut self, step: u64, stage: Option<&Stage>, sequences: usize) -> Result<Mixture, TrainError> {
        if let Some(weights) = stage.and_then(|s| s.mixture.clone()) {
            return Ok(Mixture::Weights(weights));
        }
        let Some(sampler) = self.plugins.sampler.as_mut() else { return Ok(Mixture::Weights(vec![1.0; self.domains.len()])) };
        let domains = self
            .progress
            .iter()
            .zip(&self.domains)
            .enumerate()
            .map(|(i, (p, d))| DomainStats {
                domain: i as u32,
                name: p.name.clone(),
                tokens_available: d.train.len() as u64,
                tokens_seen: p.tokens_seen,
                train_loss: p.train_loss,
                valid_loss: p.valid_loss,
                reference_loss: None,
            })
            .collect();
        sampler.live.next(&SampleRequest { step, batch_sequences: sequences as u32, domains }).map_err(fault(Role::SAMPLER))
    }

    /// The aux schedule's coefficients for `step`, set on every MoE layer.
    fn apply_aux_coefficients(&mut self, step: u64) -> Result<(), TrainError> {
        let Some(aux) = self.plugins.aux.as_mut() else { return Ok(()) };
        let moe_layers: Vec<u32> = self.model.moe_layers().map(|l| l.layer as u32).collect();
        let coefficients = aux.live.coefficients(step, &moe_layers, &self.last_stats).map_err(fault(Role::AUX_SCHEDULE))?;
        for layer in self.model.moe_layers_mut() {
            if let Some(c) = coefficients.iter().find(|c| c.layer as usize == layer.layer) {
                layer.coefficients = crate::moe::spec::AuxCoefficients { load_balance: c.load_balance, z_loss: c.z_loss };
            }
        }
        Ok(())
    }

    /// Forward and backward of this rank's share of micro-batch `micro` of `batch`
    /// (all of it in a one-process job), added into `acc`.
    fn micro_batch(&mut self, step: u64, batch: &Batch, micro: usize, acc: &mut Accumulated) -> Result<(), TrainError> {
        let t = &self.config.train;
        let (seq_len, grad_accum) = (t.seq_len, t.grad_accum);
        let share = self.job.layout.batch_share(t.batch_size);
        let (first, batch_size) = (micro * t.batch_size + share.start, share.len());
        let tokens = &batch.tokens[first * seq_len..(first + batch_size) * seq_len];
        let traced = self.config.trace.routing.as_ref().filter(|t| t.traces_step(step + 1)).cloned();
        let record = traced.is_some() || self.shadows.iter().any(|s| s.off.is_none());
        let pass = self.forward_with_router(step, tokens, batch_size, acc, record)?;
        if let Some(trace) = traced {
            let layers = pass.routing.iter().filter(|r| trace.traces_layer(r.layer)).cloned().collect();
            acc.trace.push(MicroBatchTrace { sequences: batch_size, tokens: tokens.to_vec(), layers });
        }
        if record {
            self.shadows_observe(step, &pass.logits, &pass.routing, &mut acc.shadow, &mut acc.shadow_time)?;
        }
        // The logits are made a chunk at a time and not kept (`[tokens, vocab]` would be
        // the largest activation of a real vocabulary).
        let chunked = chunked_next_token_loss(&pass.hidden, &self.model.head, tokens, batch_size).map_err(tensor_err(step))?;
        if let Some(aux) = &pass.aux_loss {
            let aux = aux.to_dtype(chunked.loss.dtype()).and_then(|a| a.to_dtype(DType::F32)).and_then(|a| a.to_scalar::<f32>()).map_err(tensor_err(step))?;
            acc.aux_total += aux as f64 / grad_accum as f64;
        }
        log_rss(step, "forward and loss");
        let (moe_stats, scale) = (pass.moe_stats.clone(), 1.0 / grad_accum as f64);
        let scaled = (&chunked.loss * scale).map_err(tensor_err(step))?;
        // This micro-batch's gradients, summed where a parameter has two uses (tied
        // embeddings), then added to the step's.
        let mut grads: BTreeMap<String, Tensor> = BTreeMap::new();
        let params = &self.params;
        pass.backward(&self.model, &scaled, scale, |store| {
            for (name, p) in params.iter() {
                if let Some(g) = store.get(p) {
                    let sum = match grads.remove(name) {
                        Some(sum) => sum.add(g)?,
                        None => g.clone(),
                    };
                    grads.insert(name.clone(), sum);
                }
            }
            Ok(())
        })?;
        log_rss(step, "backward");
        for (name, g) in grads {
            let sum = match acc.grads.remove(&name) {
                Some(sum) => sum.add(&g).map_err(tensor_err(step))?,
                None => g,
            };
            acc.grads.insert(name, sum);
        }
        for (s, chunk) in chunked.nll.chunks(seq_len - 1).enumerate() {
            let d = batch.domains[first + s];
            acc.domain_loss[d].0 += chunk.iter().map(|&x| x as f64).sum::<f64>();
            acc.domain_loss[d].1 += chunk.len();
        }
        acc.total_loss += chunked.value / grad_accum as f64;
        if acc.stats.is_empty() {
            acc.stats = moe_stats;
        } else {
            for (into, other) in acc.stats.iter_mut().zip(&moe_stats) {
                merge(into, other);
            }
        }
        Ok(())
    }

    /// The model's forward pass over one micro-batch; when a layer's spec asks for
    /// per-token routing, the router plugin's `route` chooses its experts (its time is
    /// added to `acc.route_time`).
    fn forward_with_router(&mut self, step: u64, tokens: &[u32], batch_size: usize, acc: &mut Accumulated, record: bool) -> Result<TrainingPass, TrainError> {
        let recompute = self.config.compute.recompute;
        let (pass, route_time) = self.with_token_router(step, |model, route| model.training_pass_recorded(tokens, batch_size, route, recompute, record))?;
        acc.route_time += route_time;
        Ok(pass)
    }

    /// Run `pass` on the model with the router plugin's `route` as the per-token hook
    /// when a layer's spec asks for per-token routing (none otherwise); a fault in
    /// `route` is the router's fault. Also returns the time spent in `route`.
    pub(super) fn with_token_router<T>(
        &mut self,
        step: u64,
        pass: impl FnOnce(&crate::model::transformer::Transformer, Option<&mut crate::moe::layer::TokenRouter<'_>>) -> Result<T, crate::model::error::ModelError>,
    ) -> Result<(T, Duration), TrainError> {
        let infos = self.layer_infos();
        let Some(router) = self.plugins.router.as_mut().filter(|_| self.model.moe_layers().any(|l| l.spec.per_token_route)) else {
            return Ok((pass(&self.model, None)?, Duration::ZERO));
        };
        router.live.instance().set_step(Some(step));
        let mut route_fault = None;
        let mut route_time = Duration::ZERO;
        let mut hook = |layer: usize, logits: &TokenLogits| -> Result<_, String> {
            let start = Instant::now();
            let info = infos.iter().find(|i| i.layer as usize == layer).ok_or_else(|| format!("no MoE layer {layer}"))?;
            let r = router.live.route(info, logits).map_err(|e| {
                let message = e.to_string();
                route_fault = Some(e);
                message
            });
            route_time += start.elapsed();
            r
        };
        let out = pass(&self.model, Some(&mut hook));
        if let Some(source) = route_fault {
            return Err(TrainError::PluginFault { role: Role::ROUTER, source });
        }
        Ok((out?, route_time))
    }

    /// The optimizer update from the accumulated gradients, after the health check;
    /// returns the learning rate, the gradient norm before clipping and the time spent
    /// exchanging updated weights (ZeRO-1).
    fn update(&mut self, step: u64, stage: Option<&Stage>, acc: &Accumulated) -> Result<(f64, f64, Duration), TrainError> {
        let peak = stage.and_then(|s| s.lr).unwrap_or(self.config.optimizer.lr);
        let lr = learning_rate(peak, &self.config.schedule, step, self.config.train.steps);
        let groups: Vec<ParamGroup> = stage.map(|s| s.train.clone()).unwrap_or_default();
        let trains = |name: &str| groups.is_empty() || groups.iter().any(|g| g.contains(name));
        let grad_norm = self.job.grad_norm(&self.params, &acc.grads)?;
        log_rss(step, "gradient norm");
        if let Err(bad) = self.check_health(StepHealth { step, lm_loss: acc.total_loss, aux_loss: acc.aux_total, grad_norm }) {
            return Err(self.stop_non_finite(bad));
        }
        let clip = self.config.optimizer.clip_grad_norm;
        let scale = if clip > 0.0 && grad_norm > clip { clip / grad_norm } else { 1.0 };
        // Under ZeRO-1 this replica updates its share of the parameters, then every
        // replica gets the others' shares.
        let job = &self.job;
        let mine = |name: &str| trains(name) && job.updates(name);
        self.optimizer.step(&self.params, &acc.grads, lr, scale, &mine).map_err(tensor_err(step))?;
        log_rss(step, "update");
        let gathered = self.job.gather_params(&self.params)?;
        Ok((lr, grad_norm, gathered))
    }

    /// The router's `on-step` after the update of step `step`; its changes apply from
    /// the next step.
    fn router_feedback(&mut self, step: u64, stats: &[LayerStats]) -> Result<Duration, TrainError> {
        let clock = Instant::now();
        let infos = self.layer_infos();
        if let Some(router) = self.plugins.router.as_mut() {
            let updates = router.live.on_step(step, stats, &infos).map_err(fault(Role::ROUTER))?;
            let layers: Vec<(u32, &[f32])> = self.model.moe_layers().map(|l| (l.layer as u32, l.selection_bias.as_slice())).collect();
            validate_bias_sums(&updates, |layer| layers.iter().find(|(l, _)| *l == layer).map(|(_, b)| *b))
                .map_err(|v| TrainError::PluginFault { role: Role::ROUTER, source: router.live.invalid_update(v) })?;
            for update in updates {
                if let Some(layer) = self.model.moe_layers_mut().find(|l| l.layer == update.layer as usize) {
                    if let Some(delta) = &update.bias_delta {
                        for (b, d) in layer.selection_bias.iter_mut().zip(delta) {
                            *b += d;
                        }
                    }
                    if let Some(spec) = update.spec {
                        layer.spec = spec;
                    }
                }
            }
        }
        Ok(clock.elapsed())
    }

    /// Count the step as done: domain progress, the step counter, the metrics line.
    fn finish_step(&mut self, work: StepWork, started: Instant, reload_time: Duration) -> Result<StepReport, TrainError> {
        let StepWork { tokens, seq_len, batch_domains, domain_loss, stats, total_loss, lr, grad_norm, plugin_time, route_time, comm_time, trace, shadow, shadow_time } = work;
        for (d, (sum, n)) in domain_loss.iter().enumerate() {
            let p = &mut self.progress[d];
            p.tokens_seen += (batch_domains.iter().filter(|&&x| x == d).count() * seq_len) as u64;
            p.train_loss = (*n > 0).then(|| (*sum / *n as f64) as f32);
        }
        self.last_stats = stats;
        self.step += 1;
        if !trace.is_empty() {
            self.write_trace(trace)?;
        }
        let shadow_clock = Instant::now();
        let shadow = self.shadows_on_step(self.step - 1, shadow)?;
        let shadow_time = shadow_time + shadow_clock.elapsed();
        let report = StepReport { step: self.step, loss: total_loss as f32, lr, grad_norm, tokens, elapsed: started.elapsed(), plugin_time, route_time, reload_time, comm_time };
        self.log_step(&report, &domain_loss, shadow, shadow_time)?;
        Ok(report)
    }

    fn log_step(&mut self, r: &StepReport, domain_loss: &[(f64, usize)], shadow: serde_json::Map<String, serde_json::Value>, shadow_time: Duration) -> Result<(), TrainError> {
        let domains: serde_json::Map<String, serde_json::Value> =
            self.progress.iter().zip(domain_loss).filter(|(_, (_, n))| *n > 0).map(|(p, (s, n))| (p.name.clone(), json!(*s / *n as f64))).collect();
        let layers: Vec<serde_json::Value> = self
            .last_stats
            .iter()
            .map(|s| {
                let mut v = serde_json::to_value(s).unwrap_or_default();
                if let Some(layer) = self.model.moe_layers().find(|l| l.layer == s.layer as usize) {
                    v["load_balance_coef"] = json!(layer.coefficients.load_balance);
                    v["z_loss_coef"] = json!(layer.coefficients.z_loss);
                }
                v
            })
            .collect();
        let plugin_metrics = self.drain_plugin_output(r.step)?;
        let unix_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let record = json!({
            "step": r.step, "loss": r.loss, "domain_loss": domains, "lr": r.lr, "grad_norm": r.grad_norm,
            "tokens": r.tokens, "tokens_per_s": r.tokens as f64 / r.elapsed.as_secs_f64().max(1e-9),
            "step_ms": r.elapsed.as_secs_f64() * 1e3, "plugin_ms": r.plugin_time.as_secs_f64() * 1e3, "route_ms": r.route_time.as_secs_f64() * 1e3,
            "reload_ms": r.reload_time.as_secs_f64() * 1e3, "comm_ms": r.comm_time.as_secs_f64() * 1e3, "layout": self.job.describe(),
            "optimizer_state_elements": super::data_parallel::Job::moment_elements(&self.optimizer),
            "parameter_elements": self.params.iter().map(|(_, p)| p.elem_count()).sum::<usize>(),
            "peak_rss_mib": crate::memory::peak_rss_bytes().map(|b| b as f64 / (1 << 20) as f64), "minor_faults": crate::memory::minor_faults(),
            "bf16_kernel": crate::cpu::matmul::bf16_chosen(),
            "unix_ms": unix_ms, "layers": layers,
        });
        let mut record = record;
        if !plugin_metrics.is_empty() {
            record["plugin_metrics"] = serde_json::Value::Object(plugin_metrics);
        }
        if !shadow.is_empty() {
            record["shadow_routers"] = serde_json::Value::Object(shadow);
            record["shadow_ms"] = json!(shadow_time.as_secs_f64() * 1e3);
        }
        let path = self.metrics.path().to_path_buf();
        self.metrics.write(&record).map_err(|source| TrainError::Io { path, source })
    }
}

impl Trainer {
    /// What the plugins said during the step: their log lines at info and above go to
    /// the journal (a plugin journals its own decisions that way), the metrics they
    /// recorded come back by role, for the step's metrics line.
    fn drain_plugin_output(&mut self, step: u64) -> Result<serde_json::Map<String, serde_json::Value>, TrainError> {
        let mut metrics = serde_json::Map::new();
        let mut lines = Vec::new();
        for role in self.plugins.roles() {
            let Some(slot) = self.plugins.get(role) else { continue };
            let instance = slot.instance();
            let recorded: serde_json::Map<String, serde_json::Value> = instance.drain_metrics().into_iter().map(|(name, value)| (name, json!(value))).collect();
            if !recorded.is_empty() {
                metrics.insert(role.as_str().to_string(), serde_json::Value::Object(recorded));
            }
            for log in instance.drain_logs() {
                let level = match log.level {
                    LogLevel::Info => "info",
                    LogLevel::Warn => "warn",
                    LogLevel::Error => "error",
                    LogLevel::Debug | LogLevel::Trace => continue,
                };
                lines.push(json!({ "step": step, "event": "plugin-log", "role": role.as_str(), "level": level, "message": log.message }));
            }
        }
        for line in &lines {
            self.journal(line)?;
        }
        Ok(metrics)
    }
}

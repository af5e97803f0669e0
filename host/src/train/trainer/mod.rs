//! The training loop. Each step: the sampler plugin picks the domain mixture, the host
//! fills the batch from (seed, step), the aux-schedule plugin gives per-layer loss
//! weights, the router plugin's specs drive every MoE layer, and after the update the
//! router's `on-step` sees the layer statistics (its changes apply from the next step).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use candle_core::{DType, Tensor};
use serde_json::json;

use super::checkpoint::{self, DomainProgress, LayerRouting, PluginSnapshot, TrainState};
use super::config::{ParamGroup, RunConfig};
use super::metrics::MetricsLog;
use super::optimizer::{AdamW, Gradients};
use super::schedule::learning_rate;
use super::wit_json::{spec_from_json, spec_to_json, stats_from_json, stats_to_json};
use crate::data::batch::{training_batch, validation_windows};
use crate::data::domain::Domain;
use crate::data::tokenizer::Tokenizer;
use crate::model::config::ModelConfig;
use crate::model::init::{InitOptions, random_params};
use crate::model::loss::next_token_nll;
use crate::model::params::ParamStore;
use crate::model::transformer::Transformer;
use crate::moe::spec::LayerStats;
use crate::moe::stats::merge;
use crate::plugins::router::{LayerInfo, TokenLogits};
use crate::plugins::sampler::{DomainStats, Mixture, SampleRequest};
use crate::plugins::{AuxSchedulePlugin, PluginComponent, PluginEngine, PluginError, PluginLimits, RouterPlugin, SamplerPlugin};

mod stages;

/// The built-in domains are one fixed corpus, the same for every run and seed, so runs
/// (and the steps of a recipe) are evaluated on the same text.
const BUILTIN_DATA_SEED: u64 = 0;

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    #[error(transparent)]
    Model(#[from] crate::model::error::ModelError),
    #[error(transparent)]
    Data(#[from] crate::data::error::DataError),
    #[error(transparent)]
    Checkpoint(#[from] checkpoint::CheckpointError),
    #[error("tensor computation failed at step {step}: {source}")]
    Tensor { step: u64, source: candle_core::Error },
    #[error("{0}")]
    Resume(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("step {step}: the loss is {loss} (diverged); lower optimizer.lr or raise clip_grad_norm")]
    Diverged { step: u64, loss: f32 },
}

/// The plugin components a run uses, with their parameters (TOML text).
#[derive(Clone, Default)]
pub struct PluginSet {
    pub router: Option<(PluginComponent, String)>,
    pub aux_schedule: Option<(PluginComponent, String)>,
    pub sampler: Option<(PluginComponent, String)>,
}

struct LivePlugins {
    router: Option<RouterPlugin>,
    aux: Option<AuxSchedulePlugin>,
    sampler: Option<SamplerPlugin>,
}

/// The run's two logs.
struct Logs {
    metrics: MetricsLog,
    journal: MetricsLog,
}

impl Logs {
    /// Open both, keeping records up to step `keep_through`.
    fn open(run_dir: &Path, keep_through: u64) -> Result<Self, TrainError> {
        let open = |name: &str| MetricsLog::open(&run_dir.join(name), Some(keep_through)).map_err(|source| TrainError::Io { path: run_dir.join(name), source });
        Ok(Logs { metrics: open("metrics.jsonl")?, journal: open("journal.jsonl")? })
    }
}

/// What one step did, for progress display and tests.
#[derive(Clone, Debug)]
pub struct StepReport {
    pub step: u64,
    pub loss: f32,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens: usize,
    pub elapsed: Duration,
    pub plugin_time: Duration,
    /// Of `plugin_time`, the per-token `route` calls (the escape hatch's overhead).
    pub route_time: Duration,
}

/// A run in progress.
pub struct Trainer {
    pub config: RunConfig,
    pub run_dir: PathBuf,
    pub model_config: ModelConfig,
    params: ParamStore,
    model: Transformer,
    optimizer: AdamW,
    domains: Vec<Domain>,
    progress: Vec<DomainProgress>,
    plugins: LivePlugins,
    last_stats: Vec<LayerStats>,
    /// Optimizer steps completed.
    pub step: u64,
    metrics: MetricsLog,
    journal: MetricsLog,
    engine: Arc<PluginEngine>,
    /// The components and the run config's params; stages override the params.
    base_plugins: PluginSet,
    /// Params each live plugin was configured with (TOML text), by role.
    live_params: [Option<String>; 3],
    /// Index of the stage in force, once entered.
    stage: Option<usize>,
}

fn tensor_err(step: u64) -> impl FnOnce(candle_core::Error) -> TrainError {
    move |source| TrainError::Tensor { step, source }
}

impl Trainer {
    /// Start a new run in `run_dir`.
    pub fn start(config: RunConfig, run_dir: &Path, plugins: &PluginSet, engine: Arc<PluginEngine>) -> Result<Self, TrainError> {
        let tokenizer = Tokenizer::from_spec(&config.tokenizer)?;
        let (model_config, base) = match (&config.model.path, &config.model.init) {
            (Some(path), _) => {
                let ckpt = crate::model::checkpoint::read(path, DType::F32)?;
                (ckpt.config, ckpt.params)
            }
            (None, Some(init)) => {
                let mc = init.model_config(tokenizer.vocab_size());
                let params = random_params(&mc, InitOptions { std: init.std, seed: config.seed, dtype: DType::F32 })?;
                (mc, params)
            }
            (None, None) => return Err(TrainError::Resume("[model] needs `path` or `init`".into())),
        };
        if model_config.vocab_size < tokenizer.vocab_size() {
            return Err(TrainError::Resume(format!("the model's vocabulary ({}) is smaller than the tokenizer's ({})", model_config.vocab_size, tokenizer.vocab_size())));
        }
        std::fs::create_dir_all(run_dir).map_err(|source| TrainError::Io { path: run_dir.into(), source })?;
        let config_text = toml::to_string(&config).map_err(|e| TrainError::Resume(format!("cannot record the config: {e}")))?;
        let config_path = run_dir.join("config.toml");
        crate::atomic_file::write(&config_path, config_text.as_bytes()).map_err(|source| TrainError::Io { path: config_path, source })?;
        let params = base.trainable()?;
        let optimizer = AdamW::new(config.optimizer.clone(), &params).map_err(tensor_err(0))?;
        let logs = Logs::open(run_dir, 0)?;
        let mut trainer = Self::assemble(config, run_dir, model_config, params, optimizer, plugins, engine, &tokenizer, logs)?;
        trainer.initial_specs()?;
        Ok(trainer)
    }

    /// Resume the run in `run_dir` from its newest checkpoint. `plugins` must be the
    /// same code the checkpoint recorded (same sha256).
    pub fn resume(config: RunConfig, run_dir: &Path, plugins: &PluginSet, engine: Arc<PluginEngine>) -> Result<Self, TrainError> {
        let dirs = checkpoint::list(run_dir)?;
        let dir = dirs.last().ok_or_else(|| TrainError::Resume(format!("{}: no checkpoint to resume from", run_dir.display())))?;
        let loaded = checkpoint::load(dir)?;
        let tokenizer = Tokenizer::from_spec(&config.tokenizer)?;
        let mut store = ParamStore::new();
        for (name, t) in &loaded.params {
            store.insert(name.clone(), t.clone(), Some(&dir.join("model.safetensors")));
        }
        let params = store.trainable()?;
        let mut optimizer = AdamW::new(config.optimizer.clone(), &params).map_err(tensor_err(loaded.state.step))?;
        optimizer.steps = loaded.state.step;
        optimizer.moments = loaded.moments;
        let logs = Logs::open(run_dir, loaded.state.step)?;
        let state = loaded.state;
        let mut trainer = Self::assemble(config, run_dir, state.model_config.clone(), params, optimizer, plugins, engine, &tokenizer, logs)?;
        trainer.step = state.step;
        trainer.restore(&state, dir)?;
        Ok(trainer)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(config: RunConfig, run_dir: &Path, model_config: ModelConfig, params: ParamStore, optimizer: AdamW, plugins: &PluginSet, engine: Arc<PluginEngine>, tokenizer: &Tokenizer, logs: Logs) -> Result<Self, TrainError> {
        let model = Transformer::new(&model_config, &params, &run_dir.display().to_string())?;
        let mut domains = Vec::new();
        for d in &config.data.domains {
            let domain = match (&d.builtin, &d.shards) {
                (Some(which), _) => Domain::builtin(&d.name, which, tokenizer, BUILTIN_DATA_SEED)?,
                (None, Some(dir)) => Domain::from_shards(&d.name, dir, tokenizer)?,
                (None, None) => return Err(TrainError::Resume(format!("domain {:?} has no source", d.name))),
            };
            domain.check_length(config.train.seq_len)?;
            domains.push(domain);
        }
        let progress = domains.iter().map(|d| DomainProgress { name: d.name.clone(), tokens_seen: 0, train_loss: None, valid_loss: None }).collect();
        let limits = PluginLimits::default();
        let seed = config.seed;
        let live = LivePlugins {
            router: plugins.router.as_ref().map(|(c, p)| RouterPlugin::new(&engine, c, p, seed, limits.clone())).transpose()?,
            aux: plugins.aux_schedule.as_ref().map(|(c, p)| AuxSchedulePlugin::new(&engine, c, p, seed, limits.clone())).transpose()?,
            sampler: plugins.sampler.as_ref().map(|(c, p)| SamplerPlugin::new(&engine, c, p, seed, limits.clone())).transpose()?,
        };
        let live_params = [plugins.router.as_ref().map(|p| p.1.clone()), plugins.aux_schedule.as_ref().map(|p| p.1.clone()), plugins.sampler.as_ref().map(|p| p.1.clone())];
        Ok(Self {
            config,
            run_dir: run_dir.into(),
            model_config,
            params,
            model,
            optimizer,
            domains,
            progress,
            plugins: live,
            last_stats: vec![],
            step: 0,
            metrics: logs.metrics,
            journal: logs.journal,
            engine,
            base_plugins: plugins.clone(),
            live_params,
            stage: None,
        })
    }

    fn layer_infos(&self) -> Vec<LayerInfo> {
        let tokens = (self.config.train.batch_size * self.config.train.seq_len) as u32;
        self.model
            .moe_layers()
            .map(|l| LayerInfo {
                layer: l.layer as u32,
                num_layers: self.model_config.num_layers as u32,
                hidden: self.model_config.hidden_size as u32,
                num_experts: l.experts.len() as u32,
                expert_intermediate: l.experts.iter().map(|e| e.width() as u32).collect(),
                shared_experts: l.shared.len() as u32,
                tokens_per_batch: tokens,
            })
            .collect()
    }

    fn initial_specs(&mut self) -> Result<(), TrainError> {
        let infos = self.layer_infos();
        if let Some(router) = self.plugins.router.as_mut() {
            for (layer, info) in self.model.moe_layers_mut().zip(&infos) {
                layer.spec = router.spec(info)?;
            }
        }
        Ok(())
    }

    fn snapshots(&mut self) -> Result<Vec<PluginSnapshot>, TrainError> {
        let mut out = Vec::new();
        let p = &mut self.plugins;
        let mut snap = |role: &str, inst: &mut crate::plugins::PluginInstance| -> Result<(), TrainError> {
            let state = inst.save_state()?;
            let c = inst.component();
            out.push(PluginSnapshot { role: role.into(), label: c.label().into(), digest: c.digest().to_hex(), state: hex::encode(state) });
            Ok(())
        };
        if let Some(r) = p.router.as_mut() {
            snap("router", r.instance())?;
        }
        if let Some(a) = p.aux.as_mut() {
            snap("aux_schedule", a.instance())?;
        }
        if let Some(s) = p.sampler.as_mut() {
            snap("sampler", s.instance())?;
        }
        Ok(out)
    }

    fn restore(&mut self, state: &TrainState, dir: &Path) -> Result<(), TrainError> {
        let mut live: Vec<(&str, &mut crate::plugins::PluginInstance)> = Vec::new();
        let p = &mut self.plugins;
        if let Some(r) = p.router.as_mut() {
            live.push(("router", r.instance()));
        }
        if let Some(a) = p.aux.as_mut() {
            live.push(("aux_schedule", a.instance()));
        }
        if let Some(s) = p.sampler.as_mut() {
            live.push(("sampler", s.instance()));
        }
        let recorded: Vec<&str> = state.plugins.iter().map(|s| s.role.as_str()).collect();
        let configured: Vec<&str> = live.iter().map(|(r, _)| *r).collect();
        if recorded != configured {
            return Err(TrainError::Resume(format!("{}: the checkpoint used plugins {recorded:?}, the config now names {configured:?}", dir.display())));
        }
        for (snap, (_, inst)) in state.plugins.iter().zip(live) {
            let digest = inst.component().digest().to_hex();
            if digest != snap.digest {
                return Err(TrainError::Resume(format!(
                    "{}: the {} plugin changed since the checkpoint: it was {} (sha256 {}), now {} (sha256 {})",
                    dir.display(),
                    snap.role,
                    snap.label,
                    snap.digest,
                    inst.component().label(),
                    digest
                )));
            }
            let bytes = hex::decode(&snap.state).map_err(|e| TrainError::Resume(format!("{}: {} state is not hex: {e}", dir.join("state.json").display(), snap.role)))?;
            inst.load_state(&bytes)?;
        }
        for (layer, saved) in self.model.moe_layers_mut().zip(&state.layers) {
            layer.spec = spec_from_json(&saved.spec).map_err(|e| TrainError::Resume(format!("{}: layer {}: {e}", dir.join("state.json").display(), saved.layer)))?;
            layer.selection_bias = saved.selection_bias.clone();
        }
        self.progress = state.domains.clone();
        self.last_stats = state.last_stats.iter().map(stats_from_json).collect::<Result<_, _>>().map_err(|e| TrainError::Resume(format!("{}: {e}", dir.join("state.json").display())))?;
        Ok(())
    }

    /// Write a checkpoint of the current state.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf, TrainError> {
        let plugins = self.snapshots()?;
        let state = TrainState {
            step: self.step,
            config_toml: toml::to_string(&self.config).map_err(|e| TrainError::Resume(format!("cannot record the config: {e}")))?,
            model_config: self.model_config.clone(),
            plugins,
            layers: self.model.moe_layers().map(|l| LayerRouting { layer: l.layer, spec: spec_to_json(&l.spec), selection_bias: l.selection_bias.clone() }).collect(),
            domains: self.progress.clone(),
            last_stats: self.last_stats.iter().map(stats_to_json).collect(),
        };
        let params: BTreeMap<String, Tensor> = self.params.iter().map(|(n, t)| (n.clone(), t.detach())).collect();
        Ok(checkpoint::save(&self.run_dir, &params, &self.optimizer.moments, &state, self.config.train.keep_checkpoints)?)
    }

    /// One optimizer step.
    pub fn train_step(&mut self) -> Result<StepReport, TrainError> {
        let started = Instant::now();
        let step = self.step;
        let current = self.stage_at(step);
        if let Some((index, start)) = current
            && self.stage != Some(index)
        {
            self.enter_stage(index, start)?;
        }
        let stage = current.map(|(i, _)| self.config.stages[i].clone());
        let t = self.config.train.clone();
        let sequences = t.batch_size * t.grad_accum;
        let mut plugin_time = Duration::ZERO;

        let clock = Instant::now();
        let mixture = match (stage.as_ref().and_then(|s| s.mixture.clone()), self.plugins.sampler.as_mut()) {
            (Some(weights), _) => Mixture::Weights(weights),
            (None, Some(s)) => {
                let request = SampleRequest {
                    step,
                    batch_sequences: sequences as u32,
                    domains: self
                        .progress
                        .iter()
                        .zip(&self.domains)
                        .enumerate()
                        .map(|(i, (p, d))| DomainStats { domain: i as u32, name: p.name.clone(), tokens_available: d.train.len() as u64, tokens_seen: p.tokens_seen, train_loss: p.train_loss, valid_loss: p.valid_loss, reference_loss: None })
                        .collect(),
                };
                s.next(&request)?
            }
            (None, None) => Mixture::Weights(vec![1.0; self.domains.len()]),
        };
        if let Some(aux) = self.plugins.aux.as_mut() {
            let moe_layers: Vec<u32> = self.model.moe_layers().map(|l| l.layer as u32).collect();
            let coefficients = aux.coefficients(step, &moe_layers, &self.last_stats)?;
            for layer in self.model.moe_layers_mut() {
                if let Some(c) = coefficients.iter().find(|c| c.layer as usize == layer.layer) {
                    layer.coefficients = crate::moe::spec::AuxCoefficients { load_balance: c.load_balance, z_loss: c.z_loss };
                }
            }
        }
        plugin_time += clock.elapsed();

        let batch = training_batch(&self.domains, &mixture, self.config.seed, step, sequences, t.seq_len);
        let per_micro = t.batch_size * t.seq_len;
        let mut grads: Gradients = BTreeMap::new();
        let mut domain_loss = vec![(0f64, 0usize); self.domains.len()];
        let mut stats: Vec<LayerStats> = Vec::new();
        let mut total_loss = 0f64;
        let mut route_total = Duration::ZERO;
        for micro in 0..t.grad_accum {
            let tokens = &batch.tokens[micro * per_micro..(micro + 1) * per_micro];
            let infos = self.layer_infos();
            let mut route_time = Duration::ZERO;
            let out = match self.plugins.router.as_mut().filter(|_| self.model.moe_layers().any(|l| l.spec.per_token_route)) {
                Some(router) => {
                    let mut hook = |layer: usize, logits: &TokenLogits| -> Result<_, String> {
                        let start = Instant::now();
                        let info = infos.iter().find(|i| i.layer as usize == layer).ok_or_else(|| format!("no MoE layer {layer}"))?;
                        let r = router.route(info, logits).map_err(|e| e.to_string());
                        route_time += start.elapsed();
                        r
                    };
                    let out = self.model.forward_routed(tokens, t.batch_size, Some(&mut hook))?;
                    plugin_time += route_time;
                    route_total += route_time;
                    out
                }
                None => self.model.forward(tokens, t.batch_size)?,
            };
            let nll = next_token_nll(&out.logits, tokens, t.batch_size).map_err(tensor_err(step))?;
            let ce = nll.mean_all().map_err(tensor_err(step))?;
            let loss = match &out.aux_loss {
                Some(aux) => ce.add(&aux.to_dtype(ce.dtype()).map_err(tensor_err(step))?).map_err(tensor_err(step))?,
                None => ce.clone(),
            };
            let scaled = (loss / t.grad_accum as f64).map_err(tensor_err(step))?;
            let store = scaled.backward().map_err(tensor_err(step))?;
            for (name, p) in self.params.iter() {
                if let Some(g) = store.get(p) {
                    let sum = match grads.remove(name) {
                        Some(acc) => acc.add(g).map_err(tensor_err(step))?,
                        None => g.clone(),
                    };
                    grads.insert(name.clone(), sum);
                }
            }
            let values: Vec<f32> = nll.to_dtype(DType::F32).and_then(|n| n.to_vec1()).map_err(tensor_err(step))?;
            let per_seq = t.seq_len - 1;
            for (s, chunk) in values.chunks(per_seq).enumerate() {
                let d = batch.domains[micro * t.batch_size + s];
                domain_loss[d].0 += chunk.iter().map(|&x| x as f64).sum::<f64>();
                domain_loss[d].1 += chunk.len();
            }
            total_loss += ce.to_dtype(DType::F32).and_then(|c| c.to_scalar::<f32>()).map_err(tensor_err(step))? as f64 / t.grad_accum as f64;
            if stats.is_empty() {
                stats = out.moe_stats;
            } else {
                for (into, other) in stats.iter_mut().zip(&out.moe_stats) {
                    merge(into, other);
                }
            }
        }
        if !total_loss.is_finite() {
            return Err(TrainError::Diverged { step, loss: total_loss as f32 });
        }

        let peak = stage.as_ref().and_then(|s| s.lr).unwrap_or(self.config.optimizer.lr);
        let lr = learning_rate(peak, &self.config.schedule, step, t.steps);
        let groups: Vec<ParamGroup> = stage.as_ref().map(|s| s.train.clone()).unwrap_or_default();
        let trains = |name: &str| groups.is_empty() || groups.iter().any(|g| g.contains(name));
        let grad_norm = AdamW::grad_norm(&grads).map_err(tensor_err(step))?;
        let clip = self.config.optimizer.clip_grad_norm;
        let scale = if clip > 0.0 && grad_norm > clip { clip / grad_norm } else { 1.0 };
        self.optimizer.step(&self.params, &grads, lr, scale, &trains).map_err(tensor_err(step))?;

        let clock = Instant::now();
        let infos = self.layer_infos();
        if let Some(router) = self.plugins.router.as_mut() {
            let updates = router.on_step(step, &stats, &infos)?;
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
        plugin_time += clock.elapsed();

        for (d, (sum, n)) in domain_loss.iter().enumerate() {
            let p = &mut self.progress[d];
            p.tokens_seen += (batch.domains.iter().filter(|&&x| x == d).count() * t.seq_len) as u64;
            p.train_loss = (*n > 0).then(|| (*sum / *n as f64) as f32);
        }
        self.last_stats = stats;
        self.step += 1;
        let report = StepReport { step: self.step, loss: total_loss as f32, lr, grad_norm, tokens: sequences * t.seq_len, elapsed: started.elapsed(), plugin_time, route_time: route_total };
        self.log_step(&report, &domain_loss)?;
        Ok(report)
    }

    fn log_step(&mut self, r: &StepReport, domain_loss: &[(f64, usize)]) -> Result<(), TrainError> {
        let domains: serde_json::Map<String, serde_json::Value> =
            self.progress.iter().zip(domain_loss).filter(|(_, (_, n))| *n > 0).map(|(p, (s, n))| (p.name.clone(), json!(*s / *n as f64))).collect();
        let layers: Vec<serde_json::Value> = self
            .last_stats
            .iter()
            .map(|s| {
                let mut v = stats_to_json(s);
                if let Some(layer) = self.model.moe_layers().find(|l| l.layer == s.layer as usize) {
                    v["load_balance_coef"] = json!(layer.coefficients.load_balance);
                    v["z_loss_coef"] = json!(layer.coefficients.z_loss);
                }
                v
            })
            .collect();
        let record = json!({
            "step": r.step, "loss": r.loss, "domain_loss": domains, "lr": r.lr, "grad_norm": r.grad_norm,
            "tokens": r.tokens, "tokens_per_s": r.tokens as f64 / r.elapsed.as_secs_f64().max(1e-9),
            "step_ms": r.elapsed.as_secs_f64() * 1e3, "plugin_ms": r.plugin_time.as_secs_f64() * 1e3, "route_ms": r.route_time.as_secs_f64() * 1e3, "layers": layers,
        });
        let path = self.metrics.path().to_path_buf();
        self.metrics.write(&record).map_err(|source| TrainError::Io { path, source })
    }

    /// Mean next-token loss on every domain's validation split; recorded in the
    /// metrics and handed to the sampler from the next step.
    pub fn evaluate(&mut self) -> Result<Vec<(String, f32)>, TrainError> {
        let t = &self.config.train;
        let mut out = Vec::new();
        for (d, domain) in self.domains.iter().enumerate() {
            let tokens = validation_windows(domain, t.eval_sequences, t.seq_len);
            let (mut sum, mut n) = (0f64, 0usize);
            for chunk in tokens.chunks(t.batch_size * t.seq_len) {
                let batch = chunk.len() / t.seq_len;
                let logits = self.model.forward(chunk, batch)?.logits.detach();
                let nll: Vec<f32> = next_token_nll(&logits, chunk, batch).and_then(|x| x.to_dtype(DType::F32)?.to_vec1()).map_err(tensor_err(self.step))?;
                sum += nll.iter().map(|&x| x as f64).sum::<f64>();
                n += nll.len();
            }
            let loss = (sum / n.max(1) as f64) as f32;
            self.progress[d].valid_loss = Some(loss);
            out.push((domain.name.clone(), loss));
        }
        let losses: serde_json::Map<String, serde_json::Value> = out.iter().map(|(n, l)| (n.clone(), json!(l))).collect();
        let path = self.metrics.path().to_path_buf();
        self.metrics.write(&json!({ "step": self.step, "eval": losses })).map_err(|source| TrainError::Io { path, source })?;
        Ok(out)
    }

    /// The weights, for export.
    pub fn params(&self) -> &ParamStore {
        &self.params
    }
}

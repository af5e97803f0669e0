//! The training loop. Each step: the sampler plugin picks the domain mixture, the host
//! fills the batch from (seed, step), the aux-schedule plugin gives per-layer loss
//! weights, the router plugin's specs drive every MoE layer, and after the update the
//! router's `on-step` sees the layer statistics (its changes apply from the next step).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use candle_core::DType;
use serde_json::json;

use super::checkpoint::{self, DomainProgress, LayerRouting, TrainState};
use super::config::RunConfig;
use super::metrics::MetricsLog;
use super::optimizer::AdamW;
use crate::contract::LayerInfo;
use crate::data::batch::validation_windows;
use crate::data::domain::Domain;
use crate::data::tokenizer::Tokenizer;
use crate::model::config::ModelConfig;
use crate::model::init::{InitOptions, random_params};
use crate::model::loss::next_token_nll;
use crate::model::params::ParamStore;
use crate::model::transformer::Transformer;
use crate::moe::spec::LayerStats;
use crate::plugins::{PluginEngine, PluginError, PluginLimits};

mod data_parallel;
mod faults;
mod health;
mod plugin_state;
mod reload;
mod replay;
mod shadows;
mod slots;
mod stages;
mod step;
mod zero;

pub use replay::{LayerReplay, ReplayReport, TokenDifference};
pub use shadows::SHADOW_ROLES;
use slots::{LivePlugins, PluginHost};
pub use slots::{PluginSet, Role};

/// The built-in domains are one fixed corpus, the same for every run and seed, so runs
/// (and the steps of a recipe) are evaluated on the same text.
const BUILTIN_DATA_SEED: u64 = 0;

/// Why a run stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// Joining the job, its layout, or a collective failed.
    #[error("distributed training: {0}")]
    Distributed(String),
    /// A plugin failed during a step; the fault policy decides what follows.
    #[error("the {role} plugin failed: {source}")]
    PluginFault { role: Role, source: PluginError },
    /// A plugin fault stopped the run (`on_plugin_fault = "stop"`, or a fault that
    /// the last good version repeated); the checkpoint holds everything up to it.
    #[error("the {role} plugin failed: {source}\nthe run stopped ({why}); {checkpoint} holds step {step}; fix the plugin, then continue with `recast train --resume {run}`", checkpoint = checkpoint.display(), run = run.display())]
    PluginStop { role: Role, source: PluginError, why: String, checkpoint: PathBuf, step: u64, run: PathBuf },
    /// Plugins differ from the ones the checkpoint recorded.
    #[error("{checkpoint}: plugins changed since this checkpoint:\n{changes}\nresume with --allow-plugin-change to run the new code with the saved plugin state", checkpoint = checkpoint.display())]
    PluginChanged { checkpoint: PathBuf, changes: String },
    #[error(transparent)]
    Pin(#[from] crate::plugins::lock::PinError),
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
    /// The `[compute]` section asks for a matmul path this machine cannot run.
    #[error("[compute]")]
    Compute(#[from] crate::cpu::matmul::MatmulError),
    /// The `[compute] device` cannot be opened in this build or on this machine.
    #[error("[compute] device")]
    Device(#[from] crate::model::compute_device::DeviceError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A shadow router could not start (once running, a failing shadow is switched off).
    #[error("[[plugins.shadow_router]] {role}: {source}")]
    ShadowFault { role: &'static str, source: PluginError },
    /// The routing trace could not be written or read.
    #[error(transparent)]
    Trace(#[from] crate::train::routing_trace::TraceError),
    /// A loss or the gradient norm was not finite; the step was not applied.
    #[error(
        "step {step}: the {what} is {value} (not finite); most likely cause: {suspect}\nthe step was not applied and the run stopped; {}",
        match checkpoint { Some(c) => format!("{} holds step {good_step}; fix the cause, then continue with `recast train --resume {}`", c.display(), run.display()), None => "no checkpoint could be written".to_string() }
    )]
    NonFinite { step: u64, what: &'static str, value: f64, suspect: String, checkpoint: Option<PathBuf>, good_step: u64, run: PathBuf },
}

/// The run's two logs.
struct Logs {
    metrics: MetricsLog,
    journal: MetricsLog,
}

impl Logs {
    /// Open both, keeping records up to step `keep_through`; a rank that does not
    /// `write` (only rank 0 of a job does) gets logs that write nothing.
    fn open(run_dir: &Path, keep_through: u64, write: bool) -> Result<Self, TrainError> {
        let open = |name: &str| {
            let path = run_dir.join(name);
            if !write {
                return Ok(MetricsLog::discard(&path));
            }
            MetricsLog::open(&path, Some(keep_through)).map_err(|source| TrainError::Io { path, source })
        };
        let mut metrics = open("metrics.jsonl")?;
        if write {
            let tb = run_dir.join("tb");
            metrics = metrics.with_tensorboard(&tb).map_err(|source| TrainError::Io { path: tb, source })?;
        }
        Ok(Logs { metrics, journal: open("journal.jsonl")? })
    }
}

/// Whether a trainer writes its run folder.
#[derive(Clone, Copy)]
enum Writes {
    /// As the job says: rank 0 (the only rank without a launcher) writes.
    Job,
    /// Nothing: a run reopened to be looked at (`recast replay`).
    Nothing,
}

impl Writes {
    fn resolve(self, job: &data_parallel::Job) -> bool {
        matches!(self, Writes::Job) && job.writes()
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
    /// Time spent at this step's boundary swapping in reloaded plugins.
    pub reload_time: Duration,
    /// Time in collectives between the data-parallel replicas (0 in one process).
    pub comm_time: Duration,
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
    host: PluginHost,
    /// The components and the run config's params; stages override the params.
    base_plugins: PluginSet,
    /// Index of the stage in force, once entered.
    stage: Option<usize>,
    /// Hot reload of changed plugins, once [`Trainer::watch`] started it.
    watcher: Option<crate::plugins::reload::ReloadWatcher>,
    /// The job's processes (one without a launcher) and this one's place among them.
    job: data_parallel::Job,
    /// Router plugins that route beside the live one without steering training.
    shadows: Vec<shadows::ShadowRouter>,
}

/// Refuse, before building anything, a model whose training state (f32 weights,
/// gradients and two AdamW moments: 16 bytes a weight) cannot fit in this machine's
/// memory, or whose positions are fewer than `train.seq_len`.
fn fits_training(model: &ModelConfig, config: &RunConfig) -> Result<(), TrainError> {
    let request = crate::model::error::ModelError::Request;
    if config.train.seq_len > model.max_position_embeddings {
        return Err(request(format!("train.seq_len = {} is longer than the model's max_position_embeddings ({})", config.train.seq_len, model.max_position_embeddings)).into());
    }
    let weights = model.parameter_count();
    crate::memory::ensure_fits(&format!("training a model of {weights} weights"), weights * 16).map_err(|reason| request(format!("{reason}; choose a smaller [model]")).into())
}

/// Refuse a tokenizer other than the one `recorded` (by `where`) names by content.
fn same_tokenizer(recorded: Option<&str>, tokenizer: &Tokenizer, source: &str) -> Result<(), TrainError> {
    match recorded {
        Some(recorded) if recorded != tokenizer.identity() => Err(TrainError::Resume(format!(
            "the tokenizer {} is {} (sha256 of its file), but {source} records {recorded}: a different tokenizer would give the data and the model other token ids",
            tokenizer.spec(),
            tokenizer.identity()
        ))),
        _ => Ok(()),
    }
}

fn tensor_err(step: u64) -> impl FnOnce(candle_core::Error) -> TrainError {
    move |source| TrainError::Tensor { step, source }
}

impl Trainer {
    /// Start a new run in `run_dir`.
    pub fn start(config: RunConfig, run_dir: &Path, plugins: &PluginSet, engine: Arc<PluginEngine>) -> Result<Self, TrainError> {
        Self::start_opened(config, run_dir, plugins, engine, Writes::Job)
    }

    /// [`Trainer::start`], writing the run folder as `writes` says.
    fn start_opened(mut config: RunConfig, run_dir: &Path, plugins: &PluginSet, engine: Arc<PluginEngine>, writes: Writes) -> Result<Self, TrainError> {
        let job = data_parallel::Job::join(&config)?;
        let writes = writes.resolve(&job);
        let tokenizer = Tokenizer::from_spec(&config.tokenizer)?;
        same_tokenizer(config.tokenizer_sha256.as_deref(), &tokenizer, "the config's tokenizer_sha256")?;
        config.tokenizer_sha256 = Some(tokenizer.identity().to_string());
        let (model_config, base) = match (&config.model.path, &config.model.init) {
            (Some(path), _) => {
                let ckpt = crate::model::checkpoint::read(path, DType::F32)?;
                ckpt.params.check_finite()?;
                (ckpt.config, ckpt.params)
            }
            (None, Some(init)) => {
                let mc = init.model_config(tokenizer.vocab_size());
                mc.validate().map_err(|reason| crate::model::error::ModelError::Request(format!("[model.init]: {reason}")))?;
                fits_training(&mc, &config)?;
                let params = random_params(&mc, InitOptions { std: init.std, seed: config.seed, dtype: DType::F32 })?;
                (mc, params)
            }
            (None, None) => {
                return Err(TrainError::Resume("[model] needs `path` or `init`".into()));
            }
        };
        fits_training(&model_config, &config)?;
        if model_config.vocab_size < tokenizer.vocab_size() {
            return Err(TrainError::Resume(format!("the model's vocabulary ({}) is smaller than the tokenizer's ({})", model_config.vocab_size, tokenizer.vocab_size())));
        }
        if writes {
            std::fs::create_dir_all(run_dir).map_err(|source| TrainError::Io { path: run_dir.into(), source })?;
            let config_text = toml::to_string(&config).map_err(|e| TrainError::Resume(format!("cannot record the config: {e}")))?;
            let config_path = run_dir.join("config.toml");
            crate::atomic_file::write(&config_path, config_text.as_bytes()).map_err(|source| TrainError::Io { path: config_path, source })?;
        }
        let params = base.trainable_on(&config.compute.device.open()?)?;
        let optimizer = AdamW::new(config.optimizer.clone(), &params).map_err(tensor_err(0))?;
        let logs = Logs::open(run_dir, 0, writes)?;
        let mut trainer = Self::assemble(config, run_dir, model_config, params, optimizer, plugins, engine, &tokenizer, logs, job)?;
        trainer.initial_specs()?;
        Ok(trainer)
    }

    /// Resume the run in `run_dir` from its newest checkpoint. `plugins` must be the
    /// same code the checkpoint recorded (same sha256) unless `allow_plugin_change`,
    /// which loads the recorded states into the new code (journaled).
    pub fn resume(config: RunConfig, run_dir: &Path, plugins: &PluginSet, engine: Arc<PluginEngine>, allow_plugin_change: bool) -> Result<Self, TrainError> {
        let dirs = checkpoint::list(run_dir)?;
        let dir = dirs.last().ok_or_else(|| TrainError::Resume(format!("{}: no checkpoint to resume from", run_dir.display())))?;
        Self::resume_opened(config, run_dir, dir, plugins, engine, allow_plugin_change, Writes::Job)
    }

    /// The run in `run_dir` as it was after `step` steps, to look at without writing
    /// anything there: from the newest checkpoint at or before `step` (or from the
    /// start), with the steps after it run again in memory. Training is deterministic,
    /// so this is the state the run had.
    pub fn reopen_at(config: RunConfig, run_dir: &Path, step: u64, plugins: &PluginSet, engine: Arc<PluginEngine>) -> Result<Self, TrainError> {
        let dirs = checkpoint::list(run_dir)?;
        let at_or_before = dirs.iter().filter_map(|d| checkpoint::step_of(d).map(|s| (s, d))).filter(|(s, _)| *s <= step).max_by_key(|(s, _)| *s);
        let mut trainer = match at_or_before {
            Some((_, dir)) => Self::resume_opened(config, run_dir, dir, plugins, engine, false, Writes::Nothing)?,
            None => Self::start_opened(config, run_dir, plugins, engine, Writes::Nothing)?,
        };
        // Evaluations where the run made them: a sampler may steer by validation loss.
        let (eval_every, total) = (trainer.config.train.eval_every, trainer.config.train.steps);
        if trainer.step == 0 && eval_every > 0 && step > 0 {
            trainer.evaluate()?;
        }
        while trainer.step < step {
            let done = trainer.train_step()?.step;
            if eval_every > 0 && done % eval_every == 0 && done < total && done < step {
                trainer.evaluate()?;
            }
        }
        Ok(trainer)
    }

    #[allow(clippy::too_many_arguments)]
    fn resume_opened(config: RunConfig, run_dir: &Path, dir: &Path, plugins: &PluginSet, engine: Arc<PluginEngine>, allow_plugin_change: bool, writes: Writes) -> Result<Self, TrainError> {
        let job = data_parallel::Job::join(&config)?;
        let writes = writes.resolve(&job);
        let loaded = checkpoint::load(dir)?;
        let tokenizer = Tokenizer::from_spec(&config.tokenizer)?;
        same_tokenizer(config.tokenizer_sha256.as_deref(), &tokenizer, "the run's config.toml")?;
        same_tokenizer(loaded.state.tokenizer_sha256.as_deref(), &tokenizer, &format!("{}", dir.join("state.json").display()))?;
        let mut config = config;
        config.tokenizer_sha256 = Some(tokenizer.identity().to_string());
        let mut store = ParamStore::new();
        for (name, t) in &loaded.params {
            store.insert(name.clone(), t.clone(), loaded.origin.get(name).map(PathBuf::as_path));
        }
        store.check_finite()?;
        let device = config.compute.device.open()?;
        let params = store.trainable_on(&device)?;
        let mut optimizer = AdamW::new(config.optimizer.clone(), &params).map_err(tensor_err(loaded.state.step))?;
        optimizer.steps = loaded.state.step;
        optimizer.moments =
            loaded.moments.into_iter().map(|(name, (m, v))| Ok((name, (m.to_device(&device)?, v.to_device(&device)?)))).collect::<candle_core::Result<_>>().map_err(tensor_err(loaded.state.step))?;
        let logs = Logs::open(run_dir, loaded.state.step, writes)?;
        let state = loaded.state;
        let mut trainer = Self::assemble(config, run_dir, state.model_config.clone(), params, optimizer, plugins, engine, &tokenizer, logs, job)?;
        trainer.step = state.step;
        trainer.restore(&state, dir, allow_plugin_change)?;
        trainer.restore_shadows(&state)?;
        Ok(trainer)
    }

    #[allow(clippy::too_many_arguments)]
    fn assemble(
        config: RunConfig,
        run_dir: &Path,
        model_config: ModelConfig,
        params: ParamStore,
        optimizer: AdamW,
        plugins: &PluginSet,
        engine: Arc<PluginEngine>,
        tokenizer: &Tokenizer,
        logs: Logs,
        mut job: data_parallel::Job,
    ) -> Result<Self, TrainError> {
        let mut optimizer = optimizer;
        job.split_experts(&model_config)?;
        job.shard_optimizer(&config, &params, &mut optimizer);
        job.drop_foreign_moments(&mut optimizer);
        let matmul = crate::cpu::matmul::configure(config.compute)?;
        tracing::info!("matmul: {matmul}");
        let mut model = Transformer::new(&model_config, &params, &run_dir.display().to_string())?;
        if let Some(dispatcher) = job.dispatcher() {
            model.use_dispatcher(dispatcher);
        }
        let mut params = params;
        let freed = job.drop_foreign_experts(&mut params, &mut model)?;
        if freed > 0 {
            tracing::info!("expert parallel: {freed} weights of other ranks' experts are not held here");
        }
        let mut domains = Vec::new();
        for d in &config.data.domains {
            let domain = match (&d.builtin, &d.shards) {
                (Some(which), _) => Domain::builtin(&d.name, which, tokenizer, BUILTIN_DATA_SEED)?,
                (None, Some(dir)) => Domain::from_shards(&d.name, dir, tokenizer)?,
                (None, None) => {
                    return Err(TrainError::Resume(format!("domain {:?} has no source", d.name)));
                }
            };
            domain.check_length(config.train.seq_len)?;
            domains.push(domain);
        }
        let progress = domains.iter().map(|d| DomainProgress { name: d.name.clone(), tokens_seen: 0, train_loss: None, valid_loss: None }).collect();
        job.check_same_plugins(plugins)?;
        let host = PluginHost { engine, seed: config.seed, limits: PluginLimits::default() };
        let live = LivePlugins::new(&host, plugins)?;
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
            host,
            base_plugins: plugins.clone(),
            stage: None,
            watcher: None,
            job,
            shadows: Vec::new(),
        })
        .and_then(Self::start_shadows)
    }

    /// Build the shadow routers the plugin set names, each with its specs for this model,
    /// and check that the routing trace names MoE layers only.
    fn start_shadows(mut self) -> Result<Self, TrainError> {
        let infos = self.layer_infos();
        if let Some(trace) = &self.config.trace.routing
            && let Some(layer) = trace.layers.iter().find(|&&l| !self.model.is_moe_block(l))
        {
            let moe: Vec<String> = infos.iter().map(|i| i.layer.to_string()).collect();
            return Err(TrainError::Resume(format!("[trace] routing.layers: layer {layer} is not an MoE layer of this model (its MoE layers: {})", moe.join(", "))));
        }
        for (i, (component, params)) in self.base_plugins.shadows().iter().enumerate() {
            let role = shadows::SHADOW_ROLES.get(i).copied().ok_or_else(|| TrainError::Resume(format!("at most {} shadow routers", shadows::SHADOW_ROLES.len())))?;
            let shadow = shadows::ShadowRouter::new(role, &self.host, component, params, &infos).map_err(|source| TrainError::ShadowFault { role, source })?;
            self.shadows.push(shadow);
        }
        Ok(self)
    }

    /// Write the routing trace of the step just done.
    fn write_trace(&mut self, micro_batches: Vec<crate::train::routing_trace::MicroBatchTrace>) -> Result<(), TrainError> {
        // A rank that writes no metrics (a reopened run, or a non-writing rank whose
        // logs are discarded) still traces its own routing in a job, never when reopened.
        if !self.metrics.writes() && self.job.is_single() {
            return Ok(());
        }
        let rank = (!self.job.is_single()).then_some(self.job.layout.rank);
        let path = crate::train::routing_trace::path(&self.run_dir, self.step, rank);
        crate::train::routing_trace::write(&path, &crate::train::routing_trace::StepTrace { step: self.step, micro_batches }).map_err(TrainError::Trace)
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
        let specs = self.router_specs().map_err(|source| TrainError::PluginFault { role: Role::ROUTER, source })?;
        for (layer, spec) in self.model.moe_layers_mut().zip(specs) {
            layer.spec = spec;
        }
        Ok(())
    }

    /// Append `record` to the run's journal.
    fn journal(&mut self, record: &serde_json::Value) -> Result<(), TrainError> {
        let path = self.journal.path().to_path_buf();
        self.journal.write(record).map_err(|source| TrainError::Io { path, source })
    }

    /// Whether this process writes the run folder: always without a launcher; rank 0
    /// only in a multi-process job.
    pub fn writes(&self) -> bool {
        self.job.writes()
    }

    /// Write a checkpoint of the current state.
    pub fn save_checkpoint(&mut self) -> Result<PathBuf, TrainError> {
        let plugins = self.snapshots()?;
        let state = TrainState {
            step: self.step,
            config_toml: toml::to_string(&self.config).map_err(|e| TrainError::Resume(format!("cannot record the config: {e}")))?,
            model_config: self.model_config.clone(),
            tokenizer_sha256: self.config.tokenizer_sha256.clone(),
            plugins,
            layers: self.model.moe_layers().map(|l| LayerRouting { layer: l.layer, spec: l.spec, selection_bias: l.selection_bias.clone() }).collect(),
            domains: self.progress.clone(),
            last_stats: self.last_stats.clone(),
            shadows: self.shadow_snapshots()?,
        };
        // Every rank writes what it owns (all of it in one process; its experts and its
        // ZeRO-1 moments in a job), rank 0 the state and the manifest.
        let (params, moments) = self.job.checkpoint_shard(&self.params, &self.optimizer);
        Ok(checkpoint::save_shard(&self.run_dir, &params, &moments, &state, self.config.train.keep_checkpoints, &self.job)?)
    }

    /// The whole model's weights on the rank that writes the run folder (a collective:
    /// under expert parallelism every expert comes from the rank that trains it); `None`
    /// on the other ranks.
    pub fn export_weights(&self) -> Result<Option<ParamStore>, TrainError> {
        self.job.export_weights(&self.params)
    }

    /// Mean next-token loss on every domain's validation split; recorded in the
    /// metrics (with each MoE layer's mean gate weight per expert and domain, which
    /// shows whether experts specialise) and handed to the sampler from the next step.
    pub fn evaluate(&mut self) -> Result<Vec<(String, f32)>, TrainError> {
        let t = &self.config.train;
        let mut out = Vec::new();
        let mut gates = serde_json::Map::new();
        for (d, domain) in self.domains.iter().enumerate() {
            let tokens = validation_windows(domain, t.eval_tokens() / t.seq_len, t.seq_len);
            let (mut sum, mut n) = (0f64, 0usize);
            let mut gate_sums: Vec<Vec<f64>> = Vec::new();
            for chunk in tokens.chunks(t.batch_size * t.seq_len) {
                let batch = chunk.len() / t.seq_len;
                let forward = self.model.forward(chunk, batch)?;
                let logits = forward.logits.detach();
                let nll: Vec<f32> = next_token_nll(&logits, chunk, batch).and_then(|x| x.to_dtype(DType::F32)?.to_vec1()).map_err(tensor_err(self.step))?;
                sum += nll.iter().map(|&x| x as f64).sum::<f64>();
                n += nll.len();
                gate_sums.resize_with(forward.gate_means.len(), Vec::new);
                for (acc, layer) in gate_sums.iter_mut().zip(&forward.gate_means) {
                    acc.resize(layer.len(), 0.0);
                    acc.iter_mut().zip(layer).for_each(|(a, g)| *a += *g as f64 * chunk.len() as f64);
                }
            }
            let loss = (sum / n.max(1) as f64) as f32;
            self.progress[d].valid_loss = Some(loss);
            out.push((domain.name.clone(), loss));
            if !gate_sums.is_empty() {
                let means: Vec<Vec<f64>> = gate_sums.iter().map(|l| l.iter().map(|s| s / tokens.len().max(1) as f64).collect()).collect();
                gates.insert(domain.name.clone(), json!(means));
            }
        }
        let losses: serde_json::Map<String, serde_json::Value> = out.iter().map(|(n, l)| (n.clone(), json!(l))).collect();
        let path = self.metrics.path().to_path_buf();
        let record = if gates.is_empty() { json!({ "step": self.step, "eval": losses }) } else { json!({ "step": self.step, "eval": losses, "eval_gates": gates }) };
        self.metrics.write(&record).map_err(|source| TrainError::Io { path, source })?;
        Ok(out)
    }

    /// The weights, for export.
    pub fn params(&self) -> &ParamStore {
        &self.params
    }
}

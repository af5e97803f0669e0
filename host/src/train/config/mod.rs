//! The run config (`recast train CONFIG.toml`): typed, with every unknown key an error
//! that names the key and its line.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::cpu::matmul::ComputeSettings;
use crate::model::config::{Architecture, ModelConfig, MoeConfig, RopeConfig, RopeScaling};
use crate::plugins::bundle::BundleLimits;
use crate::train::role::Role;

mod lines;
pub mod overrides;
mod ranges;
pub mod trace;

pub use ranges::Invalid;

/// A whole run.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Seeds weights (from scratch), batches and plugins.
    #[serde(default)]
    pub seed: u64,
    pub model: ModelSection,
    /// `"byte"` (built in) or the path of a Hugging Face `tokenizer.json`; unset, the
    /// `tokenizer.json` of the `[model] path` checkpoint when it has one, else `"byte"`.
    #[serde(default)]
    pub tokenizer: String,
    /// What the tokenizer is, whatever path names it: `byte`, or the sha256 of its
    /// `tokenizer.json`. Recorded in the run's `config.toml` when it starts; given, a
    /// run refuses any other tokenizer, and a resumed run one that changed since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer_sha256: Option<String>,
    pub data: DataSection,
    #[serde(default)]
    pub plugins: PluginsSection,
    #[serde(default)]
    pub optimizer: OptimizerSection,
    #[serde(default)]
    pub schedule: ScheduleSection,
    pub train: TrainSection,
    /// The matrix products' library and precision (`precision = "f32" | "bf16"`,
    /// `matmul = "auto" | "candle" | "blas"`).
    #[serde(default)]
    pub compute: ComputeSettings,
    /// Training stages in order; their steps add up to `train.steps`. None: one stage.
    #[serde(default)]
    pub stages: Vec<Stage>,
    /// What a plugin fault during training does.
    #[serde(default)]
    pub on_plugin_fault: FaultPolicy,
    /// Refuse, before step 0 and at every reload, any plugin whose sha256 the lock file
    /// does not pin for its role.
    #[serde(default)]
    pub require_pinned: bool,
    /// The lock file `recast lock` writes (default: the config's path with `.lock`).
    #[serde(default)]
    pub lock_file: Option<PathBuf>,
    /// Public keys (`ed25519:<hex>`, or a key file from `recast keygen`) whose signed
    /// bundles may run. Empty: bundles need no signature (a signature present must
    /// still hold).
    #[serde(default)]
    pub trusted_keys: Vec<String>,
    /// Watch every plugin's file, crate folder or bundle, and swap in a changed plugin
    /// at the next step boundary once it passes vetting.
    #[serde(default = "yes")]
    pub hot_reload: bool,
    /// Size limits for reading plugin bundles (`max_entry_mib`, `max_bundle_mib`,
    /// `max_entries`).
    #[serde(default)]
    pub bundle_limits: BundleLimits,
    /// How the processes of a launcher's job (`mpirun`, `srun`) split the work; a layout
    /// that does not multiply to the launcher's world (one process without one) is refused.
    #[serde(default)]
    pub distributed: crate::distributed::DistributedConfig,
    /// What the run records for later inspection (`[trace] routing = {...}`).
    #[serde(default)]
    pub trace: trace::TraceSection,
}

fn yes() -> bool {
    true
}

/// What a plugin fault (trap, exhausted fuel or memory, deadline, invalid output)
/// during training does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultPolicy {
    /// Write a checkpoint and exit non-zero with the plugin's error.
    #[default]
    Stop,
    /// Re-instantiate the last version that completed a step, with the state it had
    /// before the failed call, and go on (journaled). A second fault in the same step
    /// stops the run.
    KeepLastGood,
}

/// One stage of a multi-stage recipe (Innovator's four, UltraFuser's two).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub name: String,
    /// Optimizer steps in this stage.
    pub steps: u64,
    /// Parameter groups that train; the others stay frozen (no update at all). Empty:
    /// everything trains.
    #[serde(default)]
    pub train: Vec<ParamGroup>,
    /// Peak learning rate of this stage (the schedule's shape still applies).
    pub lr: Option<f64>,
    /// Fixed domain weights (config order) instead of the sampler plugin's mixture.
    pub mixture: Option<Vec<f32>>,
    /// Parameters that override each plugin's `params` during this stage.
    #[serde(default)]
    pub plugins: StagePlugins,
}

/// Per-stage plugin parameter overrides.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StagePlugins {
    pub router: Option<toml::Table>,
    pub aux_schedule: Option<toml::Table>,
    pub sampler: Option<toml::Table>,
}

impl StagePlugins {
    /// The overrides for `role`'s params, if the stage has any.
    pub fn get(&self, role: Role) -> Option<&toml::Table> {
        match role {
            Role::ROUTER => self.router.as_ref(),
            Role::AUX_SCHEDULE => self.aux_schedule.as_ref(),
            Role::SAMPLER => self.sampler.as_ref(),
            _ => None,
        }
    }
}

/// Groups of parameters a stage can train or freeze, by tensor name.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ParamGroup {
    All,
    /// Token embedding and output head.
    Embeddings,
    /// q, k, v and o projections.
    Attention,
    /// RMSNorm gains.
    Norms,
    /// MoE routers and shared-expert gates.
    Router,
    /// Routed experts.
    Experts,
    /// Shared experts.
    SharedExperts,
    /// Dense MLPs.
    Mlp,
}

impl ParamGroup {
    /// Whether the tensor `name` belongs to this group.
    pub fn contains(self, name: &str) -> bool {
        match self {
            ParamGroup::All => true,
            ParamGroup::Embeddings => name == "model.embed_tokens.weight" || name == "lm_head.weight",
            ParamGroup::Attention => name.contains(".self_attn."),
            ParamGroup::Norms => name.ends_with("norm.weight"),
            ParamGroup::Router => name.ends_with(".mlp.gate.weight") || name.ends_with(".mlp.shared_expert_gate.weight"),
            ParamGroup::Experts => name.contains(".mlp.experts."),
            ParamGroup::SharedExperts => name.contains(".mlp.shared_experts."),
            ParamGroup::Mlp => [".mlp.gate_proj.", ".mlp.up_proj.", ".mlp.down_proj."].iter().any(|p| name.contains(p)),
        }
    }
}

/// Where the model comes from: a Hugging Face directory or a shape to initialise.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// A checkpoint directory (config.json + safetensors).
    pub path: Option<PathBuf>,
    /// A shape to initialise from scratch.
    pub init: Option<ModelInit>,
}

/// A model shape to initialise from scratch (vocabulary: the tokenizer's unless
/// `vocab_size` says more).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInit {
    /// `llama`, `qwen2`, `mistral`, `mixtral` or `qwen2-moe`.
    pub architecture: Architecture,
    pub hidden_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: Option<usize>,
    /// Dense MLP width.
    pub intermediate_size: usize,
    /// Routed experts per MoE layer (MoE families only; required there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub num_experts: Option<usize>,
    /// Experts per token (MoE families only; default 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top_k: Option<usize>,
    /// Width of each routed expert (default: `intermediate_size`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expert_intermediate_size: Option<usize>,
    /// Width of the gated shared expert (Qwen2-MoE), 0 for none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_expert_intermediate_size: Option<usize>,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// Standard deviation of the initial weight matrices.
    #[serde(default = "default_init_std")]
    pub std: f64,
    /// The embedding and head rows (default: the tokenizer's vocabulary; never fewer).
    /// A real model's vocabulary on byte data, for memory and speed measurements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
}

/// The context length of a model made from `[model.init]`.
pub const INIT_MAX_POSITIONS: usize = 4096;

/// Experts per token when `[model.init]` does not say.
const DEFAULT_TOP_K: usize = 2;

fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_init_std() -> f64 {
    0.02
}

impl ModelInit {
    /// The model shape for a tokenizer of `tokenizer_vocab` ids (or `vocab_size` rows
    /// when that is larger).
    pub fn model_config(&self, tokenizer_vocab: usize) -> ModelConfig {
        let vocab_size = self.vocab_size.unwrap_or(0).max(tokenizer_vocab);
        let arch = self.architecture;
        let num_experts = self.num_experts.unwrap_or(0);
        let shared = self.shared_expert_intermediate_size.unwrap_or(0);
        let moe = arch.is_moe().then(|| MoeConfig {
            num_experts,
            top_k: self.top_k.unwrap_or(DEFAULT_TOP_K),
            expert_intermediate: vec![self.expert_intermediate_size.unwrap_or(self.intermediate_size); num_experts],
            shared_expert_intermediate: if shared > 0 { vec![shared] } else { vec![] },
            shared_expert_gate: shared > 0,
            normalize_top_k: true,
            moe_layers: vec![true; self.num_layers],
            router_aux_loss_coef: 0.0,
        });
        let qwen = matches!(arch, Architecture::Qwen2 | Architecture::Qwen2Moe);
        ModelConfig {
            architecture: arch,
            vocab_size,
            hidden_size: self.hidden_size,
            intermediate_size: self.intermediate_size,
            num_layers: self.num_layers,
            num_heads: self.num_heads,
            num_kv_heads: self.num_kv_heads.unwrap_or(self.num_heads),
            head_dim: self.hidden_size / self.num_heads.max(1),
            rms_norm_eps: 1e-5,
            rope: RopeConfig { theta: self.rope_theta, scaling: RopeScaling::None },
            max_position_embeddings: INIT_MAX_POSITIONS,
            tie_word_embeddings: self.tie_word_embeddings,
            qkv_bias: qwen,
            o_bias: false,
            attention_window: vec![None; self.num_layers],
            moe,
            passthrough: Default::default(),
        }
    }
}

/// The data domains.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    pub domains: Vec<DomainSection>,
}

/// One domain: generated (`builtin`) or prepared by `recast data prepare` (`shards`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DomainSection {
    pub name: String,
    /// `arithmetic`, `code` or `prose`.
    pub builtin: Option<String>,
    /// A domain folder written by `recast data prepare`.
    pub shards: Option<PathBuf>,
}

/// The three steering plugins; each is optional.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsSection {
    /// Routing policy (default: the checkpoint's own routing).
    pub router: Option<PluginRef>,
    /// Aux-loss coefficients (default: none).
    pub aux_schedule: Option<PluginRef>,
    /// Domain mixture (default: uniform over domains).
    pub sampler: Option<PluginRef>,
    /// Router plugins that route beside the live one on the same logits, never steering
    /// the forward pass or the gradient (`[[plugins.shadow_router]]`): their agreement,
    /// load, MaxVio and drops go to the metrics.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub shadow_router: Vec<PluginRef>,
}

/// The most shadow routers a run may have.
pub const MAX_SHADOW_ROUTERS: usize = 8;

impl PluginsSection {
    /// The plugin the config names for `role`, if any.
    pub fn get(&self, role: Role) -> Option<&PluginRef> {
        match role {
            Role::ROUTER => self.router.as_ref(),
            Role::AUX_SCHEDULE => self.aux_schedule.as_ref(),
            Role::SAMPLER => self.sampler.as_ref(),
            _ => None,
        }
    }
}

/// A plugin: a reference plugin by name, or a file (`.wasm`, or a plugin crate folder
/// that is built first), with its parameters.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PluginRef {
    pub builtin: Option<String>,
    pub file: Option<PathBuf>,
    /// A bundle (folder or `.tar`) holding the plugin.
    pub bundle: Option<PathBuf>,
    /// Which of the bundle's plugins (needed when it holds several of this kind).
    pub plugin: Option<String>,
    #[serde(default)]
    pub params: toml::Table,
}

/// AdamW with f32 moments and global-norm clipping.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimizerSection {
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay; never applied to norms and biases.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0 = off).
    pub clip_grad_norm: f64,
}

impl Default for OptimizerSection {
    fn default() -> Self {
        Self { lr: 3e-3, beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1, clip_grad_norm: 1.0 }
    }
}

/// The learning-rate schedule's shape after warm-up.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ScheduleKind {
    Cosine,
    Linear,
    Constant,
    /// Warmup-stable-decay: constant, then a linear decay over the last `decay_fraction`.
    WarmupStableDecay,
}

/// Learning-rate schedule.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleSection {
    pub kind: ScheduleKind,
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of `optimizer.lr`.
    pub min_lr_ratio: f64,
    /// Warmup-stable-decay: fraction of the steps spent decaying.
    pub decay_fraction: f64,
}

impl Default for ScheduleSection {
    fn default() -> Self {
        Self { kind: ScheduleKind::Cosine, warmup_steps: 0, min_lr_ratio: 0.1, decay_fraction: 0.2 }
    }
}

/// Steps, batch shape and intervals.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Optimizer steps of the whole run.
    pub steps: u64,
    /// Sequences per micro-batch.
    pub batch_size: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub grad_accum: usize,
    /// Evaluate on every domain's validation split every this many steps (0 = only at
    /// the end).
    #[serde(default)]
    pub eval_every: u64,
    /// Validation tokens per domain at each evaluation, in whole sequences of `seq_len`
    /// (default 65,536; the whole validation split when it is smaller): enough that a
    /// verdict does not turn on which kilobyte was held out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_tokens: Option<usize>,
    /// Replaced by `eval_tokens`: an older config's value is read as
    /// `eval_sequences × seq_len` tokens.
    #[serde(default, skip_serializing)]
    pub eval_sequences: Option<usize>,
    /// Write a checkpoint every this many steps (0 = only at the end).
    #[serde(default)]
    pub checkpoint_every: u64,
    /// Checkpoints to keep.
    #[serde(default = "default_keep")]
    pub keep_checkpoints: usize,
}

fn one() -> usize {
    1
}
/// Validation tokens per domain when `eval_tokens` is not given.
pub const DEFAULT_EVAL_TOKENS: usize = 65_536;

impl TrainSection {
    /// Validation tokens per domain at each evaluation.
    pub fn eval_tokens(&self) -> usize {
        self.eval_tokens.unwrap_or(DEFAULT_EVAL_TOKENS)
    }
}
fn default_keep() -> usize {
    3
}

/// A config error, with the file it came from.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct ConfigError {
    pub path: PathBuf,
    pub reason: String,
}

impl RunConfig {
    /// Parse `text` (from `path`), resolve relative paths against the file's folder,
    /// and check the values fit together.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: RunConfig = toml::from_str(text).map_err(|e| ConfigError { path: path.to_path_buf(), reason: e.to_string().trim_end().to_string() })?;
        config.resolve_and_check(path, Some(text))
    }

    /// Resolve relative paths against the folder of `path` (the file the config came
    /// from) and check the values fit together.
    pub fn finish(self, path: &Path) -> Result<Self, ConfigError> {
        self.resolve_and_check(path, None)
    }

    /// [`RunConfig::finish`]; with the file's `text`, a value error names its line.
    fn resolve_and_check(mut self, path: &Path, text: Option<&str>) -> Result<Self, ConfigError> {
        let config = &mut self;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        if let Some(p) = config.model.path.as_mut() {
            resolve(p);
        }
        for d in &mut config.data.domains {
            if let Some(p) = d.shards.as_mut() {
                resolve(p);
            }
        }
        let section = &mut config.plugins;
        for plugin in [&mut section.router, &mut section.aux_schedule, &mut section.sampler].into_iter().flatten().chain(section.shadow_router.iter_mut()) {
            for p in [plugin.file.as_mut(), plugin.bundle.as_mut()].into_iter().flatten() {
                resolve(p);
            }
        }
        let lock = config.lock_file.get_or_insert_with(|| path.with_extension("lock"));
        resolve(lock);
        for key in &mut config.trusted_keys {
            if !key.trim().starts_with("ed25519:") && Path::new(key.as_str()).is_relative() {
                *key = base.join(key.as_str()).display().to_string();
            }
        }
        if config.tokenizer.is_empty() {
            let from_model = config.model.path.as_ref().map(|p| p.join("tokenizer.json")).filter(|t| t.is_file());
            config.tokenizer = from_model.map_or_else(|| "byte".to_string(), |t| t.display().to_string());
        } else if config.tokenizer != "byte" && Path::new(&config.tokenizer).is_relative() {
            config.tokenizer = base.join(&config.tokenizer).display().to_string();
        }
        if let Some(sequences) = config.train.eval_sequences.take() {
            let tokens = sequences.saturating_mul(config.train.seq_len);
            if config.train.eval_tokens.is_none() {
                tracing::warn!("{}: train.eval_sequences is replaced by train.eval_tokens; read as eval_tokens = {tokens}", path.display());
                config.train.eval_tokens = Some(tokens);
            }
        }
        self.check().map_err(|invalid| ConfigError { path: path.to_path_buf(), reason: invalid.describe(text) })?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests;

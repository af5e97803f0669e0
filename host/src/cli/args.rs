//! The arguments of the commands that have subcommands (`bundle`, `data`, `plugin`,
//! `bench`) and the flag groups several commands share; `mod.rs` keeps the top-level
//! commands and the dispatch.

use std::path::PathBuf;

use clap::{Args, Subcommand};

use super::bundle::BundleLimitArgs;
use super::{data_prepare, plugin_new};
use crate::cpu::matmul::{MatmulBackend, Precision};
use crate::distributed::Backend;
use crate::model::compute_device::ComputeDevice;
use crate::model::training_pass::Recompute;
use crate::plugins::{PluginKind, PluginLimits};

/// `recast bundle …`.
#[derive(Subcommand, Debug)]
pub(super) enum BundleCommand {
    /// Pack a folder with a bundle.toml into a .tar: every plugin's kind, sha256 and WIT
    /// version are filled in from the component.
    Pack {
        /// The folder (bundle.toml + the plugin files it lists).
        dir: PathBuf,
        /// The .tar to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a bundle: layout, every sha256, every component's kind and WIT version,
    /// and the signature (against trusted keys, if given).
    Verify {
        /// A bundle .tar or folder.
        bundle: PathBuf,
        /// Require a signature by this public key (repeatable).
        #[arg(long = "trusted-key")]
        trusted_keys: Vec<PathBuf>,
        #[command(flatten)]
        limits: BundleLimitArgs,
    },
    /// List a bundle's plugins.
    List {
        /// A bundle .tar or folder.
        bundle: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        limits: BundleLimitArgs,
    },
    /// Sign a bundle with an ed25519 key from `recast keygen` (replaces an earlier
    /// signature).
    Sign {
        /// A bundle .tar or folder.
        bundle: PathBuf,
        /// The secret key file.
        #[arg(long)]
        key: PathBuf,
    },
}

/// `recast data …`.
#[derive(Subcommand, Debug)]
pub(super) enum DataCommand {
    /// Tokenise text files, JSONL files (plain, .gz, .zst), Parquet files and folders of
    /// them into per-domain token shards (train and validation) that a run config's
    /// `shards` can name.
    Prepare {
        /// Output folder; each domain gets a subfolder.
        #[arg(long)]
        out: PathBuf,
        /// A domain and its inputs: NAME=PATH[,PATH...] (files or folders); repeat.
        #[arg(long = "domain", value_parser = data_prepare::parse_domain, required = true)]
        domains: Vec<(String, Vec<PathBuf>)>,
        /// `byte` or the path of a Hugging Face tokenizer.json.
        #[arg(long, default_value = "byte")]
        tokenizer: String,
        /// Field of each JSONL line, or column of a Parquet file, that holds the text.
        #[arg(long, default_value = "text", alias = "text-column")]
        jsonl_field: String,
        /// Fraction of each domain's tokens held out for validation, in whole documents
        /// sampled with --seed.
        #[arg(long, default_value_t = 0.05)]
        valid_fraction: f64,
        /// Inside folders, read only files whose name matches this glob (repeatable,
        /// e.g. --include '*.py' --include '*.md'); files named directly are always read.
        #[arg(long = "include", value_name = "GLOB")]
        include: Vec<String>,
        /// Seeds the shuffle of the documents that picks the validation split.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
}

/// Element types on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DTypeArg {
    F32,
    Bf16,
    F16,
}

impl DTypeArg {
    pub(super) fn dtype(self) -> candle_core::DType {
        match self {
            DTypeArg::F32 => candle_core::DType::F32,
            DTypeArg::Bf16 => candle_core::DType::BF16,
            DTypeArg::F16 => candle_core::DType::F16,
        }
    }
}

/// `recast plugin …`.
#[derive(Subcommand, Debug)]
pub(super) enum PluginCommand {
    /// Create a plugin crate that builds as is.
    New {
        /// Which kind of plugin.
        #[arg(long, value_enum)]
        kind: PluginKind,
        /// Plugin name (also the folder name), e.g. `my-router`.
        name: String,
        /// The plugin's language.
        #[arg(long, value_enum, default_value_t = plugin_new::Lang::Rust)]
        lang: plugin_new::Lang,
        /// Folder to create the plugin in.
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// Path of the recast-sdk crate (default: the SDK next to this recast build).
        #[arg(long, env = "RECAST_SDK")]
        sdk: Option<PathBuf>,
    },
    /// Build a plugin (a Rust crate, a Python or a JavaScript plugin folder, or a
    /// workspace of plugins) into WebAssembly components; prints the path of each `.wasm`
    /// written, one per line, last.
    Build {
        /// Folder with the plugin's Cargo.toml (or a workspace's).
        path: PathBuf,
    },
    /// List the reference plugins built into this binary: name, kind, version, sha256.
    List {
        /// One JSON array instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show a component's kind, name, version, contract version, sha256 and exports.
    Inspect {
        /// The component.
        file: PathBuf,
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run the kind's conformance calls on synthetic inputs; exit 0 only if all pass.
    Check {
        /// The component.
        file: PathBuf,
        /// Parameters: a TOML file, or TOML text.
        #[arg(long)]
        params: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

/// `recast bench …`.
#[derive(Subcommand, Debug)]
pub(super) enum BenchCommand {
    /// What a plugin costs in Python and JavaScript next to the same policy in Rust:
    /// component size, compile time, instantiation and per-step call time.
    Languages {
        /// Timed repetitions (the median is reported).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
    },
    /// Cost of plugin calls: `spec` and `on-step` in µs, and a per-token `route` call
    /// as a ratio to the same top-k done natively.
    Plugins {
        /// Router component to measure (default: the built-in topk-softmax).
        #[arg(long)]
        router: Option<PathBuf>,
        /// Tokens in the `route` micro-batch.
        #[arg(long, default_value_t = 4096)]
        tokens: u32,
        /// Experts in the `route` micro-batch.
        #[arg(long, default_value_t = 64)]
        experts: u32,
        /// Experts per token.
        #[arg(long, default_value_t = 2)]
        top_k: u32,
        /// Timed repetitions of each measurement (the median is reported).
        #[arg(long, default_value_t = 7)]
        repeats: usize,
    },
    /// Forward+backward of one MoE layer (softmax top-k, SwiGLU experts, loss = sum of
    /// outputs); last line `moe-layer fwd+bwd: X ms`.
    MoeLayer {
        #[arg(long, default_value_t = 4096)]
        tokens: usize,
        #[arg(long, default_value_t = 512)]
        hidden: usize,
        #[arg(long, default_value_t = 8)]
        experts: usize,
        #[arg(long, default_value_t = 2)]
        top_k: usize,
        /// Intermediate width of each expert.
        #[arg(long, default_value_t = 1408)]
        ffn: usize,
        /// Precision of the matrix products: `bf16` is mixed precision (f32 weights,
        /// bf16 matmuls with f32 accumulation), as PyTorch's bf16 autocast.
        #[arg(long, value_enum, default_value_t = Precision::F32)]
        dtype: Precision,
        /// Library of the matrix products.
        #[arg(long, value_enum, default_value_t = MatmulBackend::Auto)]
        matmul: MatmulBackend,
        /// `cpu`, or `cuda` / `cuda:N` (a `--features cuda` build): on CUDA, `--dtype
        /// bf16` keeps weights and activations in bf16 (as a bf16 PyTorch module), and the
        /// expert GEMMs' throughput is also reported against one plain cuBLAS GEMM of the
        /// same size.
        #[arg(long, default_value = "cpu")]
        device: ComputeDevice,
        #[command(flatten)]
        threads: ThreadArgs,
        /// Timed repetitions after two warm-ups (the median is reported).
        #[arg(long, default_value_t = 7)]
        repeats: usize,
    },
    /// Whole training steps of a run config (plugins, forward, backward, AdamW); last
    /// line `tokens/s: X`.
    TrainStep {
        /// The run config (TOML).
        config: PathBuf,
        /// Timed steps after two warm-ups (the median is reported).
        #[arg(long, default_value_t = 5)]
        steps: u64,
        /// Overrides the config's `[compute] precision`.
        #[arg(long, value_enum)]
        precision: Option<Precision>,
        /// Overrides the config's `[compute] matmul`.
        #[arg(long, value_enum)]
        matmul: Option<MatmulBackend>,
        /// Overrides the config's `[compute] device` (`cpu`, `cuda`, `cuda:N`).
        #[arg(long)]
        device: Option<ComputeDevice>,
        /// Overrides the config's `[compute] recompute`.
        #[arg(long, value_enum)]
        recompute: Option<Recompute>,
        #[command(flatten)]
        threads: ThreadArgs,
    },
    /// GFLOP/s of one matrix product (`C[m×n] = A[m×k] · Bᵀ`, a linear layer's shape) on
    /// every matmul path this machine has: candle and the BLAS, f32 and bf16. What
    /// `[compute] matmul = "auto"` should pick here.
    Matmul {
        #[arg(long, default_value_t = 4096)]
        m: usize,
        #[arg(long, default_value_t = 512)]
        k: usize,
        #[arg(long, default_value_t = 1408)]
        n: usize,
        #[command(flatten)]
        threads: ThreadArgs,
        /// Timed repetitions after two warm-ups (the median is reported).
        #[arg(long, default_value_t = 9)]
        repeats: usize,
    },
    /// This CPU's measured f32 and bf16 GEMM peak (GFLOP/s of a large square product on
    /// the fastest matmul path, all threads given): what the other benchmarks' achieved
    /// FLOP/s are a fraction of.
    Peak {
        /// The products' size (size × size × size).
        #[arg(long, default_value_t = 2048)]
        size: usize,
        #[command(flatten)]
        threads: ThreadArgs,
        /// Timed repetitions after two warm-ups (the median is reported).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
    },
    /// Bytes one training step sends from each rank for a model and a layout: the MoE
    /// layers' all-to-all and the gradient all-reduces (balanced routing, ring
    /// all-reduce). Without `--model`, Mixtral-8x7B.
    CommPlan {
        /// A model's config.json, or the checkpoint folder holding it.
        #[arg(long)]
        model: Option<PathBuf>,
        /// Data-parallel replicas.
        #[arg(long, default_value_t = 1)]
        data_parallel: usize,
        /// Ranks each MoE layer's experts are split over.
        #[arg(long, default_value_t = 8)]
        expert_parallel: usize,
        /// Tokens each rank routes per step (micro-batches × sequences × length).
        #[arg(long, default_value_t = 8192)]
        tokens_per_rank: usize,
        /// Bytes per activation element (2: bf16).
        #[arg(long, default_value_t = 2)]
        activation_bytes: usize,
    },
    /// Forward+backward of a whole checkpoint on a batch of next-token prediction; last
    /// line `model fwd+bwd: X ms`.
    ModelStep {
        /// Hugging Face checkpoint directory.
        #[arg(long)]
        model: PathBuf,
        #[arg(long, default_value_t = 4)]
        batch: usize,
        #[arg(long, default_value_t = 256)]
        seq: usize,
        #[command(flatten)]
        threads: ThreadArgs,
        /// Timed repetitions after two warm-ups (the median is reported).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
    },
}

/// CPU threads for tensor work.
#[derive(Args, Debug, Clone)]
pub(super) struct ThreadArgs {
    /// Threads for tensor work (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
}

impl ThreadArgs {
    /// Must run before any tensor work starts: candle reads `RAYON_NUM_THREADS`.
    pub(super) fn apply(&self) {
        if let Some(n) = self.threads.filter(|&n| n > 0) {
            // SAFETY: called while the process is still single-threaded (right after
            // argument parsing, before any pool or plugin engine starts).
            unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
        }
    }
}

/// Sandbox limits, as flags.
#[derive(Args, Debug, Clone)]
pub(super) struct LimitArgs {
    /// Fuel per call (0 = unlimited).
    #[arg(long, default_value_t = PluginLimits::DEFAULT_FUEL)]
    pub fuel: u64,
    /// Wall-clock deadline per call, in milliseconds.
    #[arg(long, default_value_t = PluginLimits::DEFAULT_DEADLINE.as_millis() as u64)]
    pub deadline_ms: u64,
    /// Memory cap per instance, in MiB.
    #[arg(long, default_value_t = (PluginLimits::DEFAULT_MEMORY >> 20) as u64)]
    pub memory_mib: u64,
}

impl LimitArgs {
    pub(super) fn limits(&self) -> PluginLimits {
        PluginLimits {
            fuel_per_call: (self.fuel > 0).then_some(self.fuel),
            deadline: std::time::Duration::from_millis(self.deadline_ms),
            memory_bytes: (self.memory_mib as usize).saturating_mul(1 << 20),
        }
    }
}

/// `recast distributed …`.
#[derive(Subcommand, Debug)]
pub(super) enum DistributedCommand {
    /// Run every collective (all-reduce, broadcast, all-gather, reduce-scatter,
    /// all-to-all with per-peer counts, barrier) on known inputs under the launcher that
    /// started this process; exit 0 only if every rank got the right results.
    Check {
        /// The engine: `auto`, `mpi` or `nccl`.
        #[arg(long, value_enum, default_value_t = Backend::Auto)]
        backend: Backend,
    },
}

//! The `recast` command line: argument parsing and dispatch. Each subcommand lives in
//! its own module.

mod bench;
mod bench_languages;
mod bench_matmul;
mod bench_model;
mod bundle;
mod console;
mod convert;
mod data_prepare;
mod error_chain;
mod experiment;
mod forward;
mod lock;
mod plugin_build;
mod plugin_check;
mod plugin_inspect;
mod plugin_new;
mod recipe;
mod report;
mod templates;
mod train;
mod upcycle;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::cpu::matmul::{ComputeSettings, MatmulBackend, Precision};
use crate::model::compute_device::ComputeDevice;
// The source tree this binary was built from: subcommands find the SDK and the
// reference plugins there.
use crate::plugin_build::source_root;
use crate::plugins::{PluginKind, PluginLimits};

pub use crate::plugin_build::{BuiltPlugin, build_plugins};
use bundle::BundleLimitArgs;
use error_chain::error_chain;

/// Recast: upcycle dense transformers into Mixture-of-Experts models and keep training
/// them, with every research decision a sandboxed WebAssembly plugin.
#[derive(Parser, Debug)]
#[command(name = "recast", version, about, long_about = None)]
pub struct Cli {
    /// More log output (-v: debug, -vv: trace). `RUST_LOG` overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Scaffold, build, inspect and check plugins.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Benchmarks, printed as ratios against a reference measured in the same run.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run a checkpoint on token ids and write its logits (`logits`, [T, vocab], f32) to
    /// a safetensors file.
    Forward {
        /// Hugging Face checkpoint directory (config.json + safetensors).
        #[arg(long)]
        model: PathBuf,
        /// Token ids: a comma list (1,2,3) or a file of ids separated by commas or spaces.
        #[arg(long)]
        tokens: String,
        /// Output safetensors file.
        #[arg(long)]
        out: PathBuf,
        /// Route MoE layers with this router plugin instead of the checkpoint's routing.
        #[arg(long)]
        router: Option<PathBuf>,
        /// The router plugin's parameters (TOML text).
        #[arg(long, default_value = "")]
        router_params: String,
    },
    /// Train (continue pretraining) a dense or MoE model with plugins steering every step.
    #[command(after_help = "Start: recast train CONFIG.toml --out RUN_DIR\nResume: recast train --resume RUN_DIR")]
    Train {
        /// The run config (TOML); see examples/.
        #[arg(required_unless_present = "resume", requires = "out")]
        config: Option<PathBuf>,
        /// Folder for checkpoints, metrics.jsonl and the final model.
        #[arg(long, conflicts_with = "resume")]
        out: Option<PathBuf>,
        /// Continue the run in this folder from its newest checkpoint.
        #[arg(long, conflicts_with = "config")]
        resume: Option<PathBuf>,
        /// Stop (with a checkpoint) once this many steps are done; the schedule still
        /// spans the config's `train.steps`.
        #[arg(long)]
        max_steps: Option<u64>,
        /// On --resume, run plugins whose code differs from the checkpoint's, giving
        /// them the saved plugin state (journaled).
        #[arg(long, requires = "resume")]
        allow_plugin_change: bool,
        #[command(flatten)]
        threads: ThreadArgs,
    },
    /// Pack, verify, list and sign plugin bundles.
    #[command(subcommand)]
    Bundle(BundleCommand),
    /// Make an ed25519 key pair for signing bundles: KEY (secret, readable only by you)
    /// and KEY.pub (share it; runs list it in `trusted_keys`).
    Keygen {
        /// Where to write the secret key; the public key goes to the same path + `.pub`.
        #[arg(long, default_value = "recast-signing.key")]
        out: PathBuf,
    },
    /// Pin every plugin a run config uses: write a lock file with each one's sha256.
    /// With `require_pinned = true` in the config, a run refuses anything else.
    Lock {
        /// The run config.
        config: PathBuf,
        /// The lock file (default: the config's `lock_file`, else CONFIG with `.lock`).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run a recipe end to end (pretrain, upcycle, continue, in stages); each step writes
    /// OUT/<step>/, finished steps are skipped on a rerun.
    Recipe {
        /// The recipe (TOML with [[steps]]); see examples/.
        recipe: PathBuf,
        /// Folder for every step's output.
        #[arg(long)]
        out: PathBuf,
        /// Stop each training run after this many steps (for smoke tests).
        #[arg(long)]
        max_steps: Option<u64>,
        #[command(flatten)]
        threads: ThreadArgs,
    },
    /// Run an experiment: arms that differ in one policy, every seed, compared on
    /// held-out loss and routing; writes results.md, results.csv and loss.png and prints
    /// whether each of the claim's criteria holds.
    Experiment {
        /// The experiment (TOML); see experiments/.
        experiment: PathBuf,
        /// Output folder (default: runs/experiments/<name>).
        #[arg(long)]
        out: Option<PathBuf>,
        /// A seconds-long version that only proves the pipeline.
        #[arg(long)]
        smoke: bool,
        /// Use prepared shards for a domain in every step: NAME=DIR (a folder from
        /// `recast data prepare`); repeat for several domains.
        #[arg(long = "data", value_name = "NAME=DIR")]
        data: Vec<String>,
        #[command(flatten)]
        threads: ThreadArgs,
    },
    /// Validation loss and perplexity per domain of a run's newest checkpoint.
    Eval {
        /// The run folder.
        run_dir: PathBuf,
        #[command(flatten)]
        threads: ThreadArgs,
    },
    /// PNG plots (loss per domain, expert load per layer) and a Markdown summary of a
    /// run, written to RUN_DIR/report/.
    Report {
        /// The run folder.
        run_dir: PathBuf,
    },
    /// Prepare training data.
    #[command(subcommand)]
    Data(DataCommand),
    /// Turn dense checkpoints into an MoE (or a grown dense model) with an init-scheme
    /// plugin, streaming tensor by tensor.
    Upcycle {
        /// A source checkpoint directory; repeat for schemes that take several.
        #[arg(long = "source", required = true)]
        sources: Vec<PathBuf>,
        /// A reference scheme's name (sparse-upcycle, drop-upcycle, fine-grained-split,
        /// scale-out, scale-up, fuse-specialists) or a plugin `.wasm` or crate folder.
        #[arg(long)]
        scheme: String,
        /// The scheme's parameters: TOML text or a TOML file.
        #[arg(long)]
        params: Option<String>,
        /// Output directory (must not exist or be empty).
        #[arg(long)]
        out: PathBuf,
        /// `recast` (any model Recast runs) or `hf` (Mixtral / Qwen2-MoE / dense family
        /// that transformers loads).
        #[arg(long, value_enum, default_value_t = crate::upcycle::Format::Recast)]
        format: crate::upcycle::Format,
        /// Element type of the output (default: the source's).
        #[arg(long, value_enum)]
        dtype: Option<DTypeArg>,
        /// Largest output shard (e.g. 5GB).
        #[arg(long, value_parser = convert::parse_size, default_value = "5GB")]
        max_shard_size: u64,
        /// Seed handed to the scheme.
        #[arg(long, default_value_t = 0)]
        seed: u64,
    },
    /// Read a checkpoint and write it again with Recast's writer (element type, sharding).
    Convert {
        /// Checkpoint directory to read.
        #[arg(long)]
        model: PathBuf,
        /// Directory to write (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Element type of the written weights.
        #[arg(long, value_enum, default_value_t = DTypeArg::F32)]
        dtype: DTypeArg,
        /// Split the weights into shards of at most this size (e.g. 5GB, 200MB).
        #[arg(long, value_parser = convert::parse_size)]
        max_shard_size: Option<u64>,
    },
}

#[derive(Subcommand, Debug)]
enum BundleCommand {
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

#[derive(Subcommand, Debug)]
enum DataCommand {
    /// Tokenise text files, JSONL files and folders of source files into per-domain
    /// token shards (train and validation) that a run config's `shards` can name.
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
        /// Field of each JSONL line that holds the text.
        #[arg(long, default_value = "text")]
        jsonl_field: String,
        /// Fraction of each domain's tokens held out for validation.
        #[arg(long, default_value_t = 0.05)]
        valid_fraction: f64,
    },
}

/// Element types on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum DTypeArg {
    F32,
    Bf16,
    F16,
}

impl DTypeArg {
    fn dtype(self) -> candle_core::DType {
        match self {
            DTypeArg::F32 => candle_core::DType::F32,
            DTypeArg::Bf16 => candle_core::DType::BF16,
            DTypeArg::F16 => candle_core::DType::F16,
        }
    }
}

#[derive(Subcommand, Debug)]
enum PluginCommand {
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

#[derive(Subcommand, Debug)]
enum BenchCommand {
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
        /// Router component to measure (default: build plugins/router/topk-softmax).
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
struct ThreadArgs {
    /// Threads for tensor work (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

impl ThreadArgs {
    /// Must run before any tensor work starts: candle reads `RAYON_NUM_THREADS`.
    fn apply(&self) {
        if let Some(n) = self.threads.filter(|&n| n > 0) {
            // SAFETY: called while the process is still single-threaded (right after
            // argument parsing, before any pool or plugin engine starts).
            unsafe { std::env::set_var("RAYON_NUM_THREADS", n.to_string()) };
        }
    }
}

/// Sandbox limits, as flags.
#[derive(Args, Debug, Clone)]
struct LimitArgs {
    /// Fuel per call (0 = unlimited).
    #[arg(long, default_value_t = PluginLimits::DEFAULT_FUEL)]
    fuel: u64,
    /// Wall-clock deadline per call, in milliseconds.
    #[arg(long, default_value_t = PluginLimits::DEFAULT_DEADLINE.as_millis() as u64)]
    deadline_ms: u64,
    /// Memory cap per instance, in MiB.
    #[arg(long, default_value_t = (PluginLimits::DEFAULT_MEMORY >> 20) as u64)]
    memory_mib: u64,
}

impl LimitArgs {
    fn limits(&self) -> PluginLimits {
        PluginLimits {
            fuel_per_call: (self.fuel > 0).then_some(self.fuel),
            deadline: std::time::Duration::from_millis(self.deadline_ms),
            memory_bytes: (self.memory_mib as usize).saturating_mul(1 << 20),
        }
    }
}

/// Parse the command line, run the command, and turn errors into a message and a
/// non-zero exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,plugin=info,reload=info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).without_time().try_init();
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Plugin(PluginCommand::New { kind, name, lang, dir, sdk }) => plugin_new::run(kind, &name, lang, &dir, sdk.as_deref()),
        Command::Plugin(PluginCommand::Build { path }) => plugin_build::run(&path),
        Command::Plugin(PluginCommand::Inspect { file, json }) => plugin_inspect::run(&file, json),
        Command::Plugin(PluginCommand::Check { file, params, limits }) => plugin_check::run(&file, params.as_deref(), limits.limits()),
        Command::Bench(BenchCommand::Languages { repeats }) => bench_languages::languages(repeats.max(1)),
        Command::Bench(BenchCommand::Plugins { router, tokens, experts, top_k, repeats }) => bench::plugins(router.as_deref(), tokens, experts, top_k, repeats.max(1)),
        Command::Bench(BenchCommand::MoeLayer { tokens, hidden, experts, top_k, ffn, dtype, matmul, device, threads, repeats }) => {
            threads.apply();
            bench_model::moe_layer(&bench_model::MoeLayerShape { tokens, hidden, experts, top_k, ffn }, ComputeSettings { precision: dtype, matmul, device }, repeats)
        }
        Command::Bench(BenchCommand::TrainStep { config, steps, precision, matmul, device, threads }) => {
            threads.apply();
            bench_model::train_step(&config, steps, precision, matmul, device)
        }
        Command::Bench(BenchCommand::Matmul { m, k, n, threads, repeats }) => {
            threads.apply();
            bench_matmul::run(m, k, n, repeats)
        }
        Command::Bench(BenchCommand::ModelStep { model, batch, seq, threads, repeats }) => {
            threads.apply();
            bench_model::model_step(&model, batch, seq, repeats)
        }
        Command::Forward { model, tokens, out, router, router_params } => forward::run(&model, &tokens, &out, router.as_deref(), &router_params),
        Command::Train { config, out, resume, max_steps, allow_plugin_change, threads } => {
            threads.apply();
            train::run(config.as_deref(), out.as_deref(), resume.as_deref(), max_steps, allow_plugin_change)
        }
        Command::Bundle(BundleCommand::Pack { dir, out }) => bundle::pack(&dir, &out),
        Command::Bundle(BundleCommand::Verify { bundle, trusted_keys, limits }) => bundle::verify(&bundle, &trusted_keys, &limits.limits()),
        Command::Bundle(BundleCommand::List { bundle, json, limits }) => bundle::list(&bundle, json, &limits.limits()),
        Command::Bundle(BundleCommand::Sign { bundle, key }) => bundle::sign(&bundle, &key),
        Command::Keygen { out } => bundle::keygen(&out),
        Command::Lock { config, out } => lock::run(&config, out.as_deref()),
        Command::Experiment { experiment: file, out, smoke, data, threads } => {
            threads.apply();
            let out = out.unwrap_or_else(|| crate::experiment::default_out(&file));
            experiment::run(&file, &out, smoke, &data)
        }
        Command::Recipe { recipe, out, max_steps, threads } => {
            threads.apply();
            recipe::run(&recipe, &out, max_steps)
        }
        Command::Eval { run_dir, threads } => {
            threads.apply();
            train::eval(&run_dir)
        }
        Command::Report { run_dir } => report::run(&run_dir),
        Command::Data(DataCommand::Prepare { out, domains, tokenizer, jsonl_field, valid_fraction }) => data_prepare::run(&out, &domains, &tokenizer, &jsonl_field, valid_fraction),
        Command::Upcycle { sources, scheme, params, out, format, dtype, max_shard_size, seed } => {
            upcycle::run(crate::run::upcycle::UpcycleJob { sources, scheme, params, out, format, dtype: dtype.map(DTypeArg::dtype), max_shard_bytes: max_shard_size, seed })
        }
        Command::Convert { model, out, dtype, max_shard_size } => convert::run(&model, &out, dtype.dtype(), max_shard_size),
    }
}

//! The `recast` command line: argument parsing and dispatch. Each subcommand lives in
//! its own module.

mod args;
mod bench;
mod bench_languages;
mod bench_matmul;
mod bench_model;
mod bundle;
mod console;
mod convert;
mod data_prepare;
mod distributed;
mod error_chain;
mod experiment;
mod forward;
mod lock;
mod plugin_build;
mod plugin_check;
mod plugin_inspect;
mod plugin_list;
mod plugin_new;
mod recipe;
mod replay;
mod report;
mod templates;
mod train;
mod upcycle;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::cpu::matmul::ComputeSettings;
// The source tree this binary was built from: subcommands find the SDK and the
// reference plugins there.
use crate::plugin_build::source_root;

pub use crate::plugin_build::{BuiltPlugin, build_plugins};
use args::{BenchCommand, BundleCommand, DTypeArg, DataCommand, DistributedCommand, PluginCommand, ThreadArgs};
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
    /// Training across processes: check the collectives of a job a launcher started
    /// (`mpirun -np 2 recast distributed check`).
    #[command(subcommand)]
    Distributed(DistributedCommand),
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
        /// Data-parallel replicas, instead of the config's `[distributed] data_parallel`
        /// (with --resume: reshard the checkpoint to this layout).
        #[arg(long, value_name = "N")]
        data_parallel: Option<usize>,
        /// Ranks each MoE layer's experts are split over, instead of the config's
        /// `[distributed] expert_parallel` (with --resume: reshard the checkpoint).
        #[arg(long, value_name = "N")]
        expert_parallel: Option<usize>,
        /// Change one config value, typed and checked like the file (repeatable):
        /// `--set train.steps=100 --set optimizer.lr=1e-3 --set plugins.router.params.top_k=2`.
        /// With --resume the change is recorded in the run's config.toml.
        #[arg(long = "set", value_name = "KEY.PATH=VALUE")]
        sets: Vec<String>,
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
        /// Change one value of a step (repeatable): `--set STEP.train.steps=100`, `*` as
        /// STEP for every step that has it.
        #[arg(long = "set", value_name = "STEP.PATH=VALUE")]
        sets: Vec<String>,
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
        /// Change one value of the base steps for every arm (repeatable):
        /// `--set STEP.train.optimizer.lr=1e-3`, `*` as STEP for every step that has it.
        #[arg(long = "set", value_name = "STEP.PATH=VALUE")]
        sets: Vec<String>,
        #[command(flatten)]
        threads: ThreadArgs,
    },
    /// Validation loss and perplexity per domain of a run's newest checkpoint.
    Eval {
        /// The run folder.
        run_dir: PathBuf,
        /// Validation tokens per domain (default: the run's `[train] eval_tokens`).
        #[arg(long)]
        tokens: Option<usize>,
        #[command(flatten)]
        threads: ThreadArgs,
    },
    /// Re-run a traced step's forward pass (`[trace] routing`) with its recorded routing
    /// on the weights it ran on, and report every token whose experts differ from what
    /// the live router chooses now; writes nothing to the run folder.
    Replay {
        /// The run folder.
        run_dir: PathBuf,
        /// The traced step (as numbered in metrics.jsonl).
        #[arg(long)]
        step: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        threads: ThreadArgs,
    },
    /// Plots (loss per domain, expert load per layer; PNG and SVG) and a Markdown
    /// summary of a run, written to RUN_DIR/report/.
    Report {
        /// The run folder.
        run_dir: PathBuf,
        /// A logarithmic loss axis.
        #[arg(long)]
        log: bool,
    },
    /// Overlay several runs, one panel per domain and one colour per run (PNG and SVG),
    /// with a table of their last validation losses: DIR/loss.png, loss.svg, compare.md.
    Compare {
        /// The run folders.
        #[arg(required = true, num_args = 1..)]
        runs: Vec<PathBuf>,
        /// Where the charts and table go.
        #[arg(long)]
        out: PathBuf,
        /// A logarithmic loss axis.
        #[arg(long)]
        log: bool,
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
        /// Seed handed to the scheme (and to built-in calibration domains).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Calibration text for routers initialised from centroids (router_init
        /// hidden_centroid, embed_centroid, group_centroid): `builtin:NAME`, a text file or
        /// a folder `recast data prepare` wrote. Repeat once per expert (per expert group
        /// for group_centroid), in expert order.
        #[arg(long = "calibration", value_name = "TEXT")]
        calibration: Vec<String>,
        /// Tokens of each calibration text used (the first ones).
        #[arg(long, default_value_t = crate::run::upcycle::CALIBRATION_TOKENS)]
        calibration_tokens: usize,
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

/// Parse the command line, run the command, and turn errors into a message and a
/// non-zero exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli.command) {
        Ok(()) => {
            crate::distributed::launch::finish();
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            // In a multi-process job the other ranks may wait for this one: end them all.
            crate::distributed::launch::abort_on_error(1);
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
        Command::Plugin(PluginCommand::List { json }) => plugin_list::run(json),
        Command::Plugin(PluginCommand::Check { file, params, limits }) => plugin_check::run(&file, params.as_deref(), limits.limits()),
        Command::Bench(BenchCommand::Languages { repeats }) => bench_languages::languages(repeats.max(1)),
        Command::Bench(BenchCommand::Plugins { router, tokens, experts, top_k, repeats }) => bench::plugins(router.as_deref(), tokens, experts, top_k, repeats.max(1)),
        Command::Bench(BenchCommand::MoeLayer { tokens, hidden, experts, top_k, ffn, dtype, matmul, device, threads, repeats }) => {
            threads.apply();
            bench_model::moe_layer(&bench_model::MoeLayerShape { tokens, hidden, experts, top_k, ffn }, ComputeSettings { precision: dtype, matmul, device, ..Default::default() }, repeats)
        }
        Command::Bench(BenchCommand::TrainStep { config, steps, precision, matmul, device, recompute, threads }) => {
            threads.apply();
            bench_model::train_step(&config, steps, precision, matmul, device, recompute)
        }
        Command::Bench(BenchCommand::Peak { size, threads, repeats }) => {
            threads.apply();
            bench_matmul::run_peak(size, repeats)
        }
        Command::Bench(BenchCommand::Matmul { m, k, n, threads, repeats }) => {
            threads.apply();
            bench_matmul::run(m, k, n, repeats)
        }
        Command::Bench(BenchCommand::ModelStep { model, batch, seq, threads, repeats }) => {
            threads.apply();
            bench_model::model_step(&model, batch, seq, repeats)
        }
        Command::Bench(BenchCommand::CommPlan { model, data_parallel, expert_parallel, tokens_per_rank, activation_bytes }) => {
            distributed::comm_plan(&distributed::PlanArgs { model: model.as_deref(), data_parallel, expert_parallel, tokens_per_rank, activation_bytes })
        }
        Command::Distributed(DistributedCommand::Check { backend }) => distributed::check(backend),
        Command::Forward { model, tokens, out, router, router_params } => forward::run(&model, &tokens, &out, router.as_deref(), &router_params),
        Command::Train { config, out, resume, max_steps, allow_plugin_change, data_parallel, expert_parallel, sets, threads } => {
            threads.apply();
            let layout = (data_parallel.is_some() || expert_parallel.is_some()).then_some(crate::distributed::LayoutOverride { data_parallel, expert_parallel });
            let options = crate::run::RunOptions { allow_plugin_change, layout, sets, ..crate::run::RunOptions::default() };
            train::run(config.as_deref(), out.as_deref(), resume.as_deref(), max_steps, options)
        }
        Command::Bundle(BundleCommand::Pack { dir, out }) => bundle::pack(&dir, &out),
        Command::Bundle(BundleCommand::Verify { bundle, trusted_keys, limits }) => bundle::verify(&bundle, &trusted_keys, &limits.limits()),
        Command::Bundle(BundleCommand::List { bundle, json, limits }) => bundle::list(&bundle, json, &limits.limits()),
        Command::Bundle(BundleCommand::Sign { bundle, key }) => bundle::sign(&bundle, &key),
        Command::Keygen { out } => bundle::keygen(&out),
        Command::Lock { config, out } => lock::run(&config, out.as_deref()),
        Command::Experiment { experiment: file, out, smoke, data, sets, threads } => {
            threads.apply();
            let out = out.unwrap_or_else(|| crate::experiment::default_out(&file));
            experiment::run(&file, &out, smoke, &data, &sets)
        }
        Command::Recipe { recipe, out, max_steps, sets, threads } => {
            threads.apply();
            recipe::run(&recipe, &out, max_steps, &sets)
        }
        Command::Eval { run_dir, tokens, threads } => {
            threads.apply();
            train::eval(&run_dir, tokens)
        }
        Command::Replay { run_dir, step, json, threads } => {
            threads.apply();
            replay::run(&run_dir, step, json)
        }
        Command::Report { run_dir, log } => report::run(&run_dir, log),
        Command::Compare { runs, out, log } => report::compare(&runs, &out, log),
        Command::Data(DataCommand::Prepare { out, domains, tokenizer, jsonl_field, valid_fraction, include, seed }) => {
            data_prepare::run(&out, &domains, &data_prepare::PrepareArgs { tokenizer: &tokenizer, jsonl_field: &jsonl_field, valid_fraction, include: &include, seed })
        }
        Command::Upcycle { sources, scheme, params, out, format, dtype, max_shard_size, seed, calibration, calibration_tokens } => upcycle::run(crate::run::upcycle::UpcycleJob {
            sources,
            scheme,
            params,
            out,
            format,
            dtype: dtype.map(DTypeArg::dtype),
            max_shard_bytes: max_shard_size,
            seed,
            calibration,
            calibration_tokens,
        }),
        Command::Convert { model, out, dtype, max_shard_size } => convert::run(&model, &out, dtype.dtype(), max_shard_size),
    }
}

//! Bounded fuzz and property tests of everything the host reads from outside: run
//! configs, `config.json`, safetensors files, training checkpoints, plugin bundles and
//! plugin outputs. Each target mutates valid inputs with a seeded SplitMix64 and checks
//! that the host never panics, answers every input within a bounded time, never makes a
//! single allocation over [`MAX_SINGLE_ALLOCATION`], and keeps the contract of what it
//! accepts (an accepted plugin output has finite numbers, in-range indices and matching
//! lengths; an accepted run config survives the trainer's own write-back).
//!
//! Short and reproducible by default (a fixed seed, [`DEFAULT_SECONDS`] for the whole
//! file, at most [`DEFAULT_CASES`] cases a target):
//!
//! ```sh
//! cargo test --release --test fuzz -- --nocapture                         # short, as CI runs it
//! RECAST_FUZZ_SECONDS=600 RECAST_FUZZ_SEED=7 cargo test --release --test fuzz -- --nocapture
//! RECAST_FUZZ_SEED=7 RECAST_FUZZ_CASE=1234 cargo test --release --test fuzz hf_config -- --nocapture
//! ```
//!
//! `RECAST_FUZZ_SECONDS` is the budget of the whole file, shared evenly by the targets
//! (and lifts the case cap unless `RECAST_FUZZ_CASES` sets one); `RECAST_FUZZ_CASE`
//! replays one case and prints its input. Every finding is printed with its replay line,
//! the mutations that made it and, for a panic, the host frames of its backtrace.
//!
//! Host bugs found and not yet fixed are listed in [`KNOWN`]: the cases they match are
//! skipped and counted, so the suite stays green until the lead fixes them and deletes
//! the entry.

#![allow(clippy::result_large_err, clippy::type_complexity)]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::Read;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use candle_core::DType;
use recast::model::checkpoint::CheckpointReader;
use recast::model::config::ModelConfig;
use recast::model::hf_config;
use recast::plugins::aux_schedule::LayerCoefficients;
use recast::plugins::bundle::{Bundle, SecretKey};
use recast::plugins::router::{Capacity, DropPolicy, LayerInfo, LayerStats, LogitNorm, RouteAssignment, RouterSpec, RouterUpdate, RoutingMode, ScoreFunction, SelectionBias, TokenLogits, TopkOrder};
use recast::plugins::sampler::{DomainStats, Mixture, SampleRequest};
use recast::plugins::{AuxSchedulePlugin, PluginComponent, PluginEngine, PluginError, PluginInstance, PluginLimits, RouterPlugin, SamplerPlugin};
use recast::train::checkpoint::{DomainProgress, LayerRouting, PluginSnapshot, TrainState};
use recast::train::config::RunConfig;
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------
// Known host bugs
// ---------------------------------------------------------------------------------

/// Host bugs this suite found that are not fixed yet, by id. A case matching one is
/// skipped (and counted as such) instead of failing the run or, for the ones that abort
/// the process, taking the whole test binary down. Each id is checked at one `// KNOWN:`
/// site below; delete the id once the host is fixed and the suite checks it again.
const KNOWN: &[&str] = &[
    // `RunConfig::parse` accepts any `[model.init]` num_layers / num_experts;
    // `ModelInit::model_config` then allocates per layer and expert (num_layers = 2^40
    // aborts the process asking for 1 TiB).
    "run-config-unbounded-shape",
    // `hf_config::from_json` builds per-layer and per-expert vectors from
    // num_hidden_layers / num_local_experts / num_experts before `validate` looks at them
    // (num_experts = 2^32 - 1 aborts the process asking for 32 GiB).
    "hf-config-unbounded-counts",
    // `hf_config::from_json` marks Qwen2-MoE layers with `mlp_only.contains(&l)` for
    // every layer: O(num_hidden_layers x |mlp_only_layers|). `to_json` of a model with
    // 10^6 layers, every other one dense, writes 5 x 10^5 of them, and reading that back
    // runs for hours.
    "hf-config-quadratic-mlp-only-layers",
    // `Bundle::open` (bundle/archive.rs `read`) looks for a duplicate name among all
    // earlier entries for each entry: O(entries^2). 80k empty entries (a 40 MB tar) take
    // 6 s before the layout check refuses the archive; a few hundred MB, hours.
    "bundle-quadratic-entries",
    // `train::checkpoint::load` takes AdamW moments of any shape: `m.w` of [4, 3] beside
    // a weight `w` of [0, 3] loads, and fails (or worse) only in the first optimizer step.
    "train-checkpoint-moment-shapes",
];

/// Whether the known bug `id` is still listed.
fn known(id: &str) -> bool {
    KNOWN.contains(&id)
}

// ---------------------------------------------------------------------------------
// Allocation accounting
// ---------------------------------------------------------------------------------

/// The largest single allocation one fuzz case may make. Every input here is at most a
/// few MB, so a parser or loader that asks for more has trusted a size or count it read
/// before checking it; 512 MiB is far above any honest need (the largest is a 1M-entry
/// plugin output, 4 MB) and below what would endanger a small CI machine.
const MAX_SINGLE_ALLOCATION: usize = 512 << 20;

/// Allocations above this are refused rather than attempted: the process then aborts
/// (Rust's allocation-failure handler cannot be caught), after [`CountingAllocator`] has
/// printed which case asked, instead of filling tens of GB and taking the machine down.
const REFUSED_ALLOCATION: usize = 2 << 30;

/// The system allocator, recording the largest single allocation since the last reset.
struct CountingAllocator;

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// The largest allocation (bytes) since the harness last reset it.
static LARGEST: AtomicUsize = AtomicUsize::new(0);

/// Record `size`; `false` (refuse) above [`REFUSED_ALLOCATION`], after saying so on
/// stderr without allocating.
fn admit(size: usize) -> bool {
    LARGEST.fetch_max(size, Ordering::Relaxed);
    if size <= REFUSED_ALLOCATION {
        return true;
    }
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = size;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let write = |bytes: &[u8]| {
        // SAFETY: writes a valid buffer to stderr; no allocation on this path.
        unsafe { libc::write(2, bytes.as_ptr().cast(), bytes.len()) };
    };
    write(b"\nfuzz: refusing a single allocation of ");
    write(&digits[at..]);
    write(b" bytes (if the process now aborts, this case is the cause): ");
    match RUNNING.try_lock() {
        Ok(running) => write(running.label.as_bytes()),
        Err(_) => write(b"(case unknown)"),
    }
    write(b"\n");
    false
}

// SAFETY: forwards to `System`, only refusing (null) some sizes, which callers handle.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !admit(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !admit(new_size) {
            return std::ptr::null_mut();
        }
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

// ---------------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------------

/// The fuzz targets in this file; the time budget is shared evenly between them.
const TARGETS: u32 = 5;
/// Default time budget of the whole file (seconds), so CI stays near a minute and a half
/// with setup on 2 cores.
const DEFAULT_SECONDS: u64 = 60;
/// Default cap on cases per target in the short mode.
const DEFAULT_CASES: u64 = 20_000;
/// Default seed: fixed, so CI is reproducible.
const DEFAULT_SEED: u64 = 0x5EED;
/// A case running longer than this is a hang: the watchdog aborts the process naming it.
const DEFAULT_HANG_SECONDS: u64 = 60;

struct Settings {
    seed: u64,
    budget: Duration,
    max_cases: u64,
    only_case: Option<u64>,
    hang: Duration,
}

fn env_u64(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    Some(text.trim().parse().unwrap_or_else(|_| panic!("{name}={text:?} is not a number")))
}

fn settings() -> &'static Settings {
    static SETTINGS: OnceLock<Settings> = OnceLock::new();
    SETTINGS.get_or_init(|| {
        let seconds = env_u64("RECAST_FUZZ_SECONDS");
        Settings {
            seed: env_u64("RECAST_FUZZ_SEED").unwrap_or(DEFAULT_SEED),
            budget: Duration::from_secs_f64(seconds.unwrap_or(DEFAULT_SECONDS) as f64 / TARGETS as f64),
            max_cases: env_u64("RECAST_FUZZ_CASES").unwrap_or(if seconds.is_some() { u64::MAX } else { DEFAULT_CASES }),
            only_case: env_u64("RECAST_FUZZ_CASE"),
            hang: Duration::from_secs(env_u64("RECAST_FUZZ_HANG_SECONDS").unwrap_or(DEFAULT_HANG_SECONDS)),
        }
    })
}

// ---------------------------------------------------------------------------------
// Randomness and the shared mutator
// ---------------------------------------------------------------------------------

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, fast, and good enough to pick mutations.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }
}

/// Numbers that break parsers and size arithmetic, spelt as text so TOML and JSON share
/// them (`nan` and `inf` exist only in TOML; JSON gets them as strings, to be refused).
const EDGE_NUMBERS: &[&str] = &[
    "0", "-0", "1", "-1", "2", "3", "7", "0.5", "-0.5", "1.5", "1e308", "-1e308", "1e-308", "5e-324", "1e400", "1e6", "1000000", "1000000000",
    "2147483648", "4294967295", "4294967296", "1099511627776", "4503599627370497", "4611686018427387904", "9223372036854775807",
    "-9223372036854775808", "9223372036854775808", "18446744073709551615", "18446744073709551616", "3.4028235e38", "nan", "inf", "-inf",
    "+inf", "-nan", "1_000", "0x7fffffff", "0o777", "0b1", "1e", "--1", "00",
];

/// f32 values that plugin outputs must be checked for.
const EDGE_F32: &[f32] = &[0.0, -0.0, 1.0, -1.0, 0.5, 1e-3, f32::MAX, -f32::MAX, f32::MIN_POSITIVE, 1e-45, 1e30, -1e30, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 65504.0, 1e-8];

/// Keys the JSON mutator adds: every key `hf_config` interprets, and a few it does not.
const JSON_KEYS: &[&str] = &[
    "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters", "rope_type", "type", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings", "max_position_embeddings", "tie_word_embeddings", "attention_bias", "qkv_bias", "sliding_window",
    "use_sliding_window", "max_window_layers", "layer_types", "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
    "shared_expert_intermediate_size", "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers", "router_aux_loss_coef", "hidden_act", "mlp_bias",
    "recast", "model_config", "weight_map", "dtype", "shape", "data_offsets", "__metadata__", "", "bogus",
];

const JSON_STRINGS: &[&str] = &[
    "", "silu", "gelu", "default", "linear", "llama3", "dynamic", "yarn", "full_attention", "sliding_attention", "LlamaForCausalLM", "MixtralForCausalLM",
    "Qwen2ForCausalLM", "Qwen2MoeForCausalLM", "RecastForCausalLM", "llama", "mixtral", "qwen2_moe", "recast", "F32", "F16", "BF16", "F64", "I64", "BOOL",
    "F8_E4M3", "NaN", "Infinity", "model.safetensors", "../model.safetensors", "/etc/passwd", "\u{0}", "é\u{1F600}",
];

/// One generated input's randomness and its story: every mutation notes what it did,
/// so a finding prints a readable reproducer beside its replay line. All targets mutate
/// through it: bytes, TOML text and JSON values.
struct Case {
    rng: Rng,
    log: Vec<String>,
}

impl Case {
    /// Case `index` of `target` under `seed`: its own stream, so one case replays alone.
    fn new(seed: u64, target: &str, index: u64) -> Self {
        let name = target.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01B3));
        let mut rng = Rng(seed ^ name ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
        rng.next();
        Case { rng, log: Vec::new() }
    }

    fn note(&mut self, what: impl Into<String>) {
        self.log.push(what.into());
    }

    fn edge_number(&mut self) -> &'static str {
        *self.rng.pick(EDGE_NUMBERS)
    }

    fn edge_f32(&mut self) -> f32 {
        *self.rng.pick(EDGE_F32)
    }

    /// A length or count near `n`: often `n`, else an edge (0, ±1, huge).
    fn len_near(&mut self, n: usize, huge: usize) -> usize {
        match self.rng.below(8) {
            0 => 0,
            1 => n.saturating_sub(1),
            2 => n + 1,
            3 => huge,
            _ => n,
        }
    }

    /// A u32 near the bound `n`: `n`, `n + 1`, 0 or the extremes.
    fn u32_near(&mut self, n: u32) -> u32 {
        *self.rng.pick(&[0, 1, n.saturating_sub(1), n, n.saturating_add(1), 1 << 31, u32::MAX])
    }

    /// A byte offset, biased to the start and end where formats keep their headers.
    fn position(&mut self, len: usize) -> usize {
        match self.rng.below(4) {
            0 => self.rng.index(len.min(1024) + 1),
            1 => len - self.rng.index(len.min(1024) + 1),
            _ => self.rng.index(len + 1),
        }
    }

    /// 1 to 4 byte-level mutations: bit flips, edge bytes, truncation, deletion,
    /// insertion, duplication, garbage appended.
    fn mutate_bytes(&mut self, bytes: &mut Vec<u8>) {
        const EDGE_BYTES: &[u8] = b"\x00\xff\x7f\x80\"\\\n[]{}=09 x";
        for _ in 0..self.rng.range(1, 4) {
            let at = self.position(bytes.len());
            match self.rng.below(8) {
                0 | 1 if at < bytes.len() => {
                    let bit = self.rng.below(8);
                    bytes[at] ^= 1 << bit;
                    self.note(format!("flip bit {bit} of byte {at}"));
                }
                2 if at < bytes.len() => {
                    let b = *self.rng.pick(EDGE_BYTES);
                    bytes[at] = b;
                    self.note(format!("set byte {at} to {b:#04x}"));
                }
                3 => {
                    bytes.truncate(at);
                    self.note(format!("truncate at {at}"));
                }
                4 => {
                    let end = (at + self.rng.index(64)).min(bytes.len());
                    bytes.drain(at..end);
                    self.note(format!("delete bytes {at}..{end}"));
                }
                5 => {
                    let n = self.rng.range(1, 16) as usize;
                    let junk: Vec<u8> = (0..n).map(|_| self.rng.next() as u8).collect();
                    bytes.splice(at..at, junk);
                    self.note(format!("insert {n} random bytes at {at}"));
                }
                6 if !bytes.is_empty() => {
                    let from = self.rng.index(bytes.len());
                    let end = (from + self.rng.range(1, 512) as usize).min(bytes.len());
                    let copy = bytes[from..end].to_vec();
                    bytes.splice(at..at, copy);
                    self.note(format!("copy bytes {from}..{end} to {at}"));
                }
                _ => {
                    let n = self.rng.range(1, 600) as usize;
                    bytes.extend((0..n).map(|_| self.rng.next() as u8));
                    self.note(format!("append {n} random bytes"));
                }
            }
        }
    }

    /// A TOML value of any type, edge cases first.
    fn toml_value(&mut self) -> String {
        const OTHERS: &[&str] = &[
            "\"\"", "\"x\"", "\"byte\"", "\"mixtral\"", "\"qwen2_moe\"", "\"../../etc/passwd\"", "\"/dev/zero\"", "\"cosine\"", "\"bf16\"", "\"cuda:99999999999\"",
            "\"keep-last-good\"", "\"ed25519:\"", "'literal'", "\"\\u0000\"", "\"\\uD800\"", "true", "false", "[]", "[1, 2]", "[nan, inf]", "[[]]",
            "[\"router\", \"bogus\"]", "[1, \"a\"]", "{}", "{ a = 1 }", "{ top_k = -1 }", "1979-05-27T07:32:00Z", "07:32:00",
        ];
        match self.rng.below(12) {
            0..=4 => self.edge_number().to_string(),
            5 => format!("\"{}\"", "a".repeat(self.rng.range(1000, 20000) as usize)),
            6 => {
                // Deep nesting, for parsers that recurse.
                let depth = *self.rng.pick(&[100usize, 1000, 100_000]);
                if self.rng.chance(0.5) { "[".repeat(depth) + &"]".repeat(depth) } else { "{ a = ".repeat(depth) + "1" + &" }".repeat(depth) }
            }
            _ => self.rng.pick(OTHERS).to_string(),
        }
    }

    /// 1 to 3 TOML-aware mutations of `text` (values replaced, keys deleted, duplicated
    /// or invented, lines swapped), sometimes followed by byte-level damage.
    fn mutate_toml(&mut self, text: &mut String) {
        const INSERTS: &[&str] = &[
            "bogus = 1", "[bogus]", "[model.bogus]", "[[data.domains]]", "seed = 1", "[train]", "model.init.num_layers = 3", "[plugins.router.params]\nx = 1",
            "[[stages]]\nname = \"s\"\nsteps = 1", "[[stages]]\nname = \"a\"\nsteps = 9223372036854775807\n[[stages]]\nname = \"b\"\nsteps = 9223372036854775807",
            "[[plugin]]\nfile = \"x.wasm\"", "[[plugin]]\nfile = \"../x.wasm\"", "name = \"dup\"",
        ];
        for _ in 0..self.rng.range(1, 3) {
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            if lines.is_empty() {
                lines.push(String::new());
            }
            let i = self.rng.index(lines.len());
            match self.rng.below(8) {
                0 | 1 => {
                    let keyed: Vec<usize> = (0..lines.len()).filter(|&j| lines[j].contains(" = ") && !lines[j].starts_with('#')).collect();
                    if let Some(&j) = keyed.get(self.rng.index(keyed.len().max(1))) {
                        let value = self.toml_value();
                        let key = lines[j].split(" = ").next().unwrap_or_default().to_string();
                        self.note(format!("line {}: {key} = {}", j + 1, shorten(&value, 60)));
                        lines[j] = format!("{key} = {value}");
                    }
                }
                2 => {
                    let spans = number_spans(text);
                    if !spans.is_empty() {
                        let (start, end) = spans[self.rng.index(spans.len())];
                        let value = self.edge_number();
                        self.note(format!("number {:?} at byte {start} -> {value}", &text[start..end]));
                        text.replace_range(start..end, value);
                        continue;
                    }
                }
                3 => {
                    self.note(format!("delete line {}: {}", i + 1, shorten(&lines[i], 60)));
                    lines.remove(i);
                }
                4 => {
                    let to = self.rng.index(lines.len() + 1);
                    self.note(format!("duplicate line {} at {}: {}", i + 1, to + 1, shorten(&lines[i], 60)));
                    let line = lines[i].clone();
                    lines.insert(to, line);
                }
                5 => {
                    let insert = *self.rng.pick(INSERTS);
                    self.note(format!("insert at line {}: {}", i + 1, insert.replace('\n', "\\n")));
                    lines.insert(i, insert.to_string());
                }
                6 => {
                    let j = self.rng.index(lines.len());
                    self.note(format!("swap lines {} and {}", i + 1, j + 1));
                    lines.swap(i, j);
                }
                _ => {
                    let mut bytes = std::mem::take(text).into_bytes();
                    self.mutate_bytes(&mut bytes);
                    *text = String::from_utf8_lossy(&bytes).into_owned();
                    continue;
                }
            }
            *text = lines.join("\n");
        }
    }

    /// A JSON value of any type, nested at most `depth` more levels.
    fn json_value(&mut self, depth: u32) -> Value {
        match self.rng.below(if depth == 0 { 4 } else { 6 }) {
            0 => Value::Null,
            1 => Value::Bool(self.rng.chance(0.5)),
            2 => self.json_number(),
            3 => Value::String(self.rng.pick(JSON_STRINGS).to_string()),
            4 => Value::Array((0..self.rng.below(4)).map(|_| self.json_value(depth - 1)).collect()),
            _ => Value::Object((0..self.rng.below(3)).map(|_| (self.rng.pick(JSON_KEYS).to_string(), self.json_value(depth - 1))).collect()),
        }
    }

    /// An edge number as JSON: a number where JSON has one, else the text as a string.
    fn json_number(&mut self) -> Value {
        let text = self.edge_number();
        serde_json::from_str::<Value>(text).ok().filter(Value::is_number).unwrap_or_else(|| Value::String(text.into()))
    }

    /// 1 to 3 mutations of a JSON tree at random paths: values replaced (any type, edge
    /// numbers, deep nesting, big arrays), keys deleted or added, types swapped.
    fn mutate_json(&mut self, root: &mut Value) {
        for _ in 0..self.rng.range(1, 3) {
            let mut path = String::from("$");
            let node = self.walk(root, &mut path);
            match self.rng.below(8) {
                0 | 1 => {
                    *node = self.json_number();
                    self.note(format!("{path} = {node}"));
                }
                2 => {
                    *node = self.json_value(3);
                    self.note(format!("{path} = {}", shorten(&node.to_string(), 80)));
                }
                3 => match node {
                    Value::Object(map) if !map.is_empty() => {
                        let key = map.keys().nth(self.rng.index(map.len())).cloned().unwrap_or_default();
                        map.remove(&key);
                        self.note(format!("delete {path}.{key}"));
                    }
                    Value::Array(items) if !items.is_empty() => {
                        let i = self.rng.index(items.len());
                        items.remove(i);
                        self.note(format!("delete {path}[{i}]"));
                    }
                    _ => {
                        *node = Value::Null;
                        self.note(format!("{path} = null"));
                    }
                },
                4 => {
                    let key = self.rng.pick(JSON_KEYS).to_string();
                    let value = if self.rng.chance(0.5) { self.json_number() } else { self.json_value(2) };
                    self.note(format!("{path}.{key} = {}", shorten(&value.to_string(), 80)));
                    match node {
                        Value::Object(map) => {
                            map.insert(key, value);
                        }
                        other => *other = Value::Object([(key, value)].into_iter().collect()),
                    }
                }
                5 => {
                    let depth = self.rng.range(2, 64);
                    let mut value = self.json_number();
                    for _ in 0..depth {
                        value = json!([value]);
                    }
                    *node = value;
                    self.note(format!("{path} = a number nested in {depth} arrays"));
                }
                6 => {
                    let n = *self.rng.pick(&[100usize, 10_000]);
                    let item = self.json_value(1);
                    self.note(format!("{path} = [{}; {n}]", shorten(&item.to_string(), 40)));
                    *node = Value::Array(vec![item; n]);
                }
                _ => {
                    let swapped = match &*node {
                        Value::Number(n) => Value::String(n.to_string()),
                        Value::String(s) => s.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number).unwrap_or(Value::Bool(true)),
                        Value::Bool(b) => json!(*b as u8),
                        Value::Array(items) => Value::Object(items.iter().enumerate().map(|(i, v)| (i.to_string(), v.clone())).collect()),
                        Value::Object(map) => Value::Array(map.values().cloned().collect()),
                        Value::Null => json!(0),
                    };
                    self.note(format!("{path}: {} -> {}", shorten(&node.to_string(), 40), shorten(&swapped.to_string(), 40)));
                    *node = swapped;
                }
            }
        }
    }

    /// A random node of `value`, its path appended to `path`.
    fn walk<'v>(&mut self, value: &'v mut Value, path: &mut String) -> &'v mut Value {
        let len = match &*value {
            Value::Object(map) => map.len(),
            Value::Array(items) => items.len(),
            _ => 0,
        };
        if len == 0 || !self.rng.chance(0.7) {
            return value;
        }
        let i = self.rng.index(len);
        match value {
            Value::Object(map) => {
                let (key, child) = map.iter_mut().nth(i).expect("in range");
                path.push_str(&format!(".{key}"));
                self.walk(child, path)
            }
            Value::Array(items) => {
                path.push_str(&format!("[{i}]"));
                self.walk(&mut items[i], path)
            }
            _ => unreachable!("only containers have children"),
        }
    }
}

/// Byte ranges of the numbers in TOML `text` (a digit or sign after `=`, `[`, `,` or a
/// space, up to the next delimiter).
fn number_spans(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (bytes[i].is_ascii_digit() || bytes[i] == b'-' || bytes[i] == b'+') && i > 0 && b"= [,".contains(&bytes[i - 1]);
        if starts {
            let end = (i..bytes.len()).find(|&j| !(bytes[j].is_ascii_alphanumeric() || b".+-_".contains(&bytes[j]))).unwrap_or(bytes.len());
            spans.push((i, end));
            i = end;
        } else {
            i += 1;
        }
    }
    spans
}

/// `text` cut to `max` characters for notes and reports.
fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max { text.to_string() } else { format!("{}… ({} chars)", text.chars().take(max).collect::<String>(), text.chars().count()) }
}

// ---------------------------------------------------------------------------------
// The harness: panics, hangs, allocations, tallies
// ---------------------------------------------------------------------------------

/// What one case came to.
enum Outcome {
    /// The host accepted the input (and it kept the target's contract).
    Accepted,
    /// The host refused it with a typed error.
    Rejected,
    /// Skipped: it matches a bug listed in [`KNOWN`].
    Known(&'static str),
    /// The host broke the target's contract (an accepted invalid output, a typed error
    /// of the wrong kind, an accepted config that cannot be read back): which rule (the
    /// findings are grouped by it), and the details.
    Broken(&'static str, String),
}

/// The case running now, for the watchdog and the allocator's refusal message.
struct Running {
    label: String,
    since: Option<Instant>,
}

static RUNNING: Mutex<Running> = Mutex::new(Running { label: String::new(), since: None });

thread_local! {
    /// Whether this thread is inside a fuzz case: its panics are findings, recorded
    /// instead of printed.
    static IN_CASE: Cell<bool> = const { Cell::new(false) };
    /// The last panic inside a case: message, location and backtrace.
    static LAST_PANIC: RefCell<Option<(String, String)>> = const { RefCell::new(None) };
}

/// Targets run one at a time, so each owns the allocation counter while it runs.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn running() -> MutexGuard<'static, Running> {
    RUNNING.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Install, once, the panic hook that records in-case panics with their backtrace
/// (others go to the default hook) and the watchdog that aborts on a hang.
fn install_hooks() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !IN_CASE.with(Cell::get) {
                return default(info);
            }
            let location = info.location().map(|l| format!("{}:{}", l.file(), l.line())).unwrap_or_default();
            let backtrace = std::backtrace::Backtrace::force_capture().to_string();
            let frames: Vec<&str> = backtrace.lines().filter(|l| l.contains("recast") || l.contains("host/src") || l.contains("tests/fuzz.rs")).take(40).collect();
            LAST_PANIC.with(|p| *p.borrow_mut() = Some((location, format!("{info}\n    backtrace (host frames):\n      {}", frames.join("\n      ")))));
        }));
        let hang = settings().hang;
        std::thread::spawn(move || {
            loop {
                std::thread::sleep(Duration::from_millis(250));
                let state = running();
                if let Some(since) = state.since
                    && since.elapsed() > hang
                {
                    eprintln!("\nfuzz: HANG: {} has run for more than {hang:?}; aborting", state.label);
                    std::process::abort();
                }
            }
        });
    });
}

/// A distinct problem found, with its shortest example.
struct Finding {
    what: String,
    count: u64,
    index: u64,
    mutations: Vec<String>,
    input: String,
    detail: String,
}

/// Run `target`: for each case, generate an input from the case's own stream, then
/// `check` it with panics caught and allocations counted, until the case cap or the
/// time budget runs out (stopping on time is never a failure). Prints the tally, then
/// fails listing every finding with its replay line.
fn fuzz<I>(target: &str, mut generate: impl FnMut(&mut Case) -> I, mut check: impl FnMut(&I) -> Outcome, show: impl Fn(&I) -> String) {
    let s = settings();
    let start = Instant::now();
    let (mut accepted, mut rejected, mut skipped) = (0u64, 0u64, BTreeMap::<&str, u64>::new());
    let mut findings: BTreeMap<String, Finding> = BTreeMap::new();
    let (mut slowest, mut largest) = ((Duration::ZERO, 0u64), (0usize, 0u64));
    let mut cases = 0u64;
    let indices: Box<dyn Iterator<Item = u64>> = match s.only_case {
        Some(i) => Box::new(std::iter::once(i)),
        None => Box::new(0..s.max_cases),
    };
    for index in indices {
        if s.only_case.is_none() && start.elapsed() >= s.budget {
            break;
        }
        cases += 1;
        let mut case = Case::new(s.seed, target, index);
        let input = generate(&mut case);
        if s.only_case.is_some() {
            eprintln!("fuzz {target} case {index}: mutations: {:?}\ninput:\n{}", case.log, show(&input));
        }
        {
            let mut state = running();
            state.label = format!("{target} case {index} (replay: RECAST_FUZZ_SEED={} RECAST_FUZZ_CASE={index} cargo test --release --test fuzz {target} -- --nocapture)", s.seed);
            state.since = Some(Instant::now());
        }
        LARGEST.store(0, Ordering::Relaxed);
        IN_CASE.with(|c| c.set(true));
        let t0 = Instant::now();
        let result = catch_unwind(AssertUnwindSafe(|| check(&input)));
        let took = t0.elapsed();
        IN_CASE.with(|c| c.set(false));
        let peak = LARGEST.swap(0, Ordering::Relaxed);
        running().since = None;
        if took > slowest.0 {
            slowest = (took, index);
        }
        if peak > largest.0 {
            largest = (peak, index);
        }
        let mut found = |key: String, what: String, detail: String| {
            let input = show(&input);
            let f = findings.entry(key).or_insert_with(|| Finding { what, count: 0, index, mutations: case.log.clone(), input: input.clone(), detail: detail.clone() });
            f.count += 1;
            if input.len() < f.input.len() {
                (f.index, f.mutations, f.input, f.detail) = (index, case.log.clone(), input, detail);
            }
        };
        match result {
            Ok(Outcome::Accepted) => accepted += 1,
            Ok(Outcome::Rejected) => rejected += 1,
            Ok(Outcome::Known(id)) => *skipped.entry(id).or_default() += 1,
            Ok(Outcome::Broken(rule, why)) => found(format!("broken: {rule}"), format!("contract broken: {rule}"), why),
            Err(payload) => {
                let (location, detail) = LAST_PANIC.with(|p| p.borrow_mut().take()).unwrap_or_else(|| {
                    let message = payload.downcast_ref::<String>().cloned().or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                    (message.clone(), message)
                });
                found(format!("panic at {location}"), format!("panic at {location}"), detail);
            }
        }
        if peak > MAX_SINGLE_ALLOCATION {
            found("allocation".into(), format!("a single allocation of {peak} bytes (cap {MAX_SINGLE_ALLOCATION})"), String::new());
        }
    }
    let skipped_text = if skipped.is_empty() { String::new() } else { format!(", skipped as known: {skipped:?}") };
    eprintln!(
        "fuzz {target}: seed {}: {cases} cases in {:.1} s: {accepted} ok, {rejected} err{skipped_text}; slowest case #{} took {:.1} ms; largest single allocation {:.1} MiB (case #{})",
        s.seed,
        start.elapsed().as_secs_f64(),
        slowest.1,
        slowest.0.as_secs_f64() * 1e3,
        largest.0 as f64 / (1 << 20) as f64,
        largest.1,
    );
    if !findings.is_empty() {
        let report: Vec<String> = findings
            .values()
            .map(|f| {
                format!(
                    "[{target}] {} in {} case(s); shortest: case {}\n  replay: RECAST_FUZZ_SEED={} RECAST_FUZZ_CASE={} cargo test --release --test fuzz {target} -- --nocapture\n  mutations: {}\n  input: {}\n  {}",
                    f.what,
                    f.count,
                    f.index,
                    s.seed,
                    f.index,
                    f.mutations.join("; "),
                    shorten(&f.input, 3000),
                    f.detail
                )
            })
            .collect();
        panic!("{} finding(s):\n\n{}", findings.len(), report.join("\n\n"));
    }
    assert!(largest.0 <= MAX_SINGLE_ALLOCATION, "case {} made a single allocation of {} bytes", largest.1, largest.0);
}

// ---------------------------------------------------------------------------------
// Target 1: the run config
// ---------------------------------------------------------------------------------

/// The smallest valid run config (as in the config module's own tests).
const MINIMAL_RUN: &str = r#"[model.init]
architecture = "mixtral"
hidden_size = 32
num_layers = 2
num_heads = 4
intermediate_size = 64
num_experts = 4

[[data.domains]]
name = "math"
builtin = "arithmetic"

[train]
steps = 10
batch_size = 2
seq_len = 16
"#;

/// A run config that sets nearly every key: a checkpoint path, shards, plugin files and
/// bundles, trusted keys, stages with their own mixtures and plugin params.
const FULL_RUN: &str = r#"seed = 7
tokenizer = "tok/tokenizer.json"
on_plugin_fault = "keep-last-good"
hot_reload = false
require_pinned = true
lock_file = "run.lock"
trusted_keys = ["keys/alice.pub", "ed25519:AAAA"]

[model]
path = "models/dense"

[[data.domains]]
name = "code"
shards = "data/code"

[[data.domains]]
name = "math"
builtin = "arithmetic"

[plugins.router]
file = "plugins/router.wasm"
params = { top_k = 2, capacity_factor = 1.25 }

[plugins.aux_schedule]
bundle = "policies.tar"
plugin = "constant"

[plugins.sampler]
builtin = "staged"

[optimizer]
lr = 1e-3
beta1 = 0.9
beta2 = 0.95
eps = 1e-8
weight_decay = 0.0
clip_grad_norm = 0.5

[schedule]
kind = "warmup-stable-decay"
warmup_steps = 5
min_lr_ratio = 0.0
decay_fraction = 0.3

[train]
steps = 10
batch_size = 2
seq_len = 8
grad_accum = 2
eval_every = 5
eval_sequences = 4
checkpoint_every = 5
keep_checkpoints = 1

[compute]
precision = "bf16"
matmul = "candle"
device = "cpu"

[[stages]]
name = "router-only"
steps = 4
train = ["router", "experts"]
lr = 1e-4
mixture = [1.0, 0.0]
plugins.router = { top_k = 1 }

[[stages]]
name = "all"
steps = 6
"#;

/// Config files as the host is handed them: absolute, relative, bare, root.
const CONFIG_PATHS: &[&str] = &["/runs/fuzz/run.toml", "run.toml", "", "/"];

/// Above this many layers or experts, `ModelInit::model_config` is not called (see the
/// KNOWN site in [`run_config`]).
const HUGE_COUNT: usize = 1 << 24;

/// `RunConfig::parse` on mutated configs: never a panic, always `Ok` or a typed `Err`.
/// An accepted config must also build its model config (what `recast train` does next)
/// and survive the trainer's write-back: `toml::to_string` (the run's `config.toml`,
/// read again on resume) must give text that parses again.
#[test]
fn run_config_mutations_never_panic() {
    let _serial = serial();
    install_hooks();
    let bases = [include_str!("../examples/tiny-moe.toml"), MINIMAL_RUN, FULL_RUN];
    for (i, base) in bases.iter().enumerate() {
        RunConfig::parse(base, Path::new(CONFIG_PATHS[0])).unwrap_or_else(|e| panic!("base config {i} must parse: {e}"));
    }
    fuzz(
        "run_config",
        |case| {
            let mut text = case.rng.pick(&bases).to_string();
            case.mutate_toml(&mut text);
            (text, *case.rng.pick(CONFIG_PATHS))
        },
        |(text, path)| {
            let config = match RunConfig::parse(text, Path::new(path)) {
                Ok(config) => config,
                Err(e) => {
                    let _ = e.to_string();
                    return Outcome::Rejected;
                }
            };
            if let Some(init) = &config.model.init {
                // KNOWN: run-config-unbounded-shape: `parse` accepts any num_layers /
                // num_experts, and `model_config` allocates per layer and expert before
                // anything checks them (num_layers = 2^62 aborts the process).
                if known("run-config-unbounded-shape") && (init.num_layers > HUGE_COUNT || init.num_experts > HUGE_COUNT) {
                    return Outcome::Known("run-config-unbounded-shape");
                }
                let _ = init.model_config(256).validate();
            }
            let written = match toml::to_string(&config) {
                Ok(written) => written,
                Err(e) => return Outcome::Broken("config-write-back", format!("accepted config cannot be written back as the trainer records it: {e}")),
            };
            match RunConfig::parse(&written, Path::new(path)) {
                Ok(_) => Outcome::Accepted,
                Err(e) => Outcome::Broken("config-write-back", format!("accepted config, written back, no longer parses: {e}\n  written:\n{written}")),
            }
        },
        |(text, path)| format!("path {path:?}\n{text}"),
    );
}

// ---------------------------------------------------------------------------------
// Target 2: config.json
// ---------------------------------------------------------------------------------

fn llama_json() -> Value {
    json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 16, "hidden_size": 8, "intermediate_size": 16,
        "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1, "rms_norm_eps": 1e-5, "hidden_act": "silu",
        "max_position_embeddings": 64, "tie_word_embeddings": false, "attention_bias": false, "torch_dtype": "float32",
        "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
    })
}

fn base_configs() -> Vec<Value> {
    let mixtral = json!({
        "architectures": ["MixtralForCausalLM"], "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
        "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "num_local_experts": 4,
        "num_experts_per_tok": 2, "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}, "sliding_window": 32, "bos_token_id": 1
    });
    let qwen2 = json!({
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "vocab_size": 32, "hidden_size": 16, "intermediate_size": 24,
        "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2, "use_sliding_window": true, "sliding_window": 8,
        "max_window_layers": 1, "layer_types": ["full_attention", "sliding_attention", "sliding_attention"], "tie_word_embeddings": true,
        "max_position_embeddings": 128, "rope_scaling": {"type": "dynamic", "factor": 2.0}
    });
    let qwen2_moe = json!({
        "architectures": ["Qwen2MoeForCausalLM"], "vocab_size": 32, "hidden_size": 16, "intermediate_size": 32, "moe_intermediate_size": 8,
        "num_hidden_layers": 4, "num_attention_heads": 4, "num_key_value_heads": 4, "num_experts": 8, "num_experts_per_tok": 2,
        "shared_expert_intermediate_size": 16, "norm_topk_prob": false, "decoder_sparse_step": 2, "mlp_only_layers": [0], "router_aux_loss_coef": 0.001,
        "rope_scaling": {"rope_type": "linear", "factor": 4.0}
    });
    let mut recast_format = hf_config::from_json(&mixtral).expect("mixtral base");
    if let Some(moe) = recast_format.moe.as_mut() {
        moe.expert_intermediate[1] = 16;
    }
    let recast_format = hf_config::recast_json(&recast_format, serde_json::Map::new()).expect("recast json");
    vec![llama_json(), mixtral, qwen2, qwen2_moe, recast_format]
}

/// Keys whose value sets how much `from_json` allocates (one entry per layer or expert).
const COUNT_KEYS: &[&str] = &["num_hidden_layers", "num_local_experts", "num_experts"];

/// The largest layer or expert count of `value` (0 when none is a number).
fn largest_count(value: &Value) -> u64 {
    COUNT_KEYS.iter().filter_map(|k| value.get(k).and_then(Value::as_u64)).max().unwrap_or(0)
}

/// Above this many `contains` steps (layers x mlp_only_layers), `from_json` is not
/// called (see the KNOWN sites in [`hf_config_mutations_never_panic`]).
const QUADRATIC_STEPS: u64 = 100_000_000;

/// The steps `from_json` spends marking Qwen2-MoE's dense layers.
fn mlp_only_steps(value: &Value) -> u64 {
    let layers = value.get("num_hidden_layers").and_then(Value::as_u64).unwrap_or(0);
    let dense = value.get("mlp_only_layers").and_then(Value::as_array).map_or(0, Vec::len) as u64;
    layers.saturating_mul(dense)
}

/// `hf_config::from_json` on mutated Llama, Mixtral, Qwen2, Qwen2-MoE and Recast-format
/// configs: never a panic; what it accepts must pass `validate` (it says it validated)
/// and write back with `to_json` (or say why not) without panicking.
#[test]
fn hf_config_mutations_never_panic() {
    let _serial = serial();
    install_hooks();
    let bases = base_configs();
    for base in &bases {
        hf_config::from_json(base).unwrap_or_else(|e| panic!("base config must parse: {e}\n{base}"));
    }
    fuzz(
        "hf_config",
        |case| {
            let mut value = case.rng.pick(&bases).clone();
            if case.rng.chance(0.5) {
                // Aim at the numbers: a count, a size or a rope parameter set to an edge.
                let key = *case.rng.pick(&["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim", "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size", "shared_expert_intermediate_size", "decoder_sparse_step", "max_window_layers", "sliding_window", "rope_theta", "max_position_embeddings"]);
                let number = case.json_number();
                case.note(format!("$.{key} = {number}"));
                value[key] = number;
            }
            case.mutate_json(&mut value);
            value
        },
        |value| {
            // KNOWN: hf-config-unbounded-counts: `from_json` builds per-layer and
            // per-expert vectors from num_hidden_layers / num_experts before `validate`
            // bounds anything (2^40 layers asks for a 16 TiB allocation).
            if known("hf-config-unbounded-counts") && largest_count(value) > HUGE_COUNT as u64 {
                return Outcome::Known("hf-config-unbounded-counts");
            }
            // KNOWN: hf-config-quadratic-mlp-only-layers: O(layers x mlp_only_layers).
            if known("hf-config-quadratic-mlp-only-layers") && mlp_only_steps(value) > QUADRATIC_STEPS {
                return Outcome::Known("hf-config-quadratic-mlp-only-layers");
            }
            match hf_config::from_json(value) {
                Ok(config) => {
                    if let Err(e) = config.validate() {
                        return Outcome::Broken("validated", format!("from_json accepted a config that validate refuses: {e}"));
                    }
                    if let Ok(written) = hf_config::to_json(&config) {
                        // KNOWN: hf-config-quadratic-mlp-only-layers, on what Recast writes.
                        if known("hf-config-quadratic-mlp-only-layers") && mlp_only_steps(&written) > QUADRATIC_STEPS {
                            return Outcome::Known("hf-config-quadratic-mlp-only-layers");
                        }
                        let _ = hf_config::from_json(&written);
                    }
                    Outcome::Accepted
                }
                Err(_) => Outcome::Rejected,
            }
        },
        |value| value.to_string(),
    );
}

// ---------------------------------------------------------------------------------
// Target 3: safetensors, through the model and training-checkpoint readers
// ---------------------------------------------------------------------------------

/// Element types with their sizes, as safetensors names them; the last ones are not
/// element types at all.
const DTYPES: &[(&str, u64)] = &[
    ("F32", 4), ("F16", 2), ("BF16", 2), ("F64", 8), ("I64", 8), ("I32", 4), ("I16", 2), ("I8", 1), ("U8", 1), ("U16", 2), ("U32", 4), ("U64", 8), ("BOOL", 1),
    ("F8_E4M3", 1), ("F8_E5M2", 1), ("F4", 1), ("E8M0", 1), ("C64", 8), ("XX", 1), ("", 1),
];

/// The honest shape of tensor `name` in a case whose shapes come from `seed`: 1 to 3
/// dims of 1 to 4; an AdamW moment (`m.NAME`, `v.NAME`) has its weight's shape.
fn honest_shape(seed: u64, name: &str) -> Vec<u64> {
    let base = name.strip_prefix("m.").or_else(|| name.strip_prefix("v.")).unwrap_or(name);
    let mut rng = Case::new(seed, base, 0).rng;
    (0..rng.range(1, 3)).map(|_| rng.range(1, 4)).collect()
}

/// A safetensors file of `tensors` (name, dtype), shaped by [`honest_shape`] with
/// `shapes`: honest when `lie` is 0, else each
/// part lies with probability `lie`: odd dtypes and shapes (0, huge, negative, products
/// that overflow, not numbers), offsets reversed, overlapping, out of range or missing,
/// a header length prefix that is wrong or huge, unpadded headers, short or long data,
/// garbage metadata, the header JSON mutated, and byte damage on top.
fn safetensors_file(case: &mut Case, tensors: &[(&str, &str)], shapes: u64, lie: f64) -> Vec<u8> {
    let mut header = serde_json::Map::new();
    let mut offset = 0u64;
    for &(name, dtype) in tensors {
        let (dtype, size) = if case.rng.chance(lie) {
            let (d, s) = *case.rng.pick(DTYPES);
            case.note(format!("{name}: dtype {d}"));
            (Value::String(d.into()), s)
        } else {
            (Value::String(dtype.into()), DTYPES.iter().find(|(d, _)| *d == dtype).map_or(4, |(_, s)| *s))
        };
        let mut shape: Vec<Value> = honest_shape(shapes, name).into_iter().map(Value::from).collect();
        if case.rng.chance(lie) {
            let i = case.rng.index(shape.len() + 1);
            let dim = case.rng.pick(&[json!(0), json!(1u64 << 31), json!(1u64 << 32), json!(1u64 << 62), json!(u64::MAX), json!(-1), json!(1.5), json!("2"), Value::Null]).clone();
            case.note(format!("{name}: dim {i} = {dim}"));
            if i == shape.len() { shape.push(dim) } else { shape[i] = dim }
        }
        let elements = shape.iter().try_fold(1u64, |n, d| d.as_u64().and_then(|d| n.checked_mul(d)));
        let bytes = elements.and_then(|n| n.checked_mul(size)).filter(|&b| b <= 1 << 16).unwrap_or_else(|| case.rng.below(64));
        let mut offsets = json!([offset, offset + bytes]);
        if case.rng.chance(lie) {
            offsets = case.rng.pick(&[json!([offset + bytes, offset]), json!([0, bytes]), json!([offset, u64::MAX]), json!([offset, offset + bytes + 1]), json!([-1, bytes]), json!([offset]), json!([offset, offset + bytes, 0]), json!("0-4"), Value::Null]).clone();
            case.note(format!("{name}: data_offsets {offsets}"));
        }
        offset += bytes;
        header.insert(name.to_string(), json!({ "dtype": dtype, "shape": shape, "data_offsets": offsets }));
    }
    if case.rng.chance(lie) {
        let metadata = case.rng.pick(&[json!({"format": "pt"}), json!({"format": 1}), json!([]), json!("x"), json!({"": {"nested": true}})]).clone();
        case.note(format!("__metadata__ = {metadata}"));
        header.insert("__metadata__".into(), metadata);
    }
    let mut header = Value::Object(header);
    if case.rng.chance(lie / 2.0) {
        case.mutate_json(&mut header);
    }
    let mut text = header.to_string().into_bytes();
    if !case.rng.chance(lie) {
        text.resize(text.len().div_ceil(8) * 8, b' ');
    }
    let mut length = text.len() as u64;
    if case.rng.chance(lie) {
        length = *case.rng.pick(&[0, 1, length - 1, length + 1, length + 8, u64::MAX, 1 << 63, 100_000_001, 1 << 32]);
        case.note(format!("header length prefix {length}"));
    }
    let mut data_len = offset;
    if case.rng.chance(lie) {
        data_len = case.rng.below(offset + 9);
        case.note(format!("{data_len} data bytes for {offset} declared"));
    }
    let mut file = length.to_le_bytes().to_vec();
    file.extend(text);
    file.extend((0..data_len).map(|i| (i * 37) as u8));
    if case.rng.chance(lie / 2.0) {
        case.mutate_bytes(&mut file);
    }
    file
}

/// A scratch folder reused by every case of a target.
fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp dir")
}

/// The tensors of the tiny model checkpoint, by Hugging Face name, plus names a reader
/// must cope with (a buffer it skips, an empty and a non-ASCII name).
const MODEL_TENSORS: &[(&str, &str)] = &[
    ("model.embed_tokens.weight", "F32"), ("model.layers.0.mlp.up_proj.weight", "BF16"), ("model.layers.0.self_attn.q_proj.weight", "F16"),
    ("lm_head.weight", "F64"), ("model.layers.0.self_attn.rotary_emb.inv_freq", "F32"), ("", "F32"), ("naïve ✓", "F32"),
    ("model.layers.0.block_sparse_moe.experts.0.w1.weight", "F32"), ("model.layers.0.mlp.shared_expert.up_proj.weight", "F32"), ("a.block_sparse_moe.experts", "F32"),
];

/// A model checkpoint folder: which base `config.json`, its `model.safetensors`, maybe
/// a shard index.
struct ModelCase {
    config: usize,
    weights: Vec<u8>,
    index: Option<Value>,
}

/// The train checkpoint's tensors: weights and their AdamW moments.
const TRAIN_TENSORS: &[(&str, &str)] = &[("w", "F32"), ("b", "F32")];
const MOMENT_TENSORS: &[(&str, &str)] = &[("m.w", "F32"), ("v.w", "F32"), ("m.b", "F32"), ("v.b", "F32")];

/// A training checkpoint folder's three files.
struct TrainCase {
    state: Vec<u8>,
    model: Vec<u8>,
    optimizer: Vec<u8>,
}

enum CheckpointCase {
    Model(ModelCase),
    Train(TrainCase),
}

/// A `state.json` as `train::checkpoint::save` writes it.
fn train_state() -> Value {
    let model_config: ModelConfig = hf_config::from_json(&llama_json()).expect("llama");
    let state = TrainState {
        step: 3,
        config_toml: MINIMAL_RUN.into(),
        model_config,
        plugins: vec![PluginSnapshot { role: "router".into(), label: "topk-softmax".into(), digest: "ab".repeat(32), state: "00ff".into() }],
        layers: vec![LayerRouting { layer: 0, spec: json!({"top_k": 2}), selection_bias: vec![0.0; 4] }],
        domains: vec![DomainProgress { name: "math".into(), tokens_seen: 100, train_loss: Some(2.5), valid_loss: None }],
        last_stats: vec![json!({"layer": 0, "expert_load": [1, 2, 3, 4]})],
    };
    serde_json::to_value(&state).expect("state json")
}

/// Write `case` into `dir`, replacing the previous case's files.
fn write_checkpoint(dir: &Path, case: &CheckpointCase, configs: &[Value]) {
    let write = |name: &str, bytes: &[u8]| std::fs::write(dir.join(name), bytes).expect("write scratch file");
    match case {
        CheckpointCase::Model(m) => {
            write("config.json", configs[m.config].to_string().as_bytes());
            write("model.safetensors", &m.weights);
            match &m.index {
                Some(index) => write("model.safetensors.index.json", index.to_string().as_bytes()),
                None => {
                    let _ = std::fs::remove_file(dir.join("model.safetensors.index.json"));
                }
            }
        }
        CheckpointCase::Train(t) => {
            write("state.json", &t.state);
            write("model.safetensors", &t.model);
            write("optimizer.safetensors", &t.optimizer);
        }
    }
}

/// The model reader (`CheckpointReader` and `checkpoint::read`) and the training
/// checkpoint loader (`train::checkpoint::load`) on lying safetensors files, shard
/// indexes and `state.json`s: never a panic or an outsized allocation, a typed error for
/// each; and the honest files load.
#[test]
fn checkpoint_readers_refuse_malformed_safetensors() {
    let _serial = serial();
    install_hooks();
    let model_dir = scratch();
    let train_dir = scratch();
    // Llama, Mixtral (whose tensor names are mapped) and Qwen2-MoE.
    let configs: Vec<Value> = base_configs().into_iter().filter(|c| c["architectures"][0] != "Qwen2ForCausalLM" && c["model_type"] != "recast").collect();
    let state = train_state();

    // The honest files load, so every error below is the lie's doing.
    let mut honest = Case::new(0, "honest", 0);
    let model = CheckpointCase::Model(ModelCase { config: 0, weights: safetensors_file(&mut honest, MODEL_TENSORS, 1, 0.0), index: None });
    write_checkpoint(model_dir.path(), &model, &configs);
    let read = recast::model::checkpoint::read(model_dir.path(), DType::F32).expect("honest model checkpoint");
    assert_eq!(read.params.len(), MODEL_TENSORS.len() - 1, "every tensor but the rotary buffer");
    assert!(read.params.get("model.layers.0.mlp.experts.0.gate_proj.weight").is_none(), "Llama names are kept as they are");
    let train = TrainCase { state: state.to_string().into_bytes(), model: safetensors_file(&mut honest, TRAIN_TENSORS, 1, 0.0), optimizer: safetensors_file(&mut honest, MOMENT_TENSORS, 1, 0.0) };
    write_checkpoint(train_dir.path(), &CheckpointCase::Train(train), &configs);
    recast::train::checkpoint::load(train_dir.path()).unwrap_or_else(|e| panic!("honest train checkpoint: {e}"));

    fuzz(
        "checkpoint",
        |case| {
            let lie = *case.rng.pick(&[0.05, 0.2, 0.5]);
            let shapes = case.rng.next();
            if case.rng.chance(0.5) {
                let config = case.rng.index(configs.len());
                let weights = safetensors_file(case, MODEL_TENSORS, shapes, lie);
                let index = case.rng.chance(0.15).then(|| {
                    let file = case.rng.pick(&[json!("model.safetensors"), json!("../model.safetensors"), json!("/etc/passwd"), json!("sub/model.safetensors"), json!("missing.safetensors"), json!(".."), json!(5), Value::Null]).clone();
                    let mut index = json!({"metadata": {"total_size": 0}, "weight_map": {"model.embed_tokens.weight": "model.safetensors", "lm_head.weight": file}});
                    if case.rng.chance(0.3) {
                        case.mutate_json(&mut index);
                    }
                    case.note(format!("index {index}"));
                    index
                });
                CheckpointCase::Model(ModelCase { config, weights, index })
            } else {
                let mut state = state.clone();
                if case.rng.chance(0.4) {
                    case.mutate_json(&mut state);
                }
                let mut state = state.to_string().into_bytes();
                if case.rng.chance(0.1) {
                    case.mutate_bytes(&mut state);
                }
                let model = safetensors_file(case, TRAIN_TENSORS, shapes, lie);
                let optimizer = safetensors_file(case, MOMENT_TENSORS, shapes, lie);
                CheckpointCase::Train(TrainCase { state, model, optimizer })
            }
        },
        |input| match input {
            CheckpointCase::Model(_) => {
                write_checkpoint(model_dir.path(), input, &configs);
                let dir = model_dir.path();
                let lazily = CheckpointReader::open(dir).and_then(|reader| {
                    let names: Vec<String> = reader.tensors().keys().cloned().collect();
                    names.iter().try_for_each(|name| reader.load(name, DType::BF16).map(drop))
                });
                match (lazily, recast::model::checkpoint::read(dir, DType::F32)) {
                    (Ok(()), Ok(_)) => Outcome::Accepted,
                    (Err(e), Err(f)) => {
                        let _ = (e.to_string(), f.to_string());
                        Outcome::Rejected
                    }
                    (a, b) => Outcome::Broken("readers-agree", format!("the lazy reader and read() disagree: {:?} vs {:?}", a.err().map(|e| e.to_string()), b.err().map(|e| e.to_string()))),
                }
            }
            CheckpointCase::Train(_) => {
                write_checkpoint(train_dir.path(), input, &configs);
                match recast::train::checkpoint::load(train_dir.path()) {
                    Ok(loaded) => {
                        // "Any damage is an error naming the file": a moment that does not
                        // have its weight's shape is damage.
                        for (name, weight) in &loaded.params {
                            let (m, v) = &loaded.moments[name];
                            // KNOWN: train-checkpoint-moment-shapes.
                            if (m.dims() != weight.dims() || v.dims() != weight.dims()) && known("train-checkpoint-moment-shapes") {
                                return Outcome::Known("train-checkpoint-moment-shapes");
                            }
                            if m.dims() != weight.dims() || v.dims() != weight.dims() {
                                return Outcome::Broken("moment-shapes", format!("load accepted moments of shapes {:?} / {:?} for weight `{name}` of shape {:?}", m.dims(), v.dims(), weight.dims()));
                            }
                        }
                        Outcome::Accepted
                    }
                    Err(e) => {
                        let _ = e.to_string();
                        Outcome::Rejected
                    }
                }
            }
        },
        |input| match input {
            CheckpointCase::Model(m) => format!("config.json: {}\nmodel.safetensors ({} bytes): {}\nindex: {:?}", configs[m.config], m.weights.len(), escaped(&m.weights, 600), m.index.as_ref().map(Value::to_string)),
            CheckpointCase::Train(t) => format!(
                "state.json: {}\nmodel.safetensors: {}\noptimizer.safetensors: {}",
                shorten(&String::from_utf8_lossy(&t.state), 600),
                escaped(&t.model, 400),
                escaped(&t.optimizer, 400)
            ),
        },
    );
}

/// The first `max` bytes of `bytes`, printable ASCII as is, the rest escaped.
fn escaped(bytes: &[u8], max: usize) -> String {
    let shown: String = bytes.iter().take(max).flat_map(|&b| std::ascii::escape_default(b)).map(char::from).collect();
    if bytes.len() > max { format!("{shown}… ({} bytes)", bytes.len()) } else { shown }
}

// ---------------------------------------------------------------------------------
// The echo fixtures (targets 4 and 5)
// ---------------------------------------------------------------------------------

const ECHO_PLUGINS: [&str; 3] = ["echo-router", "echo-aux-schedule", "echo-sampler"];

/// The echo fixtures' components (name -> file), built once per test binary with
/// `recast plugin build`. The wasm build goes to the plugin workspace's own target
/// folder whatever `CARGO_TARGET_DIR` the test runs under, so checkouts that share a
/// host target folder do not rebuild each other's plugins.
fn echo_plugins() -> &'static BTreeMap<&'static str, PathBuf> {
    static BUILT: OnceLock<BTreeMap<&'static str, PathBuf>> = OnceLock::new();
    BUILT.get_or_init(|| {
        ECHO_PLUGINS
            .iter()
            .map(|&name| {
                let out = support::recast().args(["plugin", "build", &format!("tests/fixtures/{name}")]).env_remove("CARGO_TARGET_DIR").output().expect("run recast");
                assert!(out.status.success(), "recast plugin build tests/fixtures/{name} failed\n{}", support::text(&out));
                let path = String::from_utf8_lossy(&out.stdout).lines().last().map(PathBuf::from).expect("the built component's path");
                (name, path)
            })
            .collect()
    })
}

// ---------------------------------------------------------------------------------
// Target 4: bundle tars
// ---------------------------------------------------------------------------------

/// One tar entry as the fuzzer builds it: the bytes of its name field, its type flag,
/// the size its header declares (None: the true size) and its data.
#[derive(Clone)]
struct TarEntry {
    name: Vec<u8>,
    kind: u8,
    declared: Option<u64>,
    data: Vec<u8>,
}

impl TarEntry {
    fn file(name: &str, data: Vec<u8>) -> Self {
        TarEntry { name: name.as_bytes().to_vec(), kind: b'0', declared: None, data }
    }
}

/// The tar of `entries` in the layout `recast bundle pack` writes (ustar, mode 0644,
/// mtime 0, no owners), but with whatever names, types and declared sizes the entries
/// say, then the two end blocks unless `end` is false.
fn tar_bytes(entries: &[TarEntry], end: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut header = tar::Header::new_ustar();
        header.set_size(e.data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(tar::EntryType::Regular);
        if let Some(size) = e.declared {
            header.set_size(size);
        }
        let raw = header.as_mut_bytes();
        raw[..100].fill(0);
        raw[345..500].fill(0);
        match e.name.len() {
            0..=100 => raw[..e.name.len()].copy_from_slice(&e.name),
            n => {
                // The ustar split: the head into `prefix`, the last 100 bytes into `name`.
                let (prefix, name) = e.name.split_at(n - 100);
                raw[345..345 + prefix.len().min(155)].copy_from_slice(&prefix[..prefix.len().min(155)]);
                raw[..100].copy_from_slice(name);
            }
        }
        raw[156] = e.kind;
        header.set_cksum();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(&e.data);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    if end {
        out.resize(out.len() + 1024, 0);
    }
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// A bundle input: the bytes of the `.tar`, and how many entries it was built with (0
/// for the packed bundle's few).
struct TarCase {
    bytes: Vec<u8>,
    entries: usize,
}

/// More entries than this are not opened (see the KNOWN site in
/// [`bundles_refuse_malformed_tars`]).
const MANY_ENTRIES: usize = 20_000;

/// Hand-made tars from the real bundle's files with 1 to 3 structural lies: files
/// dropped or duplicated, hostile names (`..`, absolute, empty, non-UTF-8, long),
/// non-regular types (links, devices, fifos, folders, PAX and GNU extension headers),
/// declared sizes that lie (huge, off by a few), thousands of empty entries, a mutated
/// manifest (with its checksum fixed, so the manifest parser sees it), no end blocks.
fn hand_made_tar(case: &mut Case, files: &[TarEntry]) -> TarCase {
    let mut entries = files.to_vec();
    let mut end = true;
    for _ in 0..case.rng.range(1, 3) {
        let i = case.rng.index(entries.len().max(1)).min(entries.len().saturating_sub(1));
        match case.rng.below(10) {
            0 if !entries.is_empty() => {
                case.note(format!("drop entry {i}"));
                entries.remove(i);
            }
            1 if !entries.is_empty() => {
                case.note(format!("duplicate entry {i}"));
                let e = entries[i].clone();
                entries.insert(case.rng.index(entries.len() + 1), e);
            }
            2 if !entries.is_empty() => {
                let hostile: [&[u8]; 10] = [b"../bundle.toml", b"/etc/passwd", b"router/../../x.wasm", b"./bundle.toml", b"", b"a\0b", b"\xff\xfe.wasm", b"bundle.toml/", b"router//echo-router.wasm", b"C:\\x.wasm"];
                let name = case.rng.pick(&hostile).to_vec();
                let name = if case.rng.chance(0.2) { [b"d/".repeat(100), name].concat() } else { name };
                case.note(format!("entry {i} named {}", escaped(&name, 80)));
                entries[i].name = name;
            }
            3 if !entries.is_empty() => {
                let kind = *case.rng.pick(b"123456789xgLKSVZ\0A");
                case.note(format!("entry {i} of type {:?}", kind as char));
                entries[i].kind = kind;
            }
            4 if !entries.is_empty() => {
                let len = entries[i].data.len() as u64;
                let size = *case.rng.pick(&[u64::MAX, u64::MAX / 2, (1 << 33) - 1, 1 << 40, len + 1, len + 511, len + 513, len.saturating_sub(1), 0]);
                case.note(format!("entry {i} declares {size} bytes for {len}"));
                entries[i].declared = Some(size);
            }
            5 => {
                let n = *case.rng.pick(&[10usize, 1000, 5000, 20_000, 100_000]);
                let same = case.rng.chance(0.3);
                case.note(format!("insert {n} empty entries{}", if same { " all named `e`" } else { "" }));
                let at = case.rng.index(entries.len() + 1);
                let empties = (0..n).map(|k| TarEntry::file(&if same { "e".into() } else { format!("e{k}") }, Vec::new()));
                entries.splice(at..at, empties).for_each(drop);
            }
            6 => {
                let (kind, name, data): (u8, &str, Vec<u8>) = match case.rng.below(4) {
                    0 => (b'x', "PaxHeaders/x", b"30 path=router/../../evil.wasm\n".to_vec()),
                    1 => (b'x', "PaxHeaders/x", b"25 size=99999999999999\n".to_vec()),
                    2 => (b'L', "././@LongLink", [b"d/".repeat(200), b"x.wasm\0".to_vec()].concat()),
                    _ => (b'x', "PaxHeaders/x", (0..case.rng.range(1, 64)).map(|_| case.rng.next() as u8).collect()),
                };
                case.note(format!("extension header {:?} before entry {i}: {}", kind as char, escaped(&data, 60)));
                entries.insert(i, TarEntry { name: name.as_bytes().to_vec(), kind, declared: None, data });
            }
            7 => {
                // A mutated manifest with its checksum fixed, so the manifest parser sees it.
                if let Some(m) = entries.iter().position(|e| e.name == b"bundle.toml") {
                    let mut text = String::from_utf8_lossy(&entries[m].data).into_owned();
                    case.mutate_toml(&mut text);
                    let sum = format!("{}\n", sha256_hex(text.as_bytes()));
                    entries[m].data = text.into_bytes();
                    if let Some(s) = entries.iter().position(|e| e.name == b"bundle.toml.sha256") {
                        entries[s].data = sum.into_bytes();
                    }
                }
            }
            8 => {
                end = false;
                case.note("no end-of-archive blocks");
            }
            _ => {
                let name = *case.rng.pick(&["bundle.sig", "extra.wasm", "router/echo-router.wasm"]);
                let data: Vec<u8> = (0..case.rng.below(2000)).map(|_| case.rng.next() as u8).collect();
                case.note(format!("add {name} with {} random bytes", data.len()));
                entries.push(TarEntry::file(name, data));
            }
        }
    }
    TarCase { bytes: tar_bytes(&entries, end), entries: entries.len() }
}

/// `Bundle::open` on damaged `.tar`s: the real packed bundle (unsigned and signed) with
/// bit flips, truncation and garbage, and hand-made tars (see [`hand_made_tar`]). Never a
/// panic or an outsized allocation, a typed error for each; an accepted bundle holds, for
/// every plugin its manifest lists, bytes with the manifest's sha256.
#[test]
fn bundles_refuse_malformed_tars() {
    let _serial = serial();
    install_hooks();
    let built = echo_plugins();
    let dir = scratch();
    let src = dir.path().join("src");
    std::fs::create_dir_all(src.join("router")).expect("src");
    let mut manifest = "name = \"fuzz-echo\"\nversion = \"0.1.0\"\ndescription = \"The echo fixtures\"\n".to_string();
    for name in ECHO_PLUGINS {
        let file = if name == "echo-router" { format!("router/{name}.wasm") } else { format!("{name}.wasm") };
        std::fs::copy(&built[name], src.join(&file)).expect("copy plugin");
        manifest.push_str(&format!("\n[[plugin]]\nfile = \"{file}\"\n"));
    }
    std::fs::write(src.join("bundle.toml"), manifest).expect("bundle.toml");
    let engine = PluginEngine::new().expect("engine");
    let unsigned = dir.path().join("unsigned.tar");
    recast::plugins::bundle::pack(&engine, &src, &unsigned).expect("pack");
    let signed = dir.path().join("signed.tar");
    std::fs::copy(&unsigned, &signed).expect("copy");
    recast::plugins::bundle::sign(&signed, &SecretKey::generate().expect("key")).expect("sign");
    let reals: Vec<Vec<u8>> = [&unsigned, &signed].iter().map(|p| std::fs::read(p).expect("read bundle")).collect();
    let mut files = Vec::new();
    for entry in tar::Archive::new(&reals[1][..]).entries().expect("entries") {
        let mut entry = entry.expect("entry");
        let name = String::from_utf8(entry.path_bytes().into_owned()).expect("name");
        let mut data = Vec::new();
        entry.read_to_end(&mut data).expect("data");
        files.push(TarEntry::file(&name, data));
    }
    assert_eq!(tar_bytes(&files, true), reals[1], "the hand-made tar writer must reproduce the packed layout byte for byte");
    for path in [&unsigned, &signed] {
        Bundle::open(path).unwrap_or_else(|e| panic!("the untouched bundle opens: {e}"));
    }

    let target = dir.path().join("case.tar");
    fuzz(
        "bundle",
        |case| {
            if case.rng.chance(0.4) {
                let mut bytes = case.rng.pick(&reals).clone();
                case.mutate_bytes(&mut bytes);
                TarCase { bytes, entries: 0 }
            } else {
                let mut tar = hand_made_tar(case, &files);
                if case.rng.chance(0.2) {
                    case.mutate_bytes(&mut tar.bytes);
                }
                tar
            }
        },
        |input| {
            // KNOWN: bundle-quadratic-entries: O(entries^2) in archive::read.
            if known("bundle-quadratic-entries") && input.entries > MANY_ENTRIES {
                return Outcome::Known("bundle-quadratic-entries");
            }
            std::fs::write(&target, &input.bytes).expect("write case");
            match Bundle::open(&target) {
                Ok(bundle) => {
                    for p in &bundle.manifest.plugins {
                        let Some(kind) = p.kind else { return Outcome::Broken("plugin-listed", format!("accepted a bundle whose plugin {:?} has no kind", p.name)) };
                        match bundle.plugin(kind, Some(&p.name)) {
                            Ok((_, bytes)) if Some(sha256_hex(bytes)) == p.sha256.as_ref().map(|s| s.to_ascii_lowercase()) => {}
                            Ok(_) => return Outcome::Broken("plugin-listed", format!("accepted a bundle whose plugin {:?} does not have the listed sha256", p.name)),
                            Err(e) => return Outcome::Broken("plugin-listed", format!("accepted a bundle whose plugin {:?} cannot be taken out: {e}", p.name)),
                        }
                    }
                    Outcome::Accepted
                }
                Err(e) => {
                    let _ = e.to_string();
                    Outcome::Rejected
                }
            }
        },
        |input| format!("{} bytes (the mutations above rebuild it from the packed echo bundle)", input.bytes.len()),
    );
}

// ---------------------------------------------------------------------------------
// Target 5: plugin outputs through the echo fixtures
// ---------------------------------------------------------------------------------

/// A list as the echo fixtures take it: `values`, repeated to `len` entries when given.
#[derive(Clone, Debug)]
struct Compact<T> {
    values: Vec<T>,
    len: Option<u32>,
}

impl<T: Clone + Default> Compact<T> {
    fn exact(values: Vec<T>) -> Self {
        Compact { values, len: None }
    }

    /// What the fixture expands it to (the same rule as tests/fixtures/echo-common).
    fn expand(&self) -> Vec<T> {
        match self.len {
            None => self.values.clone(),
            Some(n) if self.values.is_empty() => vec![T::default(); n as usize],
            Some(n) => self.values.iter().cycle().take(n as usize).cloned().collect(),
        }
    }
}

/// A float as TOML spells it (`nan`, `inf`, always with a `.` or an exponent).
fn toml_f32(x: f32) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{:?}", x as f64)
    }
}

fn toml_list<T: Clone + Default>(list: &Compact<T>, item: impl Fn(&T) -> String) -> String {
    let values: Vec<String> = list.values.iter().map(item).collect();
    match list.len {
        Some(n) => format!("{{ values = [{}], len = {n} }}", values.join(", ")),
        None => format!("{{ values = [{}] }}", values.join(", ")),
    }
}

/// A spec as the echo router's params spell it (the WIT names of its enums).
fn toml_spec(s: &RouterSpec) -> String {
    let mut t = format!(
        "{{ score = \"{}\", top_k = {}, order = \"{}\", renormalize = {}, scaling = {}, mode = \"{}\", shared_experts = {}, shared_expert_gate = {}, selection_bias = \"{}\", per_token_route = {}",
        match s.score {
            ScoreFunction::Softmax => "softmax",
            ScoreFunction::Sigmoid => "sigmoid",
        },
        s.top_k,
        match s.order {
            TopkOrder::SoftmaxThenTopk => "softmax-then-topk",
            TopkOrder::TopkThenSoftmax => "topk-then-softmax",
        },
        s.renormalize,
        toml_f32(s.scaling),
        match s.mode {
            RoutingMode::TokenChoice => "token-choice",
            RoutingMode::ExpertChoice => "expert-choice",
        },
        s.shared_experts,
        s.shared_expert_gate,
        match s.selection_bias {
            SelectionBias::None => "none",
            SelectionBias::Learned => "learned",
            SelectionBias::Plugin => "plugin",
        },
        s.per_token_route,
    );
    if let LogitNorm::Skywork(lambda) = s.logit_norm {
        t.push_str(&format!(", skywork = {}", toml_f32(lambda)));
    }
    if let Some(c) = &s.capacity {
        let policy = match c.drop_policy {
            DropPolicy::Probs => "probs",
            DropPolicy::Position => "position",
        };
        t.push_str(&format!(", capacity_factor = {}, drop_policy = \"{policy}\"", toml_f32(c.factor)));
    }
    t + " }"
}

/// Host calls an echo makes besides answering, and whether it fails on purpose.
#[derive(Clone, Debug, Default)]
struct Noise {
    fail: bool,
    log_lines: u32,
    log_bytes: u32,
    metrics: Vec<f32>,
    metric_name_len: u32,
}

impl Noise {
    fn generate(case: &mut Case) -> Self {
        if !case.rng.chance(0.1) {
            return Noise::default();
        }
        let noise = Noise {
            fail: case.rng.chance(0.2),
            log_lines: *case.rng.pick(&[0, 1, 300, 2000]),
            log_bytes: *case.rng.pick(&[0, 10, 4097, 65536]),
            metrics: (0..*case.rng.pick(&[0, 3, 5000])).map(|_| case.edge_f32()).collect(),
            metric_name_len: *case.rng.pick(&[0, 8, 10_000]),
        };
        case.note(format!("noise {noise:?}").chars().take(200).collect::<String>());
        noise
    }

    fn toml(&self) -> String {
        let fail = if self.fail { "fail = \"asked to fail\"\n" } else { "" };
        let metrics: Vec<String> = self.metrics.iter().map(|&m| toml_f32(m)).collect();
        format!("[noise]\n{fail}log_lines = {}\nlog_bytes = {}\nmetrics = [{}]\nmetric_name = \"{}\"\n", self.log_lines, self.log_bytes, metrics.join(", "), "m".repeat(self.metric_name_len as usize))
    }
}

/// Log lines and metrics the host kept stay within its documented caps.
fn check_host_imports(instance: &mut PluginInstance) -> Result<(), Broken> {
    let logs = instance.drain_logs();
    if logs.len() > 256 {
        return Err(("host-import-caps", format!("kept {} log lines, over the cap of 256", logs.len())));
    }
    if let Some(long) = logs.iter().find(|l| l.message.len() > 4096 + 8) {
        return Err(("host-import-caps", format!("kept a {}-byte log line, over the cap of 4 KiB", long.message.len())));
    }
    let metrics = instance.drain_metrics();
    if metrics.len() > 4096 || metrics.iter().any(|(name, _)| name.len() > 4096 + 8) {
        return Err(("host-import-caps", format!("kept {} metrics (cap 4096) or an overlong name", metrics.len())));
    }
    Ok(())
}

/// What a router case asks the echo router to return, and the layers it asks about.
struct RouterCase {
    layers: Vec<LayerInfo>,
    spec: RouterSpec,
    updates: Vec<(u32, Option<Compact<f32>>, Option<RouterSpec>)>,
    logits: TokenLogits,
    route: (u32, Compact<u32>, Compact<f32>),
    noise: Noise,
}

struct AuxCase {
    moe_layers: Vec<u32>,
    /// Entries returned: (layer, or the asked layer at that position; load balance; z-loss).
    coefficients: Compact<(Option<u32>, f32, f32)>,
    noise: Noise,
}

struct SamplerCase {
    request: SampleRequest,
    weights: Option<Compact<f32>>,
    counts: Option<Compact<u32>>,
    noise: Noise,
}

enum OutputCase {
    Router(RouterCase),
    Aux(AuxCase),
    Sampler(SamplerCase),
}

/// A valid spec for layers with at least `experts` experts and `shared` shared ones,
/// then 0 to 2 fields set to edges (k = 0, k > E, NaN or infinite factors, expert choice
/// without a capacity, a gate without shared experts, ...).
fn router_spec(case: &mut Case, experts: u32, shared: u32) -> RouterSpec {
    let capacity = case.rng.chance(0.3).then(|| Capacity { factor: 0.5 + case.rng.unit() * 2.0, drop_policy: if case.rng.chance(0.5) { DropPolicy::Probs } else { DropPolicy::Position } });
    let expert_choice = capacity.is_some() && case.rng.chance(0.3);
    let shared_experts = case.rng.range(0, shared as u64) as u32;
    let mut spec = RouterSpec {
        score: if case.rng.chance(0.5) { ScoreFunction::Softmax } else { ScoreFunction::Sigmoid },
        logit_norm: if case.rng.chance(0.2) { LogitNorm::Skywork(0.5 + case.rng.unit()) } else { LogitNorm::None },
        top_k: case.rng.range(1, experts as u64) as u32,
        order: if case.rng.chance(0.5) { TopkOrder::SoftmaxThenTopk } else { TopkOrder::TopkThenSoftmax },
        renormalize: case.rng.chance(0.5),
        scaling: 0.5 + case.rng.unit() * 2.0,
        mode: if expert_choice { RoutingMode::ExpertChoice } else { RoutingMode::TokenChoice },
        capacity,
        shared_experts,
        shared_expert_gate: shared_experts > 0 && case.rng.chance(0.5),
        selection_bias: *case.rng.pick(&[SelectionBias::None, SelectionBias::Learned, SelectionBias::Plugin]),
        per_token_route: !expert_choice && case.rng.chance(0.2),
    };
    for _ in 0..case.rng.below(3) {
        match case.rng.below(8) {
            0 => spec.top_k = case.u32_near(experts),
            1 => spec.scaling = case.edge_f32(),
            2 => spec.logit_norm = LogitNorm::Skywork(case.edge_f32()),
            3 => spec.capacity = Some(Capacity { factor: case.edge_f32(), drop_policy: DropPolicy::Probs }),
            4 => (spec.mode, spec.capacity) = (RoutingMode::ExpertChoice, None),
            5 => (spec.mode, spec.per_token_route) = (RoutingMode::ExpertChoice, true),
            6 => spec.shared_experts = case.u32_near(shared),
            _ => (spec.shared_experts, spec.shared_expert_gate) = (0, true),
        }
        case.note(format!("spec {}", toml_spec(&spec)));
    }
    spec
}

/// A list of `n` values from `valid`, then maybe one value set to an edge and maybe
/// its length changed (0, ±1, 100k or 1M entries through `len`).
fn compact_list<T: Clone + Default + std::fmt::Debug>(case: &mut Case, what: &str, n: usize, mut valid: impl FnMut(&mut Rng) -> T, edge: impl FnOnce(&mut Case) -> T) -> Compact<T> {
    let mut values: Vec<T> = (0..n).map(|_| valid(&mut case.rng)).collect();
    if !values.is_empty() && case.rng.chance(0.25) {
        let i = case.rng.index(values.len());
        values[i] = edge(case);
        case.note(format!("{what}[{i}] = {:?}", values[i]));
    }
    if case.rng.chance(0.2) {
        let huge = *case.rng.pick(&[100_000, 100_000, 1_000_000]);
        let len = case.len_near(n, huge) as u32;
        case.note(format!("{what}: {len} entries for {n}"));
        if values.is_empty() {
            values.push(valid(&mut case.rng));
        }
        return Compact { values, len: Some(len) };
    }
    Compact::exact(values)
}

fn router_case(case: &mut Case) -> RouterCase {
    let layers: Vec<LayerInfo> = (0..case.rng.range(1, 3))
        .map(|i| {
            let experts = *case.rng.pick(&[1u32, 2, 4, 8, 64]);
            LayerInfo { layer: 2 * i as u32 + 1, num_layers: 8, hidden: 16, num_experts: experts, expert_intermediate: vec![32; experts as usize], shared_experts: *case.rng.pick(&[0, 0, 1, 2]), tokens_per_batch: 64 }
        })
        .collect();
    let min_experts = layers.iter().map(|l| l.num_experts).min().unwrap_or(1);
    let min_shared = layers.iter().map(|l| l.shared_experts).min().unwrap_or(0);
    let spec = router_spec(case, min_experts, min_shared);
    let n_updates = *case.rng.pick(&[0usize, 1, layers.len(), layers.len(), 1000]);
    let updates = (0..n_updates)
        .map(|i| {
            let layer = &layers[i % layers.len()];
            let id = if case.rng.chance(0.05) { case.u32_near(layer.layer) } else { layer.layer };
            let bias = (n_updates < 1000 && case.rng.chance(0.7)).then(|| compact_list(case, "bias", layer.num_experts as usize, |r| (r.unit() - 0.5) * 1e-2, Case::edge_f32));
            let spec = (n_updates < 1000 && case.rng.chance(0.2)).then(|| router_spec(case, layer.num_experts, layer.shared_experts));
            (id, bias, spec)
        })
        .collect();
    // Per-token routing of the first layer's logits: k distinct experts per token.
    let experts = layers[0].num_experts;
    let tokens = *case.rng.pick(&[0u32, 1, 5, 32]);
    let logits = TokenLogits { tokens, experts, values: (0..tokens * experts).map(|_| case.rng.unit()).collect() };
    let k = case.rng.range(1, experts as u64) as u32;
    let mut chosen = Vec::new();
    for _ in 0..tokens {
        let mut all: Vec<u32> = (0..experts).collect();
        for j in 0..k as usize {
            let pick = j + case.rng.index(all.len() - j);
            all.swap(j, pick);
        }
        chosen.extend_from_slice(&all[..k as usize]);
    }
    let mut it = chosen.into_iter();
    let picks = compact_list(case, "route.experts", (tokens * k) as usize, |_| it.next().unwrap_or(0), |c| c.u32_near(experts));
    let weights = compact_list(case, "route.weights", (tokens * k) as usize, |r| r.unit(), Case::edge_f32);
    let route_k = if case.rng.chance(0.1) { case.u32_near(k) } else { k };
    RouterCase { layers, spec, updates, logits, route: (route_k, picks, weights), noise: Noise::generate(case) }
}

fn aux_case(case: &mut Case) -> AuxCase {
    let n = *case.rng.pick(&[0usize, 1, 3, 64]);
    let moe_layers: Vec<u32> = (0..n as u32).map(|i| 2 * i + 1).collect();
    let mut coefficients = compact_list(case, "coefficients", n, |r| (None, r.unit() * 1e-2, r.unit() * 1e-3), |c| (None, c.edge_f32(), c.edge_f32()));
    if !coefficients.values.is_empty() && case.rng.chance(0.1) {
        let i = case.rng.index(coefficients.values.len());
        let layer = case.u32_near(moe_layers.get(i).copied().unwrap_or(0));
        case.note(format!("coefficients[{i}].layer = {layer}"));
        coefficients.values[i].0 = Some(layer);
    }
    AuxCase { moe_layers, coefficients, noise: Noise::generate(case) }
}

fn sampler_case(case: &mut Case) -> SamplerCase {
    let n = *case.rng.pick(&[0usize, 1, 3, 10]);
    let batch = *case.rng.pick(&[0u32, 1, 8, 64, u32::MAX]);
    let domains = (0..n)
        .map(|i| DomainStats { domain: i as u32, name: format!("d{i}"), tokens_available: case.rng.below(1 << 20), tokens_seen: 0, train_loss: Some(case.rng.unit()), valid_loss: None, reference_loss: None })
        .collect();
    let request = SampleRequest { step: case.rng.below(1000), batch_sequences: batch, domains };
    if case.rng.chance(0.5) {
        let weights = compact_list(case, "weights", n, |r| r.unit(), Case::edge_f32);
        SamplerCase { request, weights: Some(weights), counts: None, noise: Noise::generate(case) }
    } else {
        // Counts that sum to the batch, then maybe an edge.
        let mut left = batch;
        let mut counts: Vec<u32> = (0..n)
            .map(|i| {
                let c = if i + 1 == n { left } else { case.rng.below(left as u64 + 1) as u32 };
                left -= c;
                c
            })
            .collect();
        if !counts.is_empty() && case.rng.chance(0.3) {
            let i = case.rng.index(n);
            counts[i] = case.u32_near(counts[i]);
            case.note(format!("counts[{i}] = {}", counts[i]));
        }
        let counts = if case.rng.chance(0.1) { Compact { values: counts, len: Some(case.len_near(n, 100_000) as u32) } } else { Compact::exact(counts) };
        SamplerCase { request, weights: None, counts: Some(counts), noise: Noise::generate(case) }
    }
}

impl OutputCase {
    /// The echo's params: exactly the outputs this case wants returned.
    fn params(&self) -> String {
        match self {
            OutputCase::Router(r) => {
                let mut t = format!("spec = {}\n", toml_spec(&r.spec));
                let (k, experts, weights) = &r.route;
                t.push_str(&format!("route = {{ top_k = {k}, experts = {}, weights = {} }}\n", toml_list(experts, u32::to_string), toml_list(weights, |&w| toml_f32(w))));
                for (layer, bias, spec) in &r.updates {
                    t.push_str(&format!("[[updates]]\nlayer = {layer}\n"));
                    if let Some(bias) = bias {
                        t.push_str(&format!("bias = {}\n", toml_list(bias, |&b| toml_f32(b))));
                    }
                    if let Some(spec) = spec {
                        t.push_str(&format!("spec = {}\n", toml_spec(spec)));
                    }
                }
                t + &r.noise.toml()
            }
            OutputCase::Aux(a) => {
                let item = |(layer, lb, z): &(Option<u32>, f32, f32)| match layer {
                    Some(layer) => format!("{{ layer = {layer}, load_balance = {}, z_loss = {} }}", toml_f32(*lb), toml_f32(*z)),
                    None => format!("{{ load_balance = {}, z_loss = {} }}", toml_f32(*lb), toml_f32(*z)),
                };
                format!("coefficients = {}\n{}", toml_list(&a.coefficients, item), a.noise.toml())
            }
            OutputCase::Sampler(s) => {
                let mixture = match (&s.weights, &s.counts) {
                    (Some(w), _) => format!("weights = {}\n", toml_list(w, |&w| toml_f32(w))),
                    (None, Some(c)) => format!("counts = {}\n", toml_list(c, u32::to_string)),
                    (None, None) => String::new(),
                };
                mixture + &s.noise.toml()
            }
        }
    }

    fn noise(&self) -> &Noise {
        match self {
            OutputCase::Router(r) => &r.noise,
            OutputCase::Aux(a) => &a.noise,
            OutputCase::Sampler(s) => &s.noise,
        }
    }
}

/// The contract of a routing spec for `layer`, as the WIT comments state it.
fn spec_contract(s: &RouterSpec, layer: &LayerInfo) -> Result<(), String> {
    let positive = |what: &str, x: f32| if x.is_finite() && x > 0.0 { Ok(()) } else { Err(format!("{what} = {x} is not finite and > 0")) };
    if s.mode == RoutingMode::TokenChoice && !(1..=layer.num_experts).contains(&s.top_k) {
        return Err(format!("top-k {} outside 1..={} experts", s.top_k, layer.num_experts));
    }
    positive("scaling", s.scaling)?;
    if let LogitNorm::Skywork(lambda) = s.logit_norm {
        positive("skywork lambda", lambda)?;
    }
    if let Some(c) = &s.capacity {
        positive("capacity factor", c.factor)?;
    }
    if s.mode == RoutingMode::ExpertChoice && (s.capacity.is_none() || s.per_token_route) {
        return Err("expert choice without a capacity, or with per-token routing".into());
    }
    if s.shared_experts > layer.shared_experts || (s.shared_expert_gate && s.shared_experts == 0) {
        return Err(format!("{} shared experts (gate {}) for a layer with {}", s.shared_experts, s.shared_expert_gate, layer.shared_experts));
    }
    Ok(())
}

fn updates_contract(updates: &[RouterUpdate], layers: &[LayerInfo]) -> Result<(), String> {
    for u in updates {
        let layer = layers.iter().find(|l| l.layer == u.layer).ok_or_else(|| format!("an update for layer {}, which is not an MoE layer", u.layer))?;
        if let Some(delta) = &u.bias_delta {
            if delta.len() != layer.num_experts as usize {
                return Err(format!("{} bias deltas for {} experts", delta.len(), layer.num_experts));
            }
            if let Some(d) = delta.iter().find(|d| !d.is_finite()) {
                return Err(format!("bias delta {d}"));
            }
        }
        if let Some(spec) = &u.spec {
            spec_contract(spec, layer)?;
        }
    }
    Ok(())
}

fn route_contract(a: &RouteAssignment, logits: &TokenLogits) -> Result<(), String> {
    if !(1..=logits.experts).contains(&a.top_k) {
        return Err(format!("route top-k {} outside 1..={}", a.top_k, logits.experts));
    }
    let slots = logits.tokens as usize * a.top_k as usize;
    if a.experts.len() != slots || a.weights.len() != slots {
        return Err(format!("{} experts and {} weights for {slots} slots", a.experts.len(), a.weights.len()));
    }
    for (t, chosen) in a.experts.chunks(a.top_k as usize).enumerate() {
        if let Some(e) = chosen.iter().find(|&&e| e >= logits.experts) {
            return Err(format!("token {t} routed to expert {e} of {}", logits.experts));
        }
        if (1..chosen.len()).any(|j| chosen[..j].contains(&chosen[j])) {
            return Err(format!("token {t} routed to the same expert twice"));
        }
    }
    match a.weights.iter().find(|w| !w.is_finite()) {
        Some(w) => Err(format!("route weight {w}")),
        None => Ok(()),
    }
}

fn coefficients_contract(c: &[LayerCoefficients], moe_layers: &[u32]) -> Result<(), String> {
    if c.len() != moe_layers.len() {
        return Err(format!("{} coefficients for {} layers", c.len(), moe_layers.len()));
    }
    for (c, &layer) in c.iter().zip(moe_layers) {
        if c.layer != layer {
            return Err(format!("coefficients for layer {} where layer {layer} was asked", c.layer));
        }
        if !(c.load_balance.is_finite() && c.load_balance >= 0.0 && c.z_loss.is_finite() && c.z_loss >= 0.0) {
            return Err(format!("coefficients {} / {} are not finite and >= 0", c.load_balance, c.z_loss));
        }
    }
    Ok(())
}

fn mixture_contract(m: &Mixture, request: &SampleRequest) -> Result<(), String> {
    let n = request.domains.len();
    match m {
        Mixture::Weights(w) if w.len() != n => Err(format!("{} weights for {n} domains", w.len())),
        Mixture::Weights(w) if w.iter().any(|w| !(w.is_finite() && *w >= 0.0)) => Err(format!("weights {:?} are not all finite and >= 0", shorten(&format!("{w:?}"), 80))),
        Mixture::Weights(w) if w.iter().all(|&w| w == 0.0) => Err("all weights are 0".into()),
        Mixture::Counts(c) if c.len() != n => Err(format!("{} counts for {n} domains", c.len())),
        Mixture::Counts(c) if c.iter().map(|&c| c as u64).sum::<u64>() != request.batch_sequences as u64 => Err(format!("counts do not sum to the batch of {}", request.batch_sequences)),
        _ => Ok(()),
    }
}

/// A broken contract: the rule (findings are grouped by it) and the details.
type Broken = (&'static str, String);

/// Judge one adapter call: an accepted output must keep its contract; a refusal must
/// be `invalid-output`, or `refused` when the case asked the echo to fail. `wanted` is
/// the contract verdict on what the echo was asked to return, counted when the host
/// refuses an output the contract allows (stricter than the WIT says: reported, not a
/// failure).
fn judge<T>(call: &str, result: Result<T, PluginError>, contract: impl Fn(&T) -> Result<(), String>, wanted: Result<(), String>, noise: &Noise, stricter: &mut u64) -> Result<(), Broken> {
    match result {
        Ok(output) => contract(&output).map_err(|why| ("accepted-invalid-output", format!("{call}: accepted an output that breaks the contract: {why}"))),
        Err(e) if e.code() == "refused" && noise.fail => Ok(()),
        Err(e) if e.code() == "invalid-output" => {
            if wanted.is_ok() {
                *stricter += 1;
            }
            Ok(())
        }
        Err(e) => Err(("wrong-error-kind", format!("{call}: refused with `{}`, not invalid-output: {e}", e.code()))),
    }
}

/// Run one case through the host's adapters: `Ok(true)` when every call was accepted,
/// `Err` on a broken contract.
fn run_output_case(engine: &PluginEngine, components: &BTreeMap<&str, PluginComponent>, input: &OutputCase, stricter: &mut u64) -> Result<bool, Broken> {
    let params = input.params();
    let limits = PluginLimits::default();
    let noise = input.noise();
    let new_error = |e: PluginError| ("echo-configure", format!("the echo refused its own params ({}): {e}", e.code()));
    let mut all_ok = true;
    let mut judged = |verdict: Result<(), Broken>, accepted: bool| -> Result<(), Broken> {
        all_ok &= accepted;
        verdict
    };
    match input {
        OutputCase::Router(r) => {
            let mut router = RouterPlugin::new(engine, &components["echo-router"], &params, 0, limits).map_err(new_error)?;
            for layer in &r.layers {
                let result = router.spec(layer);
                let accepted = result.is_ok();
                judged(judge("spec", result, |s| spec_contract(s, layer), spec_contract(&r.spec, layer), noise, stricter), accepted)?;
            }
            let stats: Vec<LayerStats> = r
                .layers
                .iter()
                .map(|l| LayerStats { layer: l.layer, tokens: 64, top_k: 2, expert_load: vec![1; l.num_experts as usize], dropped: 0, overflow_rate: 0.0, gate_entropy: 1.0, max1_over_max2: 1.5, load_balance_loss: 1.0, z_loss: 0.1 })
                .collect();
            let wanted: Vec<RouterUpdate> = r.updates.iter().map(|(layer, bias, spec)| RouterUpdate { layer: *layer, bias_delta: bias.as_ref().map(Compact::expand), spec: spec.clone() }).collect();
            let result = router.on_step(7, &stats, &r.layers);
            let accepted = result.is_ok();
            judged(judge("on-step", result, |u| updates_contract(u, &r.layers), updates_contract(&wanted, &r.layers), noise, stricter), accepted)?;
            let (k, experts, weights) = &r.route;
            let wanted = RouteAssignment { top_k: *k, experts: experts.expand(), weights: weights.expand() };
            let result = router.route(&r.layers[0], &r.logits);
            let accepted = result.is_ok();
            judged(judge("route", result, |a| route_contract(a, &r.logits), route_contract(&wanted, &r.logits), noise, stricter), accepted)?;
            check_host_imports(router.instance())?;
        }
        OutputCase::Aux(a) => {
            let mut schedule = AuxSchedulePlugin::new(engine, &components["echo-aux-schedule"], &params, 0, limits).map_err(new_error)?;
            let wanted: Vec<LayerCoefficients> = a
                .coefficients
                .expand()
                .iter()
                .enumerate()
                .map(|(i, &(layer, load_balance, z_loss))| LayerCoefficients { layer: layer.unwrap_or_else(|| a.moe_layers.get(i).copied().unwrap_or(0)), load_balance, z_loss })
                .collect();
            let result = schedule.coefficients(3, &a.moe_layers, &[]);
            let accepted = result.is_ok();
            judged(judge("coefficients", result, |c| coefficients_contract(c, &a.moe_layers), coefficients_contract(&wanted, &a.moe_layers), noise, stricter), accepted)?;
            check_host_imports(schedule.instance())?;
        }
        OutputCase::Sampler(s) => {
            let mut sampler = SamplerPlugin::new(engine, &components["echo-sampler"], &params, 0, limits).map_err(new_error)?;
            let wanted = match (&s.weights, &s.counts) {
                (Some(w), _) => Mixture::Weights(w.expand()),
                (None, Some(c)) => Mixture::Counts(c.expand()),
                (None, None) => Mixture::Weights(Vec::new()),
            };
            let result = sampler.next(&s.request);
            let accepted = result.is_ok();
            // An accepted mixture must also draw a batch: every sequence from a real domain.
            let drawn = match &result {
                Ok(mixture) if s.request.batch_sequences <= 4096 => {
                    let n = s.request.batch_sequences as usize;
                    let domains = recast::data::batch::assign_domains(mixture, n, &mut recast::model::init::SplitMix64(5));
                    domains.iter().find(|&&d| d >= s.request.domains.len()).map(|d| ("mixture-draw", format!("next: an accepted mixture drew a sequence from domain {d} of {}", s.request.domains.len())))
                }
                _ => None,
            };
            judged(judge("next", result, |m| mixture_contract(m, &s.request), mixture_contract(&wanted, &s.request), noise, stricter), accepted)?;
            if let Some(why) = drawn {
                return Err(why);
            }
            check_host_imports(sampler.instance())?;
        }
    }
    Ok(all_ok)
}

/// Plugin outputs through the echo fixtures and the host's adapters: specs, on-step
/// updates, per-token routes, aux coefficients and mixtures set to edges (NaN, ±inf,
/// f32::MAX, negative, zero, k = 0 or huge, indices out of range, duplicates, wrong
/// lengths, empty and 100k to 1M-entry lists), plus log floods and odd metrics. The host
/// never panics; every output is accepted only if it keeps the contract, else refused as
/// `invalid-output`; log and metric buffers stay within their caps.
#[test]
fn plugin_outputs_are_validated() {
    let _serial = serial();
    install_hooks();
    let engine = PluginEngine::new().expect("engine");
    let components: BTreeMap<&str, PluginComponent> = echo_plugins().iter().map(|(&name, path)| (name, engine.load_file(path).expect("load echo"))).collect();
    let mut stricter = 0u64;
    fuzz(
        "plugin_outputs",
        |case| match case.rng.below(3) {
            0 => OutputCase::Router(router_case(case)),
            1 => OutputCase::Aux(aux_case(case)),
            _ => OutputCase::Sampler(sampler_case(case)),
        },
        |input| match run_output_case(&engine, &components, input, &mut stricter) {
            Ok(true) => Outcome::Accepted,
            Ok(false) => Outcome::Rejected,
            Err((rule, why)) => Outcome::Broken(rule, why),
        },
        |input| shorten(&input.params(), 3000),
    );
    eprintln!("fuzz plugin_outputs: {stricter} output(s) refused that the WIT contract allows (stricter host checks)");
}

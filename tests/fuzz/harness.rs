//! The fuzz harness: the counting allocator, the settings from the environment, the
//! SplitMix64 stream, and [`fuzz`], which runs a target's cases with panics caught,
//! hangs watched and the largest allocation of each case recorded.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use crate::mutate::{Case, shorten};

/// The largest single allocation one fuzz case may make. Every input here is at most a
/// few MB, so a parser or loader that asks for more has trusted a size or count it read
/// before checking it; 512 MiB is far above any honest need (the largest is a 1M-entry
/// plugin output, 4 MB) and below what would endanger a small CI machine.
pub const MAX_SINGLE_ALLOCATION: usize = 512 << 20;

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

/// The fuzz targets in this file; the time budget is shared evenly between them.
const TARGETS: u32 = 5;

/// Default time budget of the whole file (seconds), so CI stays near a minute and a half
/// with setup on 2 cores.
pub const DEFAULT_SECONDS: u64 = 60;

/// Default cap on cases per target in the short mode.
pub const DEFAULT_CASES: u64 = 20_000;

/// Default seed: fixed, so CI is reproducible.
const DEFAULT_SEED: u64 = 0x5EED;

/// A case running longer than this is a hang: the watchdog aborts the process naming it.
const DEFAULT_HANG_SECONDS: u64 = 60;

struct Settings {
    pub seed: u64,
    pub budget: Duration,
    pub max_cases: u64,
    pub only_case: Option<u64>,
    pub hang: Duration,
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

/// SplitMix64 (Steele, Lea & Flood 2014): tiny, fast, and good enough to pick mutations.
#[derive(Clone)]
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.index(items.len())]
    }
}

/// What one case came to.
pub enum Outcome {
    /// The host accepted the input (and it kept the target's contract).
    Accepted,
    /// The host refused it with a typed error.
    Rejected,
    /// The host broke the target's contract (an accepted invalid output, a typed error
    /// of the wrong kind, an accepted config that cannot be read back): which rule (the
    /// findings are grouped by it), and the details.
    Broken(&'static str, String),
}

/// The case running now, for the watchdog and the allocator's refusal message.
struct Running {
    pub label: String,
    pub since: Option<Instant>,
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
pub fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn running() -> MutexGuard<'static, Running> {
    RUNNING.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Install, once, the panic hook that records in-case panics with their backtrace
/// (others go to the default hook) and the watchdog that aborts on a hang.
pub fn install_hooks() {
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
    pub what: String,
    pub count: u64,
    pub index: u64,
    pub mutations: Vec<String>,
    pub input: String,
    pub detail: String,
}

/// Run `target`: for each case, generate an input from the case's own stream, then
/// `check` it with panics caught and allocations counted, until the case cap or the
/// time budget runs out (stopping on time is never a failure). Prints the tally, then
/// fails listing every finding with its replay line.
pub fn fuzz<I>(target: &str, mut generate: impl FnMut(&mut Case) -> I, mut check: impl FnMut(&I) -> Outcome, show: impl Fn(&I) -> String) {
    let s = settings();
    let start = Instant::now();
    let (mut accepted, mut rejected) = (0u64, 0u64);
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
    eprintln!(
        "fuzz {target}: seed {}: {cases} cases in {:.1} s: {accepted} ok, {rejected} err; slowest case #{} took {:.1} ms; largest single allocation {:.1} MiB (case #{})",
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

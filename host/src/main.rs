//! The `recast` binary.

/// mimalloc keeps freed pages for reuse: training frees and reallocates tensors of tens
/// of megabytes every step, which the system allocator hands back to the kernel and
/// faults in again (page faults and TLB shootdowns were a tenth of an MoE layer's time).
#[global_allocator]
static ALLOCATOR: recast::memory::Counted<mimalloc::MiMalloc> = recast::memory::Counted { inner: mimalloc::MiMalloc };

fn main() -> std::process::ExitCode {
    // Setup purges freed pages as mimalloc does by default; the first step (or a
    // benchmark's timed loop) hands setup's pages back and stops purging
    // (`recast::memory::enter_steady_state`): every step reallocates the same sizes, and
    // purging them made the kernel zero and fault them in again (9 % of an MoE layer's
    // time). mimalloc's own `MIMALLOC_PURGE_DELAY`, when set, wins throughout.
    // A closed pipe ends the process quietly, as it does `ls` or `rg` (`recast plugin
    // inspect … | head -1`); Rust's default (SIGPIPE ignored) turns it into a panic in
    // `println!`.
    // SAFETY: restoring the default disposition of one signal, before any other thread.
    #[cfg(unix)]
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    recast::cli::main()
}

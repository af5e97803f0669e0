//! The `recast` binary.

/// mimalloc keeps freed pages for reuse: training frees and reallocates tensors of tens
/// of megabytes every step, which the system allocator hands back to the kernel and
/// faults in again (page faults and TLB shootdowns were a tenth of an MoE layer's time).
#[global_allocator]
static ALLOCATOR: recast::memory::Counted<mimalloc::MiMalloc> = recast::memory::Counted { inner: mimalloc::MiMalloc };

fn main() -> std::process::ExitCode {
    // Never hand freed pages back: every step reallocates the same sizes, and purging
    // them made the kernel zero and fault them in again (9 % of an MoE layer's time).
    // mimalloc's own `MIMALLOC_PURGE_DELAY`, when set, wins: purging trades time for
    // resident memory (at a real model's shape, 0 ms: 0.46 GiB less, 18 % slower).
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: set once, before any other thread exists.
        unsafe { libmimalloc_sys::mi_option_set(recast::memory::MI_OPTION_PURGE_DELAY, -1) };
    }
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

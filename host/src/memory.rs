//! This machine's memory, so that work whose size a user controls (a model shape, a
//! sequence length) is refused up front with the numbers instead of aborting inside
//! the allocator.

/// Total physical memory in bytes (`MemTotal`), or `None` where it cannot be read.
/// The total, not what is free now: a check against it gives the same answer however
/// loaded the machine is.
pub fn physical_bytes() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// `Err` with a sentence when `what` needs more than this machine's memory.
pub fn ensure_fits(what: &str, bytes: u128) -> Result<(), String> {
    match physical_bytes() {
        Some(total) if bytes > total as u128 => Err(format!("{what} needs about {:.1} GiB, more than this machine's {:.1} GiB of memory", bytes as f64 / GIB, total as f64 / GIB)),
        _ => Ok(()),
    }
}

const GIB: f64 = (1u64 << 30) as f64;

/// A global allocator that counts the bytes live in `inner`: resident memory also holds
/// what the allocator keeps for reuse, so only this count says how much a step needs.
pub struct Counted<A> {
    /// The allocator that does the work.
    pub inner: A,
}

static LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
static PEAK_LIVE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl<A> Counted<A> {
    fn grew(size: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        let live = LIVE.fetch_add(size, Relaxed) + size;
        PEAK_LIVE.fetch_max(live, Relaxed);
    }
}

// SAFETY: every call goes to `inner` unchanged; the counters are only bookkeeping.
unsafe impl<A: std::alloc::GlobalAlloc> std::alloc::GlobalAlloc for Counted<A> {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { self.inner.alloc(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { self.inner.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { self.inner.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller's contract, passed on.
        let p = unsafe { self.inner.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), std::sync::atomic::Ordering::Relaxed);
            Self::grew(new_size);
        }
        p
    }
}

/// mimalloc's `mi_option_purge_delay` (its option enum is not exported as constants):
/// [`enter_steady_state`] sets it to -1, so freed pages stay for reuse by the next step.
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// Where a process's work turns into repeated steps (the first training step, a
/// benchmark's timed loop): hands back to the operating system the pages setup freed
/// (loading or initialising the model and the optimizer state, whose peak and shapes
/// are not a step's), then stops purging, so that the steps reuse their own freed pages
/// instead of faulting fresh ones in (page faults and zeroing were a tenth of an MoE
/// layer's time). Setup runs with mimalloc's default purging: kept, its pages stayed
/// resident beside the steps' own, 1.5 GiB of a real-shape run. Once per process; a
/// no-op where `MIMALLOC_PURGE_DELAY` is set (mimalloc's own setting wins).
pub fn enter_steady_state() {
    static ENTERED: std::sync::Once = std::sync::Once::new();
    ENTERED.call_once(|| {
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_some() {
            return;
        }
        // SAFETY: mimalloc's `mi_collect` and option calls have no preconditions; where
        // the binary's allocator is not mimalloc they act on an unused heap.
        unsafe {
            libmimalloc_sys::mi_collect(true);
            // Each thread's heap holds the pages it allocated; the pool's threads made most.
            rayon::broadcast(|_| libmimalloc_sys::mi_collect(true));
            libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
        }
    });
}

/// Bytes the process's allocations hold now, and the most they have held, when the
/// binary's allocator is [`Counted`] (`recast` is); zero otherwise.
pub fn live_bytes() -> (usize, usize) {
    use std::sync::atomic::Ordering::Relaxed;
    (LIVE.load(Relaxed), PEAK_LIVE.load(Relaxed))
}

/// The most resident memory this process has held so far, in bytes (the kernel's
/// high-water mark): what a run reports as `peak_rss_mib`, to compare memory with other
/// trainers on the same machine. `None` where it cannot be read.
pub fn peak_rss_bytes() -> Option<u64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage fills the rusage it is given and touches nothing else.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    // SAFETY: it succeeded, so the struct is filled (and it was zeroed before).
    (rc == 0).then(|| unsafe { usage.assume_init() }.ru_maxrss.max(0) as u64 * 1024)
}

/// The memory this process holds resident now (`/proc/self/statm`), in bytes: logged at
/// the phases of a training step (`-v`) to show which phase raises the peak. `None`
/// where it cannot be read.
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    pages.checked_mul(u64::try_from(page).ok()?)
}

/// Page faults this process has taken without reading from disk (`ru_minflt`): each
/// is a page the kernel had to map (and zero) afresh, so their count per step shows
/// whether steady-state steps reuse their buffers. `None` where it cannot be read.
pub fn minor_faults() -> Option<u64> {
    let mut usage = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: as in `peak_rss_bytes`.
    let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
    // SAFETY: it succeeded, so the struct is filled.
    (rc == 0).then(|| unsafe { usage.assume_init() }.ru_minflt.max(0) as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_total_is_read_and_huge_requests_are_refused() {
        let total = super::physical_bytes().expect("/proc/meminfo");
        assert!(total > 1 << 28);
        assert!(super::ensure_fits("a small thing", 1024).is_ok());
        let err = super::ensure_fits("a huge thing", u128::MAX).unwrap_err();
        assert!(err.contains("a huge thing needs about") && err.contains("GiB of memory"), "{err}");
    }
}

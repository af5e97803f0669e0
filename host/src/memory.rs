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

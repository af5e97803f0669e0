//! How much a bundle may hold. A bundle comes from someone else: reading it is bounded
//! in memory and time before any of its bytes are trusted, so a tar with a 2 GiB entry
//! of zeros or 80,000 empty entries is refused at once instead of being read.

use serde::{Deserialize, Serialize};

const MIB: u64 = 1 << 20;

/// Size limits for reading a bundle (run config `[bundle_limits]`, or the `--max-*`
/// flags of `recast bundle`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BundleLimits {
    /// Largest file inside a bundle, in MiB. Python and JavaScript components embed an
    /// interpreter (tens of MiB); Rust ones are a few hundred KiB.
    pub max_entry_mib: u64,
    /// Largest bundle (the `.tar`, or the listed files of a folder together), in MiB.
    pub max_bundle_mib: u64,
    /// Most entries a `.tar` may hold.
    pub max_entries: usize,
}

impl Default for BundleLimits {
    fn default() -> Self {
        BundleLimits { max_entry_mib: 256, max_bundle_mib: 1024, max_entries: 4096 }
    }
}

impl BundleLimits {
    /// The per-entry limit in bytes.
    pub fn entry_bytes(&self) -> u64 {
        self.max_entry_mib.saturating_mul(MIB)
    }

    /// The whole-bundle limit in bytes.
    pub fn bundle_bytes(&self) -> u64 {
        self.max_bundle_mib.saturating_mul(MIB)
    }

    /// The per-entry limit as a refusal names it (with the key that raises it).
    pub fn describe_entry_limit(&self) -> String {
        format!("{} MiB per file (`max_entry_mib`)", self.max_entry_mib)
    }

    /// The whole-bundle limit as a refusal names it.
    pub fn describe_bundle_limit(&self) -> String {
        format!("{} MiB per bundle (`max_bundle_mib`)", self.max_bundle_mib)
    }
}

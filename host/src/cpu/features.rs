//! The CPU's vector features, detected once per process. Every kernel with a
//! `#[target_feature]` variant asks here which one the CPU can run, so the detection
//! (and the list of what Recast's kernels care about) lives in one place.

use std::sync::OnceLock;

/// The x86-64 features Recast's kernels have variants for; all `false` on other CPUs,
/// where the kernels run their portable bodies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuFeatures {
    /// AVX2 (256-bit integer and float vectors).
    pub avx2: bool,
    /// Fused multiply-add, which the AVX2 variants of the activation kernels assume.
    pub fma: bool,
    /// AVX-512 Foundation (512-bit float vectors).
    pub avx512f: bool,
    /// AVX-512 Byte and Word, which the bf16 conversion's 16-bit packing needs.
    pub avx512bw: bool,
    /// AVX512-BF16 (`vdpbf16ps`), which Recast's own bf16 GEMM is built on.
    pub avx512bf16: bool,
}

impl CpuFeatures {
    /// Asks the CPU (a `cpuid` per feature; [`features`] caches the answer).
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            CpuFeatures {
                avx2: is_x86_feature_detected!("avx2"),
                fma: is_x86_feature_detected!("fma"),
                avx512f: is_x86_feature_detected!("avx512f"),
                avx512bw: is_x86_feature_detected!("avx512bw"),
                avx512bf16: is_x86_feature_detected!("avx512bf16"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            CpuFeatures::default()
        }
    }

    /// AVX2 with FMA: what the 256-bit variants of the SwiGLU kernels are compiled for.
    pub fn avx2_fma(&self) -> bool {
        self.avx2 && self.fma
    }

    /// AVX-512 F and BW: what the 512-bit bf16 conversion is compiled for.
    pub fn avx512_bw(&self) -> bool {
        self.avx512f && self.avx512bw
    }

    /// AVX-512 F, BW and BF16: what Recast's own bf16 GEMM is compiled for.
    pub fn avx512_bf16(&self) -> bool {
        self.avx512_bw() && self.avx512bf16
    }

    /// These features less those a [`FEATURES_VAR`] value switches off, so that a
    /// benchmark or a test on this CPU runs the kernels a CPU without them would
    /// (an AMD EPYC without AVX-512, say): `avx2` drops AVX-512, `portable` drops every
    /// vector variant. `None` or any other value leaves the features as they are.
    pub fn limited_by(self, setting: Option<&str>) -> Self {
        match setting.map(str::trim) {
            Some("portable") => CpuFeatures::default(),
            Some("avx2") => CpuFeatures { avx512f: false, avx512bw: false, avx512bf16: false, ..self },
            _ => self,
        }
    }
}

/// The environment variable that limits the features the kernels use (see
/// [`CpuFeatures::limited_by`]); pair `avx2` with `MKL_ENABLE_INSTRUCTIONS=AVX2` to
/// limit MKL's GEMMs the same way.
pub const FEATURES_VAR: &str = "RECAST_CPU_FEATURES";

/// This CPU's features, detected on the first call and limited by [`FEATURES_VAR`].
pub fn features() -> &'static CpuFeatures {
    static FEATURES: OnceLock<CpuFeatures> = OnceLock::new();
    FEATURES.get_or_init(|| CpuFeatures::detect().limited_by(std::env::var(FEATURES_VAR).ok().as_deref()))
}

#[cfg(test)]
mod tests {
    use super::{CpuFeatures, FEATURES_VAR, features};

    /// The cached answer is the CPU's, and a feature the kernels pair with another
    /// (FMA with AVX2, BW with AVX-512 F) is only used together with it.
    #[test]
    fn cached_features_are_the_detected_ones() {
        let f = *features();
        assert_eq!(f, CpuFeatures::detect().limited_by(std::env::var(FEATURES_VAR).ok().as_deref()));
        assert!(!f.avx2_fma() || f.avx2);
        assert!(!f.avx512_bw() || f.avx512f);
        assert!(!f.avx512_bf16() || f.avx512_bw());
    }

    /// `avx2` switches off AVX-512 only, `portable` everything, and nothing else
    /// (unset, unknown) changes what was detected.
    #[test]
    fn a_setting_only_switches_features_off() {
        let all = CpuFeatures { avx2: true, fma: true, avx512f: true, avx512bw: true, avx512bf16: true };
        assert_eq!(all.limited_by(Some("avx2")), CpuFeatures { avx512f: false, avx512bw: false, avx512bf16: false, ..all });
        assert_eq!(all.limited_by(Some("portable")), CpuFeatures::default());
        assert_eq!(all.limited_by(None), all);
        assert_eq!(all.limited_by(Some("avx1024")), all);
        let plain = CpuFeatures::default();
        assert_eq!(plain.limited_by(Some("avx2")), plain);
    }
}

//! Which kernel multiplies bf16 matrices: the BLAS's own (MKL: AMX where the CPU has
//! it), or Recast's AVX512-BF16 kernel; or none, when the BLAS's f32 GEMM is faster than
//! both. Which is fastest depends on the CPU and the library's code for it: with AMX,
//! MKL's bf16 GEMM measured 6.8× its f32 one here; with AMX switched off, MKL's and
//! Recast's `vdpbf16ps` kernels both ran at 0.6× the f32 GEMM (this Intel core issues
//! `vdpbf16ps` at half its FMA rate, where AMD's Zen 4 issues it at twice); on an AMD EPYC
//! MKL's bf16 GEMM measured slower than its f32 one. So the choice is made once per
//! process by a short measurement (about 0.1 s) on the calling thread, and where no bf16
//! kernel is clearly faster, mixed precision runs its products in f32: `precision =
//! "bf16"` is then f32, never slower than it.

use std::cell::RefCell;
use std::ffi::c_int;
use std::sync::OnceLock;
use std::time::Instant;

use super::avx512_bf16;
use super::library::{BlasLibrary, CblasGemm, NO_TRANS, ROW_MAJOR, TRANS};

/// One way to multiply the matrices of a mixed-precision product.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Bf16Kernel {
    /// The loaded BLAS's bf16 GEMM (`cblas_gemm_bf16bf16f32`, `cblas_sbgemm`).
    Library,
    /// Recast's own `vdpbf16ps` kernel (`avx512_bf16.rs`).
    Avx512Bf16,
    /// No bf16 kernel: the BLAS's f32 GEMM on the f32 values (mixed precision then runs
    /// in f32).
    F32,
}

impl Bf16Kernel {
    /// The name the choice is logged and forced by.
    pub fn name(self) -> &'static str {
        match self {
            Bf16Kernel::Library => "library",
            Bf16Kernel::Avx512Bf16 => "avx512-bf16",
            Bf16Kernel::F32 => "f32",
        }
    }
}

/// The environment variable that forces a kernel (`library`, `avx512-bf16`, `f32`, or
/// `bf16`: the first bf16 kernel this machine runs, never f32) instead of measuring, for
/// tests (bit-exact resumes must not depend on a measurement) and for comparing them;
/// one this CPU or library cannot run is ignored with a warning.
pub const BF16_KERNEL_VAR: &str = "RECAST_BF16_KERNEL";

/// The [`BF16_KERNEL_VAR`] value that asks for any bf16 kernel.
const ANY_BF16: &str = "bf16";

/// How much faster than the f32 GEMM a bf16 kernel must measure to be chosen: mixed
/// precision also converts every operand to bf16, which the probe does not count.
const BF16_MARGIN: f64 = 1.2;

/// The process's kernel and what each candidate measured.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Bf16Choice {
    pub kernel: Bf16Kernel,
    /// GFLOP/s of each candidate on the measurement's product (one thread), or empty
    /// when the kernel was forced.
    pub measured: Vec<(Bf16Kernel, f64)>,
}

impl std::fmt::Display for Bf16Choice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.kernel {
            Bf16Kernel::F32 => write!(f, "no bf16 kernel beats f32 here: products in f32")?,
            kernel => write!(f, "bf16 kernel {}", kernel.name())?,
        }
        if self.measured.is_empty() {
            return write!(f, " (forced by {BF16_KERNEL_VAR})");
        }
        let list: Vec<String> = self.measured.iter().map(|(k, g)| format!("{} {g:.1}", k.name())).collect();
        write!(f, " (measured GFLOP/s on one thread: {})", list.join(", "))
    }
}

/// The sizes of the measurement's product, `m × k · k × n`: a block of a linear layer's
/// rows as one thread multiplies it.
const PROBE: (usize, usize, usize) = (192, 768, 768);

static CHOICE: OnceLock<Bf16Choice> = OnceLock::new();
/// The f32 GEMM the widened kernel calls (the library the choice was made with; the
/// process's library is loaded once and never unloaded).
static WIDEN_SGEMM: OnceLock<CblasGemm<f32>> = OnceLock::new();

/// The kernels this CPU and `lib` can run.
fn candidates(lib: &BlasLibrary) -> Vec<Bf16Kernel> {
    let mut list = Vec::new();
    if lib.has_bf16() {
        list.push(Bf16Kernel::Library);
    }
    if avx512_bf16::available() {
        list.push(Bf16Kernel::Avx512Bf16);
    }
    list.push(Bf16Kernel::F32);
    list
}

/// The process's kernel: measured (or forced) on the first call.
pub fn choice(lib: &BlasLibrary) -> &'static Bf16Choice {
    CHOICE.get_or_init(|| {
        let available = candidates(lib);
        if let Some(name) = std::env::var(BF16_KERNEL_VAR).ok().filter(|v| !v.trim().is_empty()) {
            let any_bf16 = name.trim() == ANY_BF16;
            match available.iter().find(|k| k.name() == name.trim() || (any_bf16 && **k != Bf16Kernel::F32)) {
                Some(&kernel) => return Bf16Choice { kernel, measured: Vec::new() },
                None => tracing::warn!("{BF16_KERNEL_VAR}={name:?} is not one of the kernels this machine runs ({}); measuring instead", names(&available)),
            }
        }
        let measured: Vec<(Bf16Kernel, f64)> = available.iter().map(|&k| (k, gflops(lib, k))).collect();
        let f32_rate = measured.iter().find(|m| m.0 == Bf16Kernel::F32).map_or(0.0, |m| m.1);
        let fastest_bf16 = measured.iter().filter(|m| m.0 != Bf16Kernel::F32).max_by(|a, b| a.1.total_cmp(&b.1));
        let kernel = match fastest_bf16 {
            Some(&(kernel, rate)) if rate >= BF16_MARGIN * f32_rate => kernel,
            _ => Bf16Kernel::F32,
        };
        Bf16Choice { kernel, measured }
    })
}

/// The process's kernel if [`choice`] has made it (for the run's metrics: `None` where
/// no bf16 CPU path was configured).
pub fn chosen() -> Option<&'static Bf16Choice> {
    CHOICE.get()
}

fn names(kernels: &[Bf16Kernel]) -> String {
    kernels.iter().map(|k| k.name()).collect::<Vec<_>>().join(", ")
}

/// The CBLAS-signature function of a bf16 `kernel`; `None` for [`Bf16Kernel::F32`] and
/// for a kernel this machine cannot run.
pub(super) fn function(lib: &BlasLibrary, kernel: Bf16Kernel) -> Option<CblasGemm<u16>> {
    match kernel {
        Bf16Kernel::Library => lib.bf16_gemm,
        Bf16Kernel::Avx512Bf16 => avx512_bf16::available().then_some(avx512_bf16::gemm as CblasGemm<u16>),
        Bf16Kernel::F32 => None,
    }
}

/// The bf16 GEMM bf16 operands are multiplied with: the chosen kernel, or, where the
/// choice is f32 but a caller multiplies bf16 operands anyway (a benchmark's bf16 path),
/// the library's, Recast's, or the f32 GEMM on the widened values, in that order.
pub(super) fn bf16_gemm(lib: &BlasLibrary) -> CblasGemm<u16> {
    let _ = WIDEN_SGEMM.set(lib.sgemm);
    [choice(lib).kernel, Bf16Kernel::Library, Bf16Kernel::Avx512Bf16].into_iter().find_map(|k| function(lib, k)).unwrap_or(widened_f32)
}

/// One run of the probe product into `C`.
type ProbeRun = Box<dyn Fn(&mut [f32])>;

/// The best of six timings of the probe product on `kernel`, in GFLOP/s.
fn gflops(lib: &BlasLibrary, kernel: Bf16Kernel) -> f64 {
    let (m, k, n) = PROBE;
    let mut c = vec![0f32; m * n];
    let run: ProbeRun = match function(lib, kernel) {
        Some(call) => {
            let a: Vec<u16> = (0..m * k).map(|i| 0x3f80 + (i % 97) as u16).collect();
            let b: Vec<u16> = (0..k * n).map(|i| 0xbf00 + (i % 89) as u16).collect();
            // SAFETY: the buffers span the row-major shapes given; the kernel runs on this
            // CPU (`candidates`).
            Box::new(move |c| unsafe { call(ROW_MAJOR, NO_TRANS, TRANS, m as c_int, n as c_int, k as c_int, 1.0, a.as_ptr(), k as c_int, b.as_ptr(), k as c_int, 0.0, c.as_mut_ptr(), n as c_int) })
        }
        None => {
            let a: Vec<f32> = (0..m * k).map(|i| 1.0 + (i % 97) as f32 / 128.0).collect();
            let b: Vec<f32> = (0..k * n).map(|i| -0.5 - (i % 89) as f32 / 256.0).collect();
            let sgemm = lib.sgemm;
            // SAFETY: as above, for the library's f32 GEMM.
            Box::new(move |c| unsafe { sgemm(ROW_MAJOR, NO_TRANS, TRANS, m as c_int, n as c_int, k as c_int, 1.0, a.as_ptr(), k as c_int, b.as_ptr(), k as c_int, 0.0, c.as_mut_ptr(), n as c_int) })
        }
    };
    let mut best = f64::INFINITY;
    for _ in 0..6 {
        let start = Instant::now();
        run(&mut c);
        best = best.min(start.elapsed().as_secs_f64());
    }
    2.0 * (m * n * k) as f64 / best.max(1e-9) / 1e9
}

thread_local! {
    /// The widened kernel's f32 copies of A and B, kept between calls.
    static WIDENED: RefCell<(Vec<f32>, Vec<f32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// The elements a row-major `rows × cols` matrix with `ld` between rows spans.
fn span(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 { 0 } else { (rows - 1) * ld + cols }
}

/// bf16 bits → f32 into `out` (cleared first).
///
/// # Safety
/// `src` holds `len` elements.
unsafe fn widen(src: *const u16, len: usize, out: &mut Vec<f32>) {
    out.clear();
    // SAFETY: forwarded from the caller.
    out.extend(unsafe { std::slice::from_raw_parts(src, len) }.iter().map(|&b| f32::from_bits(u32::from(b) << 16)));
}

/// The CBLAS bf16 GEMM as the f32 GEMM of the widened operands (bf16 × bf16 products
/// are exact in f32, so only the order of the sums differs from a bf16 kernel).
///
/// # Safety
/// As for the CBLAS GEMM (row-major).
#[allow(clippy::too_many_arguments)]
unsafe extern "C" fn widened_f32(
    layout: c_int,
    trans_a: c_int,
    trans_b: c_int,
    m: c_int,
    n: c_int,
    k: c_int,
    alpha: f32,
    a: *const u16,
    lda: c_int,
    b: *const u16,
    ldb: c_int,
    beta: f32,
    c: *mut f32,
    ldc: c_int,
) {
    let Some(&sgemm) = WIDEN_SGEMM.get() else { return };
    let dims = |v: c_int| v.max(0) as usize;
    let (a_rows, a_cols) = if trans_a == TRANS { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if trans_b == TRANS { (n, k) } else { (k, n) };
    WIDENED.with_borrow_mut(|(wa, wb)| {
        // SAFETY: the spans of A and B as the caller's shape gives them; the f32 copies
        // keep the leading dimensions, so the same call reads them.
        unsafe {
            widen(a, span(dims(a_rows), dims(a_cols), dims(lda)), wa);
            widen(b, span(dims(b_rows), dims(b_cols), dims(ldb)), wb);
            sgemm(layout, trans_a, trans_b, m, n, k, alpha, wa.as_ptr(), lda, wb.as_ptr(), ldb, beta, c, ldc)
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::library::{CblasGemm, NO_TRANS, ROW_MAJOR, TRANS};
    use super::{Bf16Kernel, avx512_bf16, candidates, choice, function, widened_f32};
    use crate::model::init::SplitMix64;

    fn bf16(rng: &mut SplitMix64, n: usize) -> Vec<u16> {
        (0..n).map(|_| ((rng.uniform() * 4.0 - 2.0) as f32).to_bits().wrapping_add(0x8000).wrapping_shr(16) as u16).collect()
    }

    fn value(bits: u16) -> f64 {
        f64::from(f32::from_bits(u32::from(bits) << 16))
    }

    /// `call` against an f64 sum of the same bf16 values: every transpose, shapes that
    /// blocks do not divide (odd `k` across a packed block's end, edge tiles both ways),
    /// `alpha` ≠ 1, `beta` 0 and 1, and columns past `n` left alone.
    fn check(call: CblasGemm<u16>, name: &str) {
        let mut rng = SplitMix64(11);
        for (m, n, k) in [(1, 1, 1), (13, 33, 7), (100, 70, 385), (25, 1030, 769), (200, 40, 64)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                for beta in [0.0f32, 1.0] {
                    let (a, b) = (bf16(&mut rng, m * k), bf16(&mut rng, k * n));
                    let (lda, ldb) = (if ta { m } else { k }, if tb { k } else { n });
                    let at = |i: usize, p: usize| value(if ta { a[p * lda + i] } else { a[i * lda + p] });
                    let bt = |p: usize, j: usize| value(if tb { b[j * ldb + p] } else { b[p * ldb + j] });
                    let ldc = n + 3;
                    let start: Vec<f32> = (0..m * ldc).map(|i| (i % 7) as f32 - 3.0).collect();
                    let mut c = start.clone();
                    let flag = |t: bool| if t { TRANS } else { NO_TRANS };
                    // SAFETY: the spans match the shape; the kernel runs on this machine.
                    unsafe { call(ROW_MAJOR, flag(ta), flag(tb), m as i32, n as i32, k as i32, 0.5, a.as_ptr(), lda as i32, b.as_ptr(), ldb as i32, beta, c.as_mut_ptr(), ldc as i32) };
                    for i in 0..m {
                        for j in 0..ldc {
                            let got = f64::from(c[i * ldc + j]);
                            if j >= n {
                                assert_eq!(got, f64::from(start[i * ldc + j]), "{name} {m}x{n}x{k}: wrote past column {n}");
                                continue;
                            }
                            let want = 0.5 * (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f64>() + f64::from(beta) * f64::from(start[i * ldc + j]);
                            assert!((got - want).abs() <= 1e-5 * (1.0 + want.abs() + k as f64), "{name} {m}x{n}x{k} ta {ta} tb {tb} beta {beta} ({i},{j}): {got} vs {want}");
                        }
                    }
                }
            }
        }
    }

    /// Every bf16 kernel this machine runs (the choice may fall on any of them) gives
    /// the product of the bf16 values; Recast's own kernel is checked without a BLAS too.
    #[test]
    fn every_bf16_kernel_multiplies_the_bf16_values() {
        let lib = super::super::library().expect("RECAST_BLAS loads");
        let mut checked = Vec::new();
        match &lib {
            Some(lib) => {
                for kernel in candidates(lib) {
                    match function(lib, kernel) {
                        Some(call) => check(call, kernel.name()),
                        None => {
                            let _ = super::WIDEN_SGEMM.set(lib.sgemm);
                            check(widened_f32, "widened f32");
                        }
                    }
                    checked.push(kernel);
                }
            }
            None if avx512_bf16::available() => {
                check(avx512_bf16::gemm, Bf16Kernel::Avx512Bf16.name());
                checked.push(Bf16Kernel::Avx512Bf16);
            }
            None => {}
        }
        eprintln!("checked: {checked:?}");
        assert!(!avx512_bf16::available() || checked.contains(&Bf16Kernel::Avx512Bf16));
    }

    /// The process's kernel is one this machine runs and, unless forced, a bf16 kernel
    /// only where it measured clearly faster than the f32 GEMM, so mixed precision is
    /// never slower than f32 products.
    #[test]
    fn a_bf16_kernel_is_chosen_only_where_it_beats_f32() {
        let Some(lib) = super::super::library().expect("RECAST_BLAS loads") else { return };
        let made = choice(&lib);
        assert!(candidates(&lib).contains(&made.kernel), "{made}");
        if made.measured.is_empty() {
            return;
        }
        let rate = |k: Bf16Kernel| made.measured.iter().find(|m| m.0 == k).map(|m| m.1);
        let f32_rate = rate(Bf16Kernel::F32).expect("f32 is always measured");
        match made.kernel {
            Bf16Kernel::F32 => assert!(made.measured.iter().all(|m| m.0 == Bf16Kernel::F32 || m.1 < super::BF16_MARGIN * f32_rate), "{made}"),
            kernel => {
                let chosen = rate(kernel).expect("measured");
                assert!(chosen >= super::BF16_MARGIN * f32_rate && made.measured.iter().all(|m| m.1 <= chosen || m.0 == Bf16Kernel::F32), "{made}");
            }
        }
    }
}

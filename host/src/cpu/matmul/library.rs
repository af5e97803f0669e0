//! A BLAS loaded at run time (Intel MKL or OpenBLAS): the build never needs one, and a
//! machine without one falls back to candle's own matmul.

use std::ffi::c_int;
use std::path::{Path, PathBuf};

use super::MatmulError;

/// A CBLAS GEMM, row- or column-major, with inputs of type `T` and f32 accumulation and
/// output: `cblas_sgemm` (`T = f32`), and MKL's `cblas_gemm_bf16bf16f32` or OpenBLAS's
/// `cblas_sbgemm` (`T = u16`, bf16 bit patterns; AMX or AVX512-BF16 where the CPU has
/// them).
pub(crate) type CblasGemm<T> =
    unsafe extern "C" fn(layout: c_int, trans_a: c_int, trans_b: c_int, m: c_int, n: c_int, k: c_int, alpha: f32, a: *const T, lda: c_int, b: *const T, ldb: c_int, beta: f32, c: *mut f32, ldc: c_int);

/// MKL's packed GEMMs for one element type: the size of a packed matrix, the packing,
/// and the product with a packed operand. Signatures differ by type (f32 packs with
/// `alpha`, bf16 multiplies with it), hence one struct per type.
pub(crate) struct Packing<Pack, Compute> {
    pub(super) size: unsafe extern "C" fn(identifier: c_int, m: c_int, n: c_int, k: c_int) -> usize,
    pub(super) pack: Pack,
    pub(super) compute: Compute,
}

/// `cblas_sgemm_pack`.
pub(crate) type SgemmPack = unsafe extern "C" fn(layout: c_int, identifier: c_int, trans: c_int, m: c_int, n: c_int, k: c_int, alpha: f32, src: *const f32, ld: c_int, dest: *mut f32);
/// `cblas_sgemm_compute`.
pub(crate) type SgemmCompute =
    unsafe extern "C" fn(layout: c_int, trans_a: c_int, trans_b: c_int, m: c_int, n: c_int, k: c_int, a: *const f32, lda: c_int, b: *const f32, ldb: c_int, beta: f32, c: *mut f32, ldc: c_int);
/// `cblas_gemm_bf16bf16f32_pack`.
pub(crate) type Bf16Pack = unsafe extern "C" fn(layout: c_int, identifier: c_int, trans: c_int, m: c_int, n: c_int, k: c_int, src: *const u16, ld: c_int, dest: *mut u16);

/// CBLAS constants.
pub(super) const ROW_MAJOR: c_int = 101;
pub(super) const NO_TRANS: c_int = 111;
pub(super) const TRANS: c_int = 112;
/// An operand stored packed (MKL).
pub(super) const PACKED: c_int = 151;
/// Which operand a packing is for (MKL's `CblasBMatrix`).
pub(super) const B_MATRIX: c_int = 162;

/// The environment variable naming a BLAS library file to load (`none` disables BLAS).
pub const BLAS_ENV: &str = "RECAST_BLAS";

/// A loaded BLAS with the two GEMMs Recast calls.
pub struct BlasLibrary {
    /// Which library it is (`mkl` or `openblas`), for logs and benchmarks.
    pub vendor: &'static str,
    /// The file it was loaded from.
    pub path: PathBuf,
    pub(super) sgemm: CblasGemm<f32>,
    pub(super) bf16_gemm: Option<CblasGemm<u16>>,
    /// MKL's packed f32 GEMM (packing a weight once for many products).
    pub(super) sgemm_packing: Option<Packing<SgemmPack, SgemmCompute>>,
    /// MKL's packed bf16 GEMM.
    pub(super) bf16_packing: Option<Packing<Bf16Pack, CblasGemm<u16>>>,
    /// Kept open: the function pointers above live as long as this.
    _library: libloading::Library,
}

impl std::fmt::Debug for BlasLibrary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlasLibrary").field("vendor", &self.vendor).field("path", &self.path).field("bf16_gemm", &self.bf16_gemm.is_some()).field("packing", &self.sgemm_packing.is_some()).finish()
    }
}

/// Where `scripts/cpu-blas.sh` installs MKL, in the checkout this binary was built from.
pub fn bundled_mkl() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../.blas/mkl/lib/libmkl_rt.so.3")
}

/// The libraries tried in order when `RECAST_BLAS` is unset: the project's MKL, then
/// the system's (found by the dynamic loader's search path).
fn candidates() -> Vec<PathBuf> {
    let mut list = vec![bundled_mkl()];
    list.extend(["libmkl_rt.so.3", "libmkl_rt.so.2", "libmkl_rt.so", "libopenblas.so.0"].map(PathBuf::from));
    list
}

impl BlasLibrary {
    /// Loads `RECAST_BLAS` when set (an error if it cannot be loaded), else the first
    /// candidate that loads; `Ok(None)` when there is none or `RECAST_BLAS=none`.
    pub fn find() -> Result<Option<BlasLibrary>, MatmulError> {
        match std::env::var_os(BLAS_ENV) {
            Some(v) if v == "none" || v.is_empty() => Ok(None),
            Some(v) => BlasLibrary::load(Path::new(&v)).map(Some),
            None => Ok(candidates().iter().filter(|p| !p.is_absolute() || p.exists()).find_map(|p| BlasLibrary::load(p).ok())),
        }
    }

    /// Loads one library file and resolves its GEMMs.
    pub fn load(path: &Path) -> Result<BlasLibrary, MatmulError> {
        let fail = |cause: String| MatmulError::Library { path: path.to_path_buf(), cause };
        // SAFETY: loading a BLAS runs its initialisers, which have no preconditions.
        let library = unsafe { libloading::Library::new(path) }.map_err(|e| fail(e.to_string()))?;
        // SAFETY: the symbols below have the CBLAS signatures of the types they are
        // read as (MKL's and OpenBLAS's headers); the library outlives them (`_library`).
        unsafe {
            let sgemm = *library.get::<CblasGemm<f32>>(b"cblas_sgemm\0").map_err(|e| fail(format!("no cblas_sgemm: {e}")))?;
            let is_mkl = library.get::<unsafe extern "C" fn(c_int) -> c_int>(b"MKL_Set_Threading_Layer\0").ok().map(|f| *f);
            let vendor = if let Some(set_threading_layer) = is_mkl {
                // One thread per call: Recast splits each GEMM over its own thread pool, so
                // there is one pool, not two spinning against each other.
                const MKL_THREADING_SEQUENTIAL: c_int = 1;
                set_threading_layer(MKL_THREADING_SEQUENTIAL);
                "mkl"
            } else {
                if let Ok(set_threads) = library.get::<unsafe extern "C" fn(c_int)>(b"openblas_set_num_threads\0") {
                    set_threads(1);
                }
                "openblas"
            };
            let bf16_gemm = library.get::<CblasGemm<u16>>(b"cblas_gemm_bf16bf16f32\0").or_else(|_| library.get::<CblasGemm<u16>>(b"cblas_sbgemm\0")).ok().map(|f| *f);
            let size = |name: &[u8]| library.get::<unsafe extern "C" fn(c_int, c_int, c_int, c_int) -> usize>(name).ok().map(|f| *f);
            let sgemm_packing = match (size(b"cblas_sgemm_pack_get_size\0"), library.get::<SgemmPack>(b"cblas_sgemm_pack\0"), library.get::<SgemmCompute>(b"cblas_sgemm_compute\0")) {
                (Some(size), Ok(pack), Ok(compute)) => Some(Packing { size, pack: *pack, compute: *compute }),
                _ => None,
            };
            let bf16_packing = match (
                size(b"cblas_gemm_bf16bf16f32_pack_get_size\0"),
                library.get::<Bf16Pack>(b"cblas_gemm_bf16bf16f32_pack\0"),
                library.get::<CblasGemm<u16>>(b"cblas_gemm_bf16bf16f32_compute\0"),
            ) {
                (Some(size), Ok(pack), Ok(compute)) => Some(Packing { size, pack: *pack, compute: *compute }),
                _ => None,
            };
            Ok(BlasLibrary { vendor, path: path.to_path_buf(), sgemm, bf16_gemm, sgemm_packing, bf16_packing, _library: library })
        }
    }

    /// Whether the library multiplies bf16 matrices itself.
    pub fn has_bf16(&self) -> bool {
        self.bf16_gemm.is_some()
    }
}

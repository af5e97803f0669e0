//! Row-major GEMMs through the loaded BLAS, split over Recast's thread pool: the BLAS
//! runs one thread per call, each on its own block of the output.

use std::ffi::c_int;
use std::marker::PhantomData;
use std::mem::MaybeUninit;

use rayon::prelude::*;

use super::library::{B_MATRIX, BlasLibrary, CblasGemm, NO_TRANS, PACKED, ROW_MAJOR, TRANS};
use super::{MatmulError, avx512_bf16};

/// Output rows (or columns) below which a block is not split further.
const MIN_BLOCK: usize = 64;

/// The shape of `C[m×n] = op(A)[m×k] · op(B)[k×n]`, where `op` transposes a stored
/// row-major matrix when its flag is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GemmShape {
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub transpose_a: bool,
    pub transpose_b: bool,
}

/// An element type one of the BLAS GEMMs takes.
pub(crate) trait GemmInput: Copy + Send + Sync {
    /// The library's GEMM for this element type.
    fn gemm(lib: &BlasLibrary) -> Result<CblasGemm<Self>, MatmulError>;

    /// Bytes of a packed `B` for `k × n` products, or `None` when the library cannot pack.
    fn packed_b_bytes(lib: &BlasLibrary, m: usize, n: usize, k: usize) -> Option<usize>;

    /// Packs `op(B)` into `dest`.
    ///
    /// # Safety
    /// `src` spans `op(B)` with leading dimension `ld`; `dest` holds the bytes
    /// [`Self::packed_b_bytes`] gave for the same sizes; the library can pack.
    #[allow(clippy::too_many_arguments)]
    unsafe fn pack_b(lib: &BlasLibrary, trans: c_int, m: c_int, n: c_int, k: c_int, src: *const Self, ld: c_int, dest: *mut Self);

    /// `C = op(A) · B` for a packed `B`.
    ///
    /// # Safety
    /// As for the CBLAS GEMM, with `b` packed by [`Self::pack_b`] for the same `n`, `k`.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm_packed_b(lib: &BlasLibrary, trans_a: c_int, m: c_int, n: c_int, k: c_int, a: *const Self, lda: c_int, b: *const Self, c: *mut f32, ldc: c_int);
}

impl GemmInput for f32 {
    fn gemm(lib: &BlasLibrary) -> Result<CblasGemm<f32>, MatmulError> {
        Ok(lib.sgemm)
    }

    fn packed_b_bytes(lib: &BlasLibrary, m: usize, n: usize, k: usize) -> Option<usize> {
        let packing = lib.sgemm_packing.as_ref()?;
        // SAFETY: a pure size query.
        Some(unsafe { (packing.size)(B_MATRIX, m as c_int, n as c_int, k as c_int) })
    }

    unsafe fn pack_b(lib: &BlasLibrary, trans: c_int, m: c_int, n: c_int, k: c_int, src: *const f32, ld: c_int, dest: *mut f32) {
        if let Some(packing) = &lib.sgemm_packing {
            // SAFETY: forwarded from the caller.
            unsafe { (packing.pack)(ROW_MAJOR, B_MATRIX, trans, m, n, k, 1.0, src, ld, dest) }
        }
    }

    unsafe fn gemm_packed_b(lib: &BlasLibrary, trans_a: c_int, m: c_int, n: c_int, k: c_int, a: *const f32, lda: c_int, b: *const f32, c: *mut f32, ldc: c_int) {
        if let Some(packing) = &lib.sgemm_packing {
            // SAFETY: forwarded from the caller.
            unsafe { (packing.compute)(ROW_MAJOR, trans_a, PACKED, m, n, k, a, lda, b, 0, 0.0, c, ldc) }
        }
    }
}

/// bf16 values as their bit patterns (the upper half of an f32).
impl GemmInput for u16 {
    fn gemm(lib: &BlasLibrary) -> Result<CblasGemm<u16>, MatmulError> {
        Ok(super::bf16_kernel::bf16_gemm(lib))
    }

    /// The library's kernel and Recast's AVX512-BF16 kernel pack (the widened-f32
    /// fallback does not).
    fn packed_b_bytes(lib: &BlasLibrary, m: usize, n: usize, k: usize) -> Option<usize> {
        if own_kernel_in_use(lib) {
            return Some(4 * avx512_bf16::whole_b_lanes(n, k));
        }
        if lib.bf16_gemm.map(|f| f as usize) != Some(super::bf16_kernel::bf16_gemm(lib) as usize) {
            return None;
        }
        let packing = lib.bf16_packing.as_ref()?;
        // SAFETY: a pure size query.
        Some(unsafe { (packing.size)(B_MATRIX, m as c_int, n as c_int, k as c_int) })
    }

    unsafe fn pack_b(lib: &BlasLibrary, trans: c_int, m: c_int, n: c_int, k: c_int, src: *const u16, ld: c_int, dest: *mut u16) {
        let (n, k) = (n.max(0) as usize, k.max(0) as usize);
        if own_kernel_in_use(lib) {
            let lanes = avx512_bf16::whole_b_lanes(n, k);
            // SAFETY: `dest` holds the lanes `packed_b_bytes` asked for, 8-byte aligned
            // ([`PackedB::new`]), initialised here before they are viewed as a slice; the
            // rest is forwarded from the caller.
            unsafe {
                let dest = dest.cast::<u32>();
                std::ptr::write_bytes(dest, 0, lanes);
                avx512_bf16::pack_whole_b(trans, n, k, src, ld.max(0) as usize, std::slice::from_raw_parts_mut(dest, lanes))
            };
        } else if let Some(packing) = &lib.bf16_packing {
            // SAFETY: forwarded from the caller.
            unsafe { (packing.pack)(ROW_MAJOR, B_MATRIX, trans, m, n as c_int, k as c_int, src, ld, dest) }
        }
    }

    unsafe fn gemm_packed_b(lib: &BlasLibrary, trans_a: c_int, m: c_int, n: c_int, k: c_int, a: *const u16, lda: c_int, b: *const u16, c: *mut f32, ldc: c_int) {
        let (mu, nu, ku) = (m.max(0) as usize, n.max(0) as usize, k.max(0) as usize);
        if own_kernel_in_use(lib) {
            // SAFETY: `b` was packed by `pack_b` for these n, k (caller), in 8-byte
            // aligned lanes; the rest is forwarded.
            unsafe {
                let packed = std::slice::from_raw_parts(b.cast::<u32>(), avx512_bf16::whole_b_lanes(nu, ku));
                avx512_bf16::gemm_prepacked(trans_a, mu, nu, ku, a, lda.max(0) as usize, packed, c, ldc.max(0) as usize)
            }
        } else if let Some(packing) = &lib.bf16_packing {
            // SAFETY: forwarded from the caller.
            unsafe { (packing.compute)(ROW_MAJOR, trans_a, PACKED, m, n, k, 1.0, a, lda, b, 0, 0.0, c, ldc) }
        }
    }
}

/// Whether bf16 operands are multiplied by Recast's AVX512-BF16 GEMM (which packs in
/// its own layout) rather than the library's or the widened-f32 fallback.
fn own_kernel_in_use(lib: &BlasLibrary) -> bool {
    super::bf16_kernel::bf16_gemm(lib) as usize == avx512_bf16::gemm as CblasGemm<u16> as usize
}

/// A `B` operand packed once in the kernel's own layout, for many products
/// `op(A) · op(B)` that share it (an expert's weight, for every chunk of its rows).
/// MKL packs `B` inside every plain GEMM call, in blocks, more than once per call when
/// `m` is large: measured here, packing it explicitly made a `[2816 × 1024] ·
/// [1024 × 512]` bf16 product 1.4× faster, and repeated packing of one weight across
/// chunks of 256 rows cost a third of their time.
pub(crate) struct PackedB<T> {
    /// The packing as `T`s, in 8-byte words (Recast's kernel reads it as 32-bit lanes),
    /// written through its spare capacity.
    buffer: Vec<u64>,
    n: usize,
    k: usize,
    element: PhantomData<T>,
}

impl<T: GemmInput> PackedB<T> {
    /// Packs `op(B)` (`k × n`) for products of up to about `rows` rows; `None` when
    /// the library has no packed GEMM for `T` (then use [`gemm_serial`]).
    pub(crate) fn new(lib: &BlasLibrary, b: Operand<'_, T>, (k, n): (usize, usize), transpose_b: bool, rows: usize) -> Result<Option<Self>, MatmulError> {
        let (b_rows, b_cols) = if transpose_b { (n, k) } else { (k, n) };
        if b.ld < b_cols.max(1) || span(b_rows, b_cols, b.ld) > b.data.len() || n == 0 || k == 0 {
            return Err(MatmulError::Shape(format!("packing B ({k} × {n}, transposed: {transpose_b}, ld {}) from {} elements", b.ld, b.data.len())));
        }
        if [rows, n, k, b.ld].iter().any(|&d| d > c_int::MAX as usize) {
            return Err(MatmulError::Shape(format!("packing B ({k} × {n}): a dimension exceeds the BLAS's 32-bit sizes")));
        }
        let Some(bytes) = T::packed_b_bytes(lib, rows.max(1), n, k) else { return Ok(None) };
        // Not `vec![0; …]`: a zeroed allocation of this size takes fresh pages from the
        // OS instead of reusing freed ones (page faults and resident memory every step).
        let mut buffer: Vec<u64> = Vec::with_capacity(bytes.div_ceil(8));
        let trans = if transpose_b { TRANS } else { NO_TRANS };
        // SAFETY: B's span was checked above; the buffer has the bytes the kernel asked
        // for; the kernel can pack (`packed_b_bytes` answered).
        unsafe { T::pack_b(lib, trans, rows.max(1) as c_int, n as c_int, k as c_int, b.data.as_ptr(), b.ld as c_int, buffer.as_mut_ptr().cast::<T>()) };
        Ok(Some(Self { buffer, n, k, element: PhantomData }))
    }

    /// `C = op(A) · op(B)` on the calling thread, `op(A)` being `m × k`.
    pub(crate) fn multiply(&self, lib: &BlasLibrary, a: Operand<'_, T>, m: usize, transpose_a: bool, c: &mut [MaybeUninit<f32>], ldc: usize) -> Result<(), MatmulError> {
        let (n, k) = (self.n, self.k);
        let (a_rows, a_cols) = if transpose_a { (k, m) } else { (m, k) };
        if a.ld < a_cols.max(1) || ldc < n || span(a_rows, a_cols, a.ld) > a.data.len() || span(m, n, ldc) > c.len() || [m, a.ld, ldc].iter().any(|&d| d > c_int::MAX as usize) {
            return Err(MatmulError::Shape(format!("packed gemm m {m} n {n} k {k} (lda {}, ldc {ldc}) does not fit A of {}, C of {} elements", a.ld, a.data.len(), c.len())));
        }
        if m == 0 {
            return Ok(());
        }
        let trans_a = if transpose_a { TRANS } else { NO_TRANS };
        // SAFETY: spans checked above; `buffer` was packed by `pack_b` for these n, k.
        unsafe { T::gemm_packed_b(lib, trans_a, m as c_int, n as c_int, k as c_int, a.data.as_ptr(), a.ld as c_int, self.buffer.as_ptr().cast::<T>(), c.as_mut_ptr().cast::<f32>(), ldc as c_int) };
        Ok(())
    }
}

/// A pointer that may cross to the pool's threads: every block writes rows or columns
/// of `C` no other block touches.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: see above; the blocks are disjoint and the caller's borrow outlives them.
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer (a method, so closures capture the `Send` wrapper, not the field).
    fn ptr(self) -> *mut f32 {
        self.0
    }
}

/// `c` as memory a GEMM may overwrite. Sound because nothing here writes an
/// uninitialised value through it.
pub(crate) fn as_uninit(c: &mut [f32]) -> &mut [MaybeUninit<f32>] {
    // SAFETY: same layout; every write through the result is of an initialised f32.
    unsafe { &mut *(c as *mut [f32] as *mut [MaybeUninit<f32>]) }
}

/// A stored row-major matrix inside a slice, `ld` elements between rows.
#[derive(Clone, Copy)]
pub struct Operand<'a, T> {
    pub data: &'a [T],
    pub ld: usize,
}

/// Whether a product replaces `C` or adds to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Accumulate {
    Overwrite,
    Add,
}

/// Elements a row-major `rows × cols` matrix with `ld` between rows spans.
fn span(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 { 0 } else { (rows - 1) * ld + cols }
}

/// `C (+)= op(A) · op(B)` for matrices inside larger buffers (row blocks of stacked
/// experts, the halves of a packed `[gate | up]` product). `C` may be uninitialised
/// where it is overwritten; with [`Accumulate::Add`] it must hold values.
pub(crate) fn gemm_strided<T: GemmInput>(
    lib: &BlasLibrary,
    shape: GemmShape,
    a: Operand<'_, T>,
    b: Operand<'_, T>,
    accumulate: Accumulate,
    c: &mut [MaybeUninit<f32>],
    ldc: usize,
) -> Result<(), MatmulError> {
    gemm_blocks(lib, shape, a, b, accumulate, c, ldc, rayon::current_num_threads())
}

/// [`gemm_strided`] on the calling thread only: for the many small products of a task
/// that is already one of many parallel tasks (attention's per-head products).
pub(crate) fn gemm_serial<T: GemmInput>(
    lib: &BlasLibrary,
    shape: GemmShape,
    a: Operand<'_, T>,
    b: Operand<'_, T>,
    accumulate: Accumulate,
    c: &mut [MaybeUninit<f32>],
    ldc: usize,
) -> Result<(), MatmulError> {
    gemm_blocks(lib, shape, a, b, accumulate, c, ldc, 1)
}

#[allow(clippy::too_many_arguments)]
fn gemm_blocks<T: GemmInput>(
    lib: &BlasLibrary,
    shape: GemmShape,
    a: Operand<'_, T>,
    b: Operand<'_, T>,
    accumulate: Accumulate,
    c: &mut [MaybeUninit<f32>],
    ldc: usize,
    threads: usize,
) -> Result<(), MatmulError> {
    let GemmShape { m, n, k, transpose_a, transpose_b } = shape;
    let (a_rows, a_cols) = if transpose_a { (k, m) } else { (m, k) };
    let (b_rows, b_cols) = if transpose_b { (n, k) } else { (k, n) };
    let fits =
        a.ld >= a_cols.max(1) && b.ld >= b_cols.max(1) && ldc >= n.max(1) && span(a_rows, a_cols, a.ld) <= a.data.len() && span(b_rows, b_cols, b.ld) <= b.data.len() && span(m, n, ldc) <= c.len();
    if !fits {
        return Err(MatmulError::Shape(format!("gemm {shape:?} (lda {}, ldb {}, ldc {ldc}) does not fit A of {}, B of {}, C of {} elements", a.ld, b.ld, a.data.len(), b.data.len(), c.len())));
    }
    if [m, n, k, a.ld, b.ld, ldc].iter().any(|&d| d > c_int::MAX as usize) {
        return Err(MatmulError::Shape(format!("gemm {shape:?}: a dimension exceeds the BLAS's 32-bit sizes")));
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if accumulate == Accumulate::Overwrite {
            for row in 0..m {
                c[row * ldc..row * ldc + n].fill(MaybeUninit::new(0.0));
            }
        }
        return Ok(());
    }
    let call = T::gemm(lib)?;
    let (lda, ldb) = (a.ld, b.ld);
    let beta = if accumulate == Accumulate::Add { 1.0 } else { 0.0 };
    let (ta, tb) = (if transpose_a { TRANS } else { NO_TRANS }, if transpose_b { TRANS } else { NO_TRANS });
    let threads = threads.max(1);
    let split_rows = m >= n;
    let along = if split_rows { m } else { n };
    let blocks = threads.min(along.div_ceil(MIN_BLOCK)).max(1);
    let step = along.div_ceil(blocks);
    let out = SharedOut(c.as_mut_ptr().cast::<f32>());
    let (a, b) = (a.data, b.data);
    let run_block = |i: usize| {
        let (start, end) = (i * step, ((i + 1) * step).min(along));
        if start >= end {
            return;
        }
        // SAFETY: `call` has the CBLAS signature for `T`; offsets stay inside A, B and C
        // (their spans were checked against the shape above); blocks write disjoint rows
        // (split_rows) or columns of C.
        unsafe {
            if split_rows {
                let a_block = if transpose_a { a.as_ptr().add(start) } else { a.as_ptr().add(start * lda) };
                call(ROW_MAJOR, ta, tb, (end - start) as c_int, n as c_int, k as c_int, 1.0, a_block, lda as c_int, b.as_ptr(), ldb as c_int, beta, out.ptr().add(start * ldc), ldc as c_int)
            } else {
                let b_block = if transpose_b { b.as_ptr().add(start * ldb) } else { b.as_ptr().add(start) };
                call(ROW_MAJOR, ta, tb, m as c_int, (end - start) as c_int, k as c_int, 1.0, a.as_ptr(), lda as c_int, b_block, ldb as c_int, beta, out.ptr().add(start), ldc as c_int)
            }
        }
    };
    if blocks == 1 {
        run_block(0);
    } else {
        (0..blocks).into_par_iter().for_each(run_block);
    }
    Ok(())
}

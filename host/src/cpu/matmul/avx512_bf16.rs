//! Recast's own bf16 GEMM on AVX512-BF16 (`vdpbf16ps`), for CPUs that have the
//! instruction but no AMX: AMD Zen 4 and 5, Intel Cooper Lake. There MKL's bf16 GEMM
//! either falls back to slow code (on AMD it measured slower than MKL's own f32 GEMM)
//! or is no faster than ours, and a mixed-precision step must not be slower than f32.
//!
//! The blocking is the usual one (B packed in blocks that stay in L2 and panels that
//! stay in L1, A packed per block of rows): `vdpbf16ps` multiplies pairs of adjacent
//! `k` elements, so both operands are packed as 32-bit pairs along `k`.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;
use std::cell::RefCell;
use std::ffi::c_int;

use super::library::{ROW_MAJOR, TRANS};

mod pack;

/// Rows of a micro-tile: 12 rows × 2 vectors = 24 accumulator registers of the 32.
const MR: usize = 12;
/// Columns of a micro-tile: two vectors of 16 f32.
const NR: usize = 32;
/// `k` per packed block (a B panel of `KC/2 × NR` pairs is 24 KB, inside L1).
const KC: usize = 384;
/// Rows per packed A block (a multiple of `MR`; 72 KB, inside L2).
const MC: usize = 96;
/// Columns per packed B block (a multiple of `NR`).
const NC: usize = 1024;

thread_local! {
    /// Each thread's packing buffers, kept between calls (a GEMM is called thousands
    /// of times a step).
    static PACKS: RefCell<(Vec<u32>, Vec<u32>)> = const { RefCell::new((Vec::new(), Vec::new())) };
}

/// Whether this CPU can run [`gemm`] (AVX512-BF16 with AVX-512 F and BW), as limited by
/// `RECAST_CPU_FEATURES`.
pub(crate) fn available() -> bool {
    crate::cpu::features::features().avx512_bf16()
}

/// A row-major matrix of bf16 bit patterns read element by element, transposed or not.
#[derive(Clone, Copy)]
struct View {
    data: *const u16,
    ld: usize,
    transposed: bool,
}

impl View {
    /// Element `(row, col)` of `op(M)`.
    ///
    /// # Safety
    /// `(row, col)` lies inside `op(M)`.
    #[inline(always)]
    unsafe fn at(self, row: usize, col: usize) -> u32 {
        let index = if self.transposed { col * self.ld + row } else { row * self.ld + col };
        // SAFETY: forwarded from the caller.
        u32::from(unsafe { *self.data.add(index) })
    }

    /// The pair `(row, 2p), (row, 2p + 1)` of `op(M)` as one 32-bit lane (zero past `k`).
    ///
    /// # Safety
    /// `row` is a row of `op(M)` and `2p < k`.
    #[inline(always)]
    unsafe fn pair_along_row(self, row: usize, p: usize, k: usize) -> u32 {
        // SAFETY: forwarded; the second element is read only when inside.
        unsafe { self.at(row, 2 * p) | if 2 * p + 1 < k { self.at(row, 2 * p + 1) << 16 } else { 0 } }
    }

    /// The pair `(2p, col), (2p + 1, col)` of `op(M)` (zero past `k`).
    ///
    /// # Safety
    /// `col` is a column of `op(M)` and `2p < k`.
    #[inline(always)]
    unsafe fn pair_along_col(self, p: usize, col: usize, k: usize) -> u32 {
        // SAFETY: as above.
        unsafe { self.at(2 * p, col) | if 2 * p + 1 < k { self.at(2 * p + 1, col) << 16 } else { 0 } }
    }
}

/// Packs rows `rows` (with `k` from `k0`, `kc` long) of `op(A)` into panels of `MR`
/// rows: `[panel][pair][MR]`, zero-padded. Returns the packed length (`out` may be
/// longer: it is kept between calls and every lane up to the length is written).
///
/// # Safety
/// The rows and `k0 + kc` lie inside `op(A)`; the CPU has AVX-512 F and BW.
unsafe fn pack_a(a: View, rows: std::ops::Range<usize>, k0: usize, kc: usize, out: &mut Vec<u32>) -> usize {
    let pairs = kc.div_ceil(2);
    let panels = rows.len().div_ceil(MR);
    let len = panels * pairs * MR;
    if out.len() < len {
        out.resize(len, 0);
    }
    let shifted = View { data: if a.transposed { a.data.wrapping_add(k0 * a.ld) } else { a.data.wrapping_add(k0) }, ..a };
    for (panel, chunk) in out[..len].chunks_exact_mut(pairs * MR).enumerate() {
        let first = rows.start + panel * MR;
        let height = MR.min(rows.end - first);
        // SAFETY: the panel's rows and pairs lie inside (caller), as does the CPU's support.
        unsafe { pack::panel(shifted, pack::Side::A, first, height, MR, kc, chunk) };
    }
    len
}

/// Lanes of one packed block of `op(B)`: `nc` columns, `kc` of `k`.
fn packed_b_block(nc: usize, kc: usize) -> usize {
    nc.div_ceil(NR) * kc.div_ceil(2) * NR
}

/// Packs columns `cols` (with `k` from `k0`, `kc` long) of `op(B)` into panels of `NR`
/// columns: `[panel][pair][NR]`, zero-padded, filling `out`
/// ([`packed_b_block`] lanes).
///
/// # Safety
/// The columns and `k0 + kc` lie inside `op(B)`; the CPU has AVX-512 F and BW.
unsafe fn pack_b(b: View, cols: std::ops::Range<usize>, k0: usize, kc: usize, out: &mut [u32]) {
    let pairs = kc.div_ceil(2);
    let shifted = View { data: if b.transposed { b.data.wrapping_add(k0) } else { b.data.wrapping_add(k0 * b.ld) }, ..b };
    for (panel, chunk) in out.chunks_exact_mut(pairs * NR).enumerate() {
        let first = cols.start + panel * NR;
        let width = NR.min(cols.end - first);
        // SAFETY: as above.
        unsafe { pack::panel(shifted, pack::Side::B, first, width, NR, kc, chunk) };
    }
}

/// The blocks of `n × k` in the order the GEMM walks them: `(j0, nc, k0, kc)`.
fn blocks(n: usize, k: usize) -> impl Iterator<Item = (usize, usize, usize, usize)> {
    (0..n).step_by(NC).flat_map(move |j0| (0..k).step_by(KC).map(move |k0| (j0, NC.min(n - j0), k0, KC.min(k - k0))))
}

/// Lanes of a whole `op(B)` (`k × n`) packed once by [`pack_whole_b`], for many
/// products that share it (an expert's weight, for every chunk of its rows): packing
/// it again per chunk of 256 rows was a sixth of a bf16 MoE layer's time on Zen 4.
pub(crate) fn whole_b_lanes(n: usize, k: usize) -> usize {
    blocks(n, k).map(|(_, nc, _, kc)| packed_b_block(nc, kc)).sum()
}

/// Packs all of `op(B)` (`k × n`, transposed when `trans_b` is CBLAS's transpose) into
/// `dest`, block after block.
///
/// # Safety
/// `b` spans `op(B)` with leading dimension `ldb`; `dest` holds
/// [`whole_b_lanes`]`(n, k)` lanes; the CPU has AVX512-BF16 ([`available`]).
pub(crate) unsafe fn pack_whole_b(trans_b: c_int, n: usize, k: usize, b: *const u16, ldb: usize, dest: &mut [u32]) {
    let view = View { data: b, ld: ldb, transposed: trans_b == TRANS };
    let mut offset = 0;
    for (j0, nc, k0, kc) in blocks(n, k) {
        let len = packed_b_block(nc, kc);
        // SAFETY: the block lies inside op(B) (caller).
        unsafe { pack_b(view, j0..j0 + nc, k0, kc, &mut dest[offset..offset + len]) };
        offset += len;
    }
}

/// `C = op(A) · op(B)` for a `B` packed by [`pack_whole_b`] for the same `n`, `k`.
///
/// # Safety
/// As for [`gemm`] with `alpha = 1`, `beta = 0`; `packed` is the packing of `op(B)`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_prepacked(trans_a: c_int, m: usize, n: usize, k: usize, a: *const u16, lda: usize, packed: &[u32], c: *mut f32, ldc: usize) {
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        // SAFETY: row `row` of C (caller).
        (0..m).for_each(|row| unsafe { std::slice::from_raw_parts_mut(c.add(row * ldc), n).fill(0.0) });
        return;
    }
    let a = View { data: a, ld: lda, transposed: trans_a == TRANS };
    PACKS.with_borrow_mut(|(a_pack, _)| {
        let mut offset = 0;
        for (j0, nc, k0, kc) in blocks(n, k) {
            let len = packed_b_block(nc, kc);
            let block = Block { j0, nc, k0, kc, add: k0 > 0, alpha: 1.0 };
            // SAFETY: forwarded from the caller.
            unsafe { block.multiply(a, m, &packed[offset..offset + len], a_pack, c, ldc) };
            offset += len;
        }
    });
}

/// One packed block of `B` and what to do with its products.
struct Block {
    j0: usize,
    nc: usize,
    k0: usize,
    kc: usize,
    /// Whether the products add to `C` (a later `k` block, or `beta = 1`).
    add: bool,
    alpha: f32,
}

impl Block {
    /// `C[:, j0..j0 + nc] (+)= alpha · op(A)[:, k0..k0 + kc] · b_pack`, packing `A` a
    /// block of rows at a time into `a_pack`.
    ///
    /// # Safety
    /// `A` spans `m` rows and the block's `k`; `C` spans `m` rows of the block's columns
    /// (initialised when `add`); `b_pack` is the block's packing; the CPU has AVX512-BF16.
    unsafe fn multiply(&self, a: View, m: usize, b_pack: &[u32], a_pack: &mut Vec<u32>, c: *mut f32, ldc: usize) {
        let Block { j0, nc, k0, kc, add, alpha } = *self;
        let pairs = kc.div_ceil(2);
        for i0 in (0..m).step_by(MC) {
            let mc = MC.min(m - i0);
            // SAFETY: the block lies inside op(A) (caller).
            let a_len = unsafe { pack_a(a, i0..i0 + mc, k0, kc, a_pack) };
            for (jp, b_panel) in b_pack.chunks_exact(pairs * NR).enumerate() {
                let cols = NR.min(nc - jp * NR);
                for (ip, a_panel) in a_pack[..a_len].chunks_exact(pairs * MR).enumerate() {
                    let rows = MR.min(mc - ip * MR);
                    // SAFETY: the tile lies inside C; the panels hold `pairs` pairs; the
                    // CPU has the features (caller).
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        tile(pairs, a_panel.as_ptr(), b_panel.as_ptr(), c.add((i0 + ip * MR) * ldc + j0 + jp * NR), ldc, rows, cols, add, alpha)
                    };
                    #[cfg(not(target_arch = "x86_64"))]
                    let _ = (a_panel, rows, cols, add, alpha);
                }
            }
        }
    }
}

/// One `MR × NR` tile: `C (+)= alpha · A_panel · B_panel` over `pairs` pairs of `k`,
/// writing `rows × cols` of it.
///
/// # Safety
/// The CPU has AVX512-BF16; `a` holds `pairs · MR` and `b` `pairs · NR` lanes; `c`
/// spans `rows` rows of `ldc` with `cols ≤ NR` columns each, initialised when `add`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[allow(clippy::too_many_arguments)]
unsafe fn tile(pairs: usize, a: *const u32, b: *const u32, c: *mut f32, ldc: usize, rows: usize, cols: usize, add: bool, alpha: f32) {
    let mut acc = [[_mm512_setzero_ps(); 2]; MR];
    for p in 0..pairs {
        // SAFETY: inside the panels (caller); bf16 pairs and 32-bit lanes have one layout.
        unsafe {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR).cast()));
            let b1: __m512bh = std::mem::transmute(_mm512_loadu_si512(b.add(p * NR + 16).cast()));
            let ap = a.add(p * MR);
            for (r, row) in acc.iter_mut().enumerate() {
                let ar: __m512bh = std::mem::transmute(_mm512_set1_epi32(*ap.add(r) as i32));
                row[0] = _mm512_dpbf16_ps(row[0], ar, b0);
                row[1] = _mm512_dpbf16_ps(row[1], ar, b1);
            }
        }
    }
    let lanes = |n: usize| if n >= 16 { 0xffff } else { (1u16 << n) - 1 };
    let masks = [lanes(cols), lanes(cols.saturating_sub(16))];
    let scale = _mm512_set1_ps(alpha);
    for (r, row) in acc.iter().enumerate().take(rows) {
        for (half, &mask) in masks.iter().enumerate() {
            if mask == 0 {
                continue;
            }
            // SAFETY: row `r`, columns `16·half ..` under `mask`, inside C (caller).
            unsafe {
                let ptr = c.add(r * ldc + 16 * half);
                let mut value = _mm512_mul_ps(row[half], scale);
                if add {
                    value = _mm512_add_ps(value, _mm512_maskz_loadu_ps(mask, ptr));
                }
                _mm512_mask_storeu_ps(ptr, mask, value);
            }
        }
    }
}

/// `C = alpha · op(A) · op(B) + beta · C` with the CBLAS GEMM signature (row-major
/// only), so it stands wherever MKL's `cblas_gemm_bf16bf16f32` does. `beta = 0` never
/// reads `C`.
///
/// # Safety
/// As for the CBLAS GEMM; the CPU has AVX512-BF16 ([`available`]).
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe extern "C" fn gemm(
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
    let (m, n, k, ldc) = (m.max(0) as usize, n.max(0) as usize, k.max(0) as usize, ldc.max(0) as usize);
    if layout != ROW_MAJOR || m == 0 || n == 0 {
        return;
    }
    if beta != 0.0 && beta != 1.0 {
        for row in 0..m {
            // SAFETY: row `row` of C (caller).
            unsafe { std::slice::from_raw_parts_mut(c.add(row * ldc), n).iter_mut().for_each(|v| *v *= beta) };
        }
    }
    if k == 0 {
        if beta == 0.0 {
            // SAFETY: as above.
            (0..m).for_each(|row| unsafe { std::slice::from_raw_parts_mut(c.add(row * ldc), n).fill(0.0) });
        }
        return;
    }
    let a = View { data: a, ld: lda.max(0) as usize, transposed: trans_a == TRANS };
    let b = View { data: b, ld: ldb.max(0) as usize, transposed: trans_b == TRANS };
    PACKS.with_borrow_mut(|(a_pack, b_pack)| {
        for (j0, nc, k0, kc) in blocks(n, k) {
            let len = packed_b_block(nc, kc);
            if b_pack.len() < len {
                b_pack.resize(len, 0);
            }
            // SAFETY: the block lies inside op(B) (caller's shape); the CPU has
            // AVX-512 (caller).
            unsafe { pack_b(b, j0..j0 + nc, k0, kc, &mut b_pack[..len]) };
            let block = Block { j0, nc, k0, kc, add: beta != 0.0 || k0 > 0, alpha };
            // SAFETY: forwarded from the caller.
            unsafe { block.multiply(a, m, &b_pack[..len], a_pack, c, ldc) };
        }
    });
}

#[cfg(test)]
mod tests {
    use super::super::library::{NO_TRANS, ROW_MAJOR, TRANS};
    use super::{available, gemm, gemm_prepacked, pack_whole_b, whole_b_lanes};

    /// A `B` packed once gives the same products, bit for bit, as packing it inside
    /// each call: every transpose, shapes spanning several `k` and column blocks with
    /// edge panels and an odd `k`, and rows in chunks as the fused experts use it.
    #[test]
    fn a_prepacked_b_gives_the_same_products() {
        if !available() {
            eprintln!("no AVX512-BF16: skipped");
            return;
        }
        for (m, n, k) in [(37, 1100, 777), (5, 33, 2), (260, 64, 385)] {
            for (ta, tb) in [(false, false), (true, false), (false, true), (true, true)] {
                let a: Vec<u16> = (0..m * k).map(|i| 0x3f00 + (i * 7 % 251) as u16).collect();
                let b: Vec<u16> = (0..k * n).map(|i| 0xbe80 + (i * 13 % 241) as u16).collect();
                let (lda, ldb) = (if ta { m } else { k }, if tb { k } else { n });
                let (trans_a, trans_b) = (if ta { TRANS } else { NO_TRANS }, if tb { TRANS } else { NO_TRANS });
                let mut plain = vec![f32::NAN; m * n];
                // SAFETY: the buffers span the row-major shapes given; the CPU has the
                // instruction (checked above).
                unsafe { gemm(ROW_MAJOR, trans_a, trans_b, m as i32, n as i32, k as i32, 1.0, a.as_ptr(), lda as i32, b.as_ptr(), ldb as i32, 0.0, plain.as_mut_ptr(), n as i32) };
                let mut packed = vec![u32::MAX; whole_b_lanes(n, k)];
                // SAFETY: as above; `packed` has the lanes asked for.
                unsafe { pack_whole_b(trans_b, n, k, b.as_ptr(), ldb, &mut packed) };
                let mut chunked = vec![f32::NAN; m * n];
                for start in (0..m).step_by(16) {
                    let rows = 16.min(m - start);
                    let a_rows = if ta { a[start..].as_ptr() } else { a[start * k..].as_ptr() };
                    // SAFETY: rows `start..start + rows` of op(A) and of C.
                    unsafe { gemm_prepacked(trans_a, rows, n, k, a_rows, lda, &packed, chunked[start * n..].as_mut_ptr(), n) };
                }
                assert!(plain.iter().zip(&chunked).all(|(x, y)| x.to_bits() == y.to_bits()), "{m}x{n}x{k} ta {ta} tb {tb}");
                assert!(plain.iter().all(|v| v.is_finite()));
            }
        }
    }
}

//! Packing one panel of an operand as 32-bit `k` pairs, with AVX-512: element by element
//! it was a fifth of a bf16 MoE layer's time on AMD Zen 4 (measured 2026-12-08).
//!
//! A panel holds `lanes` lines (rows of `op(A)` or columns of `op(B)`) and, per pair of
//! `k`, one 32-bit lane per line: `[pair][lane]`. In memory a pair is either two
//! adjacent elements of one stored row (then 16 pairs of 16 lines are loaded and
//! transposed in registers), or one element from each of two stored rows (then two rows
//! of lines are loaded and interleaved).

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::View;

/// Which operand a panel is from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Side {
    A,
    B,
}

/// Packs `count` lines from line `first` of `view` (whose `k` starts at the block's
/// first element) into `out` (`kc.div_ceil(2) · lanes` lanes), zero past `count` and
/// past `kc`.
///
/// # Safety
/// The lines and `kc` lie inside the operand; `count ≤ lanes ≤ 32`; the CPU has
/// AVX-512 F and BW.
pub(super) unsafe fn panel(view: View, side: Side, first: usize, count: usize, lanes: usize, kc: usize, out: &mut [u32]) {
    #[cfg(target_arch = "x86_64")]
    {
        // A pair is two adjacent stored elements when the line is a stored row.
        let pairs_adjacent = (side == Side::A) != view.transposed;
        // SAFETY: forwarded from the caller.
        unsafe { if pairs_adjacent { transposed(view, side, first, count, lanes, kc, out) } else { interleaved(view, first, count, lanes, kc, out) } }
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: as above.
    unsafe {
        scalar(view, side, first, count, lanes, 0, kc, out)
    }
}

/// The first `n` of 16 lanes (all 16 from `n = 16` on).
#[cfg(target_arch = "x86_64")]
fn mask16(n: usize) -> __mmask16 {
    if n >= 16 { u16::MAX } else { (1u16 << n) - 1 }
}

/// Element by element, from pair `from_pair` on: the fallback, and the last pair of an
/// odd `kc` (whose second element lies outside the block, maybe outside the matrix).
///
/// # Safety
/// As for [`panel`].
#[allow(clippy::too_many_arguments)]
unsafe fn scalar(view: View, side: Side, first: usize, count: usize, lanes: usize, from_pair: usize, kc: usize, out: &mut [u32]) {
    for p in from_pair..kc.div_ceil(2) {
        for lane in 0..lanes {
            out[p * lanes + lane] = if lane >= count {
                0
            } else if side == Side::A {
                // SAFETY: line `first + lane` and pair `p` lie inside (caller).
                unsafe { view.pair_along_row(first + lane, p, kc) }
            } else {
                // SAFETY: as above.
                unsafe { view.pair_along_col(p, first + lane, kc) }
            };
        }
    }
}

/// Lines are adjacent elements of stored rows `2p` and `2p + 1`: load both rows' lines
/// (zero past `count`), interleave them into pairs.
///
/// # Safety
/// As for [`panel`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn interleaved(view: View, first: usize, count: usize, lanes: usize, kc: usize, out: &mut [u32]) {
    let load_mask: __mmask32 = if count >= 32 { u32::MAX } else { (1u32 << count) - 1 };
    let low_lanes = mask16(lanes);
    // Output u16 `2i` takes row 0's element `i`, `2i + 1` row 1's (index 32 + i).
    let order = |offset: i16| -> __m512i {
        let mut idx = [0i16; 32];
        for (i, pair) in idx.chunks_exact_mut(2).enumerate() {
            pair[0] = offset + i as i16;
            pair[1] = 32 + offset + i as i16;
        }
        // SAFETY: 64 bytes read from a 64-byte array.
        unsafe { _mm512_loadu_si512(idx.as_ptr().cast()) }
    };
    let (low, high) = (order(0), order(16));
    let row = |k: usize| view.data.wrapping_add(k * view.ld + first);
    for p in 0..kc.div_ceil(2) {
        // SAFETY: masked loads read only the `count` lines of rows inside the block
        // (caller); row `2p + 1` is read only when inside `kc`; stores stay inside the
        // pair's `lanes` lanes of `out`.
        unsafe {
            let r0 = _mm512_maskz_loadu_epi16(load_mask, row(2 * p).cast());
            let r1 = if 2 * p + 1 < kc { _mm512_maskz_loadu_epi16(load_mask, row(2 * p + 1).cast()) } else { _mm512_setzero_si512() };
            let dest = out.as_mut_ptr().add(p * lanes);
            _mm512_mask_storeu_epi32(dest.cast(), low_lanes, _mm512_permutex2var_epi16(r0, low, r1));
            if lanes > 16 {
                _mm512_mask_storeu_epi32(dest.add(16).cast(), mask16(lanes - 16), _mm512_permutex2var_epi16(r0, high, r1));
            }
        }
    }
}

/// Each line is a stored row and a pair two adjacent elements of it: load 16 pairs of
/// 16 lines, transpose them in registers (zero past `count`).
///
/// # Safety
/// As for [`panel`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn transposed(view: View, side: Side, first: usize, count: usize, lanes: usize, kc: usize, out: &mut [u32]) {
    let full_pairs = kc / 2;
    for group in 0..lanes.div_ceil(16) {
        let store = mask16(lanes - 16 * group);
        let lines = count.saturating_sub(16 * group).min(16);
        let line = |i: usize| view.data.wrapping_add((first + 16 * group + i) * view.ld);
        for p0 in (0..full_pairs).step_by(16) {
            let pairs = (full_pairs - p0).min(16);
            let mut block = [_mm512_setzero_si512(); 16];
            for (i, row) in block.iter_mut().enumerate().take(lines) {
                // SAFETY: the masked load reads `pairs` full pairs (inside `kc`) of a
                // line inside the operand (caller); any alignment is fine.
                *row = unsafe { _mm512_maskz_loadu_epi32(mask16(pairs), line(i).add(2 * p0).cast()) };
            }
            let columns = transpose_16x16(block);
            for (j, column) in columns.iter().enumerate().take(pairs) {
                // SAFETY: pair `p0 + j` of this group's lanes, inside `out`.
                unsafe { _mm512_mask_storeu_epi32(out.as_mut_ptr().add((p0 + j) * lanes + 16 * group).cast(), store, *column) };
            }
        }
    }
    if kc % 2 == 1 {
        // SAFETY: as for the caller.
        unsafe { scalar(view, side, first, count, lanes, full_pairs, kc, out) };
    }
}

/// The transpose of a 16 × 16 matrix of 32-bit lanes (row `i` of the result is lane `i`
/// of every input row): unpacks of 32- and 64-bit lanes, then two rounds of 128-bit
/// shuffles.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
fn transpose_16x16(r: [__m512i; 16]) -> [__m512i; 16] {
    let mut t = [_mm512_setzero_si512(); 16];
    for k in 0..8 {
        t[2 * k] = _mm512_unpacklo_epi32(r[2 * k], r[2 * k + 1]);
        t[2 * k + 1] = _mm512_unpackhi_epi32(r[2 * k], r[2 * k + 1]);
    }
    let mut u = [_mm512_setzero_si512(); 16];
    for b in (0..16).step_by(4) {
        u[b] = _mm512_unpacklo_epi64(t[b], t[b + 2]);
        u[b + 1] = _mm512_unpackhi_epi64(t[b], t[b + 2]);
        u[b + 2] = _mm512_unpacklo_epi64(t[b + 1], t[b + 3]);
        u[b + 3] = _mm512_unpackhi_epi64(t[b + 1], t[b + 3]);
    }
    let mut v = [_mm512_setzero_si512(); 16];
    for b in [0, 8] {
        for q in 0..4 {
            v[b + q] = _mm512_shuffle_i32x4::<0x88>(u[b + q], u[b + 4 + q]);
            v[b + 4 + q] = _mm512_shuffle_i32x4::<0xdd>(u[b + q], u[b + 4 + q]);
        }
    }
    let mut c = [_mm512_setzero_si512(); 16];
    for q in 0..8 {
        c[q] = _mm512_shuffle_i32x4::<0x88>(v[q], v[q + 8]);
        c[q + 8] = _mm512_shuffle_i32x4::<0xdd>(v[q], v[q + 8]);
    }
    c
}

//! f32 → bf16 conversion for mixed precision, on the widest vectors the CPU has.

use std::mem::MaybeUninit;

use rayon::prelude::*;

/// Elements per parallel chunk of a bf16 conversion.
const CONVERT_CHUNK: usize = 1 << 15;

/// f32 → bf16 bit patterns, rounding to nearest even (as PyTorch and candle do); NaN
/// stays NaN. Compiled for AVX-512 and AVX2 too, chosen at run time: the conversions
/// of mixed precision touch every operand of every GEMM.
pub(super) fn to_bf16(values: &[f32]) -> Vec<u16> {
    let mut out = Vec::with_capacity(values.len());
    out.spare_capacity_mut().par_chunks_mut(CONVERT_CHUNK).zip(values.par_chunks(CONVERT_CHUNK)).for_each(|(o, v)| convert_chunk(v, o));
    // SAFETY: every chunk of the spare capacity was written by `convert_chunk`.
    unsafe { out.set_len(values.len()) };
    out
}

/// `values` → `out` (equal lengths).
pub(super) fn convert_chunk(values: &[f32], out: &mut [MaybeUninit<u16>]) {
    #[cfg(target_arch = "x86_64")]
    {
        let cpu = crate::cpu::features::features();
        if cpu.avx512_bw() {
            // SAFETY: the CPU has the features the function is compiled for.
            return unsafe { convert_avx512(values, out) };
        }
        if cpu.avx2 {
            // SAFETY: as above.
            return unsafe { convert_avx2(values, out) };
        }
    }
    convert_scalar(values, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
fn convert_avx512(values: &[f32], out: &mut [MaybeUninit<u16>]) {
    convert_scalar(values, out)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn convert_avx2(values: &[f32], out: &mut [MaybeUninit<u16>]) {
    convert_scalar(values, out)
}

#[inline(always)]
fn convert_scalar(values: &[f32], out: &mut [MaybeUninit<u16>]) {
    for (o, &x) in out.iter_mut().zip(values) {
        let bits = x.to_bits();
        let rounded = bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16;
        let nan = (bits & 0x7fff_ffff) > 0x7f80_0000;
        o.write(if nan { ((bits >> 16) | 0x40) as u16 } else { rounded as u16 });
    }
}

//! A tensor's element bytes, borrowed straight from its storage when it is contiguous:
//! writing a checkpoint should cost one pass over the data, not a copy per element.

use candle_core::{CpuStorage, DType, Result, Storage, Tensor};

// Safetensors stores little-endian values; the borrowed bytes are the in-memory ones.
const _: () = assert!(cfg!(target_endian = "little"), "Recast writes tensors by reinterpreting little-endian memory");

fn as_bytes<T: Copy>(values: &[T]) -> &[u8] {
    // SAFETY: plain-old-data floats (f32, f16, bf16) with no padding; the byte slice
    // covers exactly the same memory and lives as long as `values`.
    unsafe { std::slice::from_raw_parts(values.as_ptr().cast::<u8>(), std::mem::size_of_val(values)) }
}

/// Call `f` with the bytes of `tensor` converted to `dtype` (F32, F16 or BF16).
pub fn with_tensor_bytes<R>(tensor: &Tensor, dtype: DType, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
    let t = tensor.to_dtype(dtype)?.to_device(&candle_core::Device::Cpu)?;
    let t = if t.is_contiguous() { t } else { t.contiguous()? };
    let (storage, layout) = t.storage_and_layout();
    let (start, end) = layout.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("tensor is not contiguous".into()))?;
    match &*storage {
        Storage::Cpu(CpuStorage::F32(v)) => Ok(f(as_bytes(&v[start..end]))),
        Storage::Cpu(CpuStorage::F16(v)) => Ok(f(as_bytes(&v[start..end]))),
        Storage::Cpu(CpuStorage::BF16(v)) => Ok(f(as_bytes(&v[start..end]))),
        _ => Err(candle_core::Error::Msg(format!("cannot write {dtype:?} tensors (F32, F16 or BF16 on the CPU only)"))),
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{DType, Device, Tensor};

    #[test]
    fn bytes_match_the_little_endian_encoding_even_for_views() {
        let t = Tensor::new(&[[1.5f32, -2.0], [3.25, 4.0]], &Device::Cpu).unwrap();
        let want: Vec<u8> = [1.5f32, 3.25, -2.0, 4.0].iter().flat_map(|x| x.to_le_bytes()).collect();
        let got = super::with_tensor_bytes(&t.t().unwrap(), DType::F32, |b| b.to_vec()).unwrap();
        assert_eq!(got, want);
        let half = super::with_tensor_bytes(&t, DType::BF16, |b| b.len()).unwrap();
        assert_eq!(half, 8);
    }
}

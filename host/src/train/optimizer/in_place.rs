//! Writing an f32 CPU tensor's values where they lie, so that the optimizer updates
//! parameters and moments without a fresh allocation per step (fresh pages cost the
//! kernel a zeroing pass each, a sixth of a real-shape step).

use std::cell::RefCell;

use candle_core::{CpuStorage, DType, InplaceOp1, Layout, Result, Storage, Tensor};

/// The address of an f32 CPU tensor's buffer, or `None` for any other tensor (two
/// tensors that share one buffer must not be locked for writing together).
pub fn f32_buffer(t: &Tensor) -> Option<usize> {
    if t.dtype() != DType::F32 || !t.is_contiguous() {
        return None;
    }
    let (storage, _) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(CpuStorage::F32(values)) => Some(values.as_ptr() as usize),
        _ => None,
    }
}

/// Runs `f` on the values of `t` (contiguous f32 on the CPU: see [`f32_buffer`]),
/// which it may change in place; `None` for any other tensor.
pub fn with_values_mut<R>(t: &Tensor, f: impl FnOnce(&mut [f32]) -> Result<R>) -> Result<Option<R>> {
    if f32_buffer(t).is_none() {
        return Ok(None);
    }
    let op = ValuesMut { f: RefCell::new(Some(f)), out: RefCell::new(None) };
    t.inplace_op1(&op)?;
    op.out.into_inner().transpose()
}

/// Runs `f` on the values of `t` (contiguous f32 on the CPU), read only.
pub fn with_values<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<Option<R>> {
    if f32_buffer(t).is_none() {
        return Ok(None);
    }
    let (storage, layout) = t.storage_and_layout();
    match (&*storage, layout.contiguous_offsets()) {
        (Storage::Cpu(CpuStorage::F32(values)), Some((start, end))) => f(&values[start..end]).map(Some),
        _ => Ok(None),
    }
}

/// The in-place op that hands a closure the values (candle's only door to a tensor's
/// buffer for writing).
struct ValuesMut<F, R> {
    f: RefCell<Option<F>>,
    out: RefCell<Option<Result<R>>>,
}

impl<F: FnOnce(&mut [f32]) -> Result<R>, R> InplaceOp1 for ValuesMut<F, R> {
    fn name(&self) -> &'static str {
        "recast-values-in-place"
    }

    fn cpu_fwd(&self, storage: &mut CpuStorage, layout: &Layout) -> Result<()> {
        let (CpuStorage::F32(values), Some((start, end))) = (storage, layout.contiguous_offsets()) else { candle_core::bail!("in-place update of a tensor that is not contiguous f32") };
        let f = self.f.borrow_mut().take().ok_or_else(|| candle_core::Error::Msg("in-place update run twice".into()))?;
        *self.out.borrow_mut() = Some(f(&mut values[start..end]));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn values_change_where_they_lie_and_other_tensors_are_refused() {
        let t = Tensor::new(&[1f32, 2., 3.], &Device::Cpu).unwrap();
        let before = f32_buffer(&t);
        let sum = with_values_mut(&t, |v| {
            v.iter_mut().for_each(|x| *x *= 2.0);
            Ok(v.iter().sum::<f32>())
        })
        .unwrap();
        assert_eq!(sum, Some(12.0));
        assert_eq!(t.to_vec1::<f32>().unwrap(), [2., 4., 6.]);
        assert_eq!(f32_buffer(&t), before, "the same buffer");
        let bf16 = t.to_dtype(DType::BF16).unwrap();
        assert_eq!(with_values_mut(&bf16, |_| Ok(())).unwrap(), None);
        assert_eq!(with_values(&t, |v| Ok(v.len())).unwrap(), Some(3));
    }
}

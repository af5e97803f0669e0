//! Reading the inputs of Recast's fused CPU ops: each checks the same things (f32,
//! contiguous, on the CPU) and names the op and the operand when one is not.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, Layout, Result, Storage, Tensor};

/// The f32 elements of one operand's storage.
pub(crate) fn f32_slice<'a>(op: &str, what: &str, storage: &'a CpuStorage, layout: &Layout) -> Result<&'a [f32]> {
    match (storage, layout.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((start, end))) => Ok(&v[start..end]),
        (CpuStorage::F32(_), None) => candle_core::bail!("{op}: {what} is not contiguous"),
        (other, _) => candle_core::bail!("{op}: {what} is {:?}, not f32", other.dtype()),
    }
}

/// Runs `f` on the f32 elements of a CPU tensor (made contiguous first).
pub(crate) fn with_f32<R>(op: &str, what: &str, t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        Storage::Cpu(cpu) => f(f32_slice(op, what, cpu, layout)?),
        _ => candle_core::bail!("{op}: {what} is not on the CPU"),
    }
}

/// Whether `t` is f32 on the CPU: what every op here takes, so what callers check before
/// choosing one.
pub(crate) fn is_f32_cpu(t: &Tensor) -> bool {
    t.dtype() == candle_core::DType::F32 && t.device().is_cpu()
}

//! The PTX of `kernels/*.cu` (compiled by `build.rs` with nvcc) and how ops launch it:
//! modules load once per device, on first use.

use std::sync::Arc;

use candle_core::cuda_backend::CudaDevice;
use candle_core::cuda_backend::cudarc::driver::{CudaFunction, CudaSlice, CudaStream, CudaView, DeviceRepr, LaunchArgs, LaunchConfig};
use candle_core::{CudaStorage, DType, Device, Layout, Result, Tensor};

/// One PTX module: a name to cache it under on the device, and its text.
pub struct Module {
    /// Key in the device's module cache.
    pub name: &'static str,
    /// PTX text.
    pub ptx: &'static str,
}

/// `kernels/router.cu`: the fused router and its backward.
pub const ROUTER: Module = Module { name: "recast_router", ptx: include_str!(concat!(env!("OUT_DIR"), "/router.ptx")) };
/// `kernels/permute.cu`: positions, permute and its backward.
pub const PERMUTE: Module = Module { name: "recast_permute", ptx: include_str!(concat!(env!("OUT_DIR"), "/permute.ptx")) };
/// `kernels/combine.cu`: the weighted combine and its backward.
pub const COMBINE: Module = Module { name: "recast_combine", ptx: include_str!(concat!(env!("OUT_DIR"), "/combine.ptx")) };

/// Threads per block for row-wise kernels.
pub const BLOCK: u32 = 256;

/// A loaded kernel and the stream it launches on (the device's, as candle's own ops).
pub struct Kernel {
    func: CudaFunction,
    stream: Arc<CudaStream>,
}

impl Kernel {
    /// Arguments for one launch.
    pub fn builder(&self) -> LaunchArgs<'_> {
        self.stream.launch_builder(&self.func)
    }
}

/// Kernel `name` of `module` on `dev`.
pub fn function(dev: &CudaDevice, module: &Module, name: &str) -> Result<Kernel> {
    let func = dev.get_or_load_custom_func(name, module.name, module.ptx)?.into_cuda_function();
    Ok(Kernel { func, stream: dev.cuda_stream() })
}

/// One block of `block` threads per item, `items` blocks.
pub fn per_item(items: usize, block: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (items as u32, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

/// One thread per item, in blocks of `block`.
pub fn per_thread(items: usize, block: u32) -> LaunchConfig {
    LaunchConfig { grid_dim: (items.div_ceil(block as usize).max(1) as u32, 1, 1), block_dim: (block, 1, 1), shared_mem_bytes: 0 }
}

/// The CUDA device a tensor lives on.
pub fn cuda_device(t: &Tensor, op: &str) -> Result<CudaDevice> {
    match t.device() {
        Device::Cuda(d) => Ok(d.clone()),
        other => candle_core::bail!("{op}: needs a CUDA tensor, got one on {other:?}"),
    }
}

/// Kernel-name suffix of an element type the kernels are instantiated for.
pub fn suffix(dtype: DType, op: &str) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::BF16 => Ok("bf16"),
        other => candle_core::bail!("{op}: CUDA kernels take f32 or bf16, got {other:?}"),
    }
}

/// The contiguous elements of a storage under its layout.
pub fn view<'a, T: candle_core::cuda_backend::CudaDType + DeviceRepr>(s: &'a CudaStorage, l: &Layout, op: &str, operand: &str) -> Result<CudaView<'a, T>> {
    let Some((start, end)) = l.contiguous_offsets() else { candle_core::bail!("{op}: {operand} must be contiguous") };
    Ok(s.as_cuda_slice::<T>()?.slice(start..end))
}

/// A fresh device buffer of `len` elements that the launching kernel fully writes.
pub fn output<T: DeviceRepr>(dev: &CudaDevice, len: usize) -> Result<CudaSlice<T>> {
    // SAFETY: every caller launches a kernel that writes all `len` elements before the
    // buffer is read.
    unsafe { dev.alloc::<T>(len) }
}

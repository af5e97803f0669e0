//! The matrix products under every linear layer: candle's own matmul, or a BLAS loaded
//! at run time (MKL, OpenBLAS), in f32 or mixed precision (bf16 inputs, f32
//! accumulation, f32 master weights and optimizer moments). Linear layers are most of a
//! training step, and candle's CPU matmul reaches half of what MKL does in f32 and a
//! seventh of what AMX does in bf16.
//!
//! The choice is one per process (the run config's `[compute]` section, or the bench
//! commands' flags), because the model's ops carry no context; a process that never
//! configures gets `auto` in f32.

mod avx512_bf16;
mod bf16;
mod bf16_kernel;
mod gemm;
mod grouped;
mod library;

use std::sync::{Arc, OnceLock, RwLock};

use candle_core::{DType, Result, Tensor};
use serde::{Deserialize, Serialize};

pub use bf16_kernel::{BF16_KERNEL_VAR, Bf16Choice, Bf16Kernel, choice as bf16_choice, chosen as bf16_chosen};
pub use gemm::GemmShape;
pub(crate) use gemm::{Accumulate, GemmInput, Operand, PackedB, as_uninit, gemm_serial, gemm_strided};
pub(crate) use grouped::{RowInput, grouped_linear, split_rows};
pub use library::{BLAS_ENV, BlasLibrary, bundled_mkl};

/// The element type of the matrix products.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// f32 everywhere.
    #[default]
    F32,
    /// Mixed precision: linear layers multiply bf16-rounded inputs with f32
    /// accumulation and return f32; weights, gradients, optimizer moments and every other
    /// op stay f32, but for the MoE experts' activations kept for the backward, which are
    /// bf16 (as under PyTorch's autocast). The MoE router stays f32 (top-k choices should
    /// not flip on rounding).
    Bf16,
}

/// Which library multiplies.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum MatmulBackend {
    /// The BLAS when one loads, else candle. On the 2-core development machine (Intel
    /// Xeon with AMX) MKL measured 1.06–1.3× candle's f32 GEMM and 4.8× it in bf16, and the
    /// BLAS path also enables the grouped-expert and fused-attention ops; `recast bench
    /// matmul` measures yours.
    #[default]
    Auto,
    /// candle-core's matmul (the `gemm` crate).
    Candle,
    /// The BLAS; an error when none loads.
    Blas,
}

/// The run config's `[compute]` section.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeSettings {
    #[serde(default)]
    pub precision: Precision,
    #[serde(default)]
    pub matmul: MatmulBackend,
    /// Where the run computes (`"cpu"`, `"cuda"`, `"cuda:N"`).
    #[serde(default)]
    pub device: crate::model::compute_device::ComputeDevice,
    /// Which activations training recomputes instead of keeping (`"none"`, `"moe"`,
    /// `"full"`).
    #[serde(default)]
    pub recompute: crate::model::training_pass::Recompute,
}

/// Why the matmul path cannot run as asked.
#[derive(Debug, thiserror::Error)]
pub enum MatmulError {
    #[error("cannot load the BLAS library {path}: {cause}")]
    Library { path: std::path::PathBuf, cause: String },
    #[error("`matmul = \"blas\"` but no BLAS library loads (run scripts/cpu-blas.sh, or set {BLAS_ENV} to a libmkl_rt or libopenblas file)")]
    NoLibrary,
    #[error("the {vendor} library has no bf16 GEMM (bf16 needs MKL, or an OpenBLAS built with bfloat16)")]
    NoBf16Gemm { vendor: &'static str },
    #[error("{0}")]
    Shape(String),
}

/// The matmul path `linear` takes.
#[derive(Clone, Debug)]
pub struct ActiveMatmul {
    pub precision: Precision,
    /// The BLAS, or `None` for candle's matmul.
    pub blas: Option<Arc<BlasLibrary>>,
}

impl std::fmt::Display for ActiveMatmul {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let precision = match self.precision {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16 (mixed precision)",
        };
        match &self.blas {
            Some(lib) => match bf16_kernel::chosen().filter(|c| self.precision == Precision::Bf16 || c.kernel == Bf16Kernel::F32) {
                Some(choice) => write!(f, "{} ({}) {precision}, {choice}", lib.vendor, lib.path.display()),
                None => write!(f, "{} ({}) {precision}", lib.vendor, lib.path.display()),
            },
            None => write!(f, "candle {precision}"),
        }
    }
}

/// The BLAS, loaded once per process. An error only when `RECAST_BLAS` names a library
/// that does not load.
pub fn library() -> std::result::Result<Option<Arc<BlasLibrary>>, MatmulError> {
    static LIBRARY: OnceLock<std::result::Result<Option<Arc<BlasLibrary>>, String>> = OnceLock::new();
    let loaded = LIBRARY.get_or_init(|| BlasLibrary::find().map(|l| l.map(Arc::new)).map_err(|e| e.to_string()));
    loaded.clone().map_err(|cause| MatmulError::Library { path: std::env::var_os(BLAS_ENV).unwrap_or_default().into(), cause })
}

/// The path `settings` asks for on this machine.
pub fn resolve(settings: ComputeSettings) -> std::result::Result<ActiveMatmul, MatmulError> {
    let precision = settings.precision;
    let blas = match settings.matmul {
        MatmulBackend::Candle => None,
        MatmulBackend::Blas => Some(library()?.ok_or(MatmulError::NoLibrary)?),
        MatmulBackend::Auto => library()?,
    };
    let mut precision = precision;
    if let (Some(lib), Precision::Bf16, crate::model::compute_device::ComputeDevice::Cpu) = (&blas, precision, settings.device)
        && bf16_kernel::choice(lib).kernel == Bf16Kernel::F32
    {
        precision = Precision::F32;
    }
    Ok(ActiveMatmul { precision, blas })
}

static ACTIVE: RwLock<Option<ActiveMatmul>> = RwLock::new(None);

/// Sets the process's matmul path; returns it (for the run's log).
pub fn configure(settings: ComputeSettings) -> std::result::Result<ActiveMatmul, MatmulError> {
    let active = resolve(settings)?;
    *ACTIVE.write().unwrap_or_else(|e| e.into_inner()) = Some(active.clone());
    Ok(active)
}

/// The process's matmul path (`auto`, f32 until configured).
pub fn active() -> ActiveMatmul {
    if let Some(active) = ACTIVE.read().unwrap_or_else(|e| e.into_inner()).as_ref() {
        return active.clone();
    }
    resolve(ComputeSettings::default()).unwrap_or(ActiveMatmul { precision: Precision::F32, blas: None })
}

/// `x Wᵀ` for `x [n, in]` and a Hugging Face weight `[out, in]`, on `path`. Tensors that
/// are not f32 matrices on the CPU take candle's matmul in their own dtype.
pub fn linear_on(path: &ActiveMatmul, x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let f32_matrices = x.device().is_cpu() && x.dtype() == DType::F32 && weight.dtype() == DType::F32 && x.rank() == 2 && weight.rank() == 2;
    match (&path.blas, path.precision) {
        (Some(lib), precision) if f32_matrices => grouped_linear(x, &weight.unsqueeze(0)?, &[x.dim(0)?], precision, lib.clone(), None, RowInput::Plain),
        (_, Precision::Bf16) if x.dtype() == DType::F32 && weight.dtype() == DType::F32 => x.to_dtype(DType::BF16)?.matmul(&weight.to_dtype(DType::BF16)?.t()?)?.to_dtype(DType::F32),
        _ => x.matmul(&weight.t()?),
    }
}

/// `x Wᵀ` on the process's matmul path.
pub fn linear(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    linear_on(&active(), x, weight)
}

/// `x Wᵀ` on the process's matmul library, always in f32 (half-precision inputs are
/// widened first: the router's near-ties must not depend on the model's dtype).
pub fn linear_f32(x: &Tensor, weight: &Tensor) -> Result<Tensor> {
    let widen = |t: &Tensor| if matches!(t.dtype(), DType::BF16 | DType::F16) { t.to_dtype(DType::F32) } else { Ok(t.clone()) };
    linear_on(&ActiveMatmul { precision: Precision::F32, ..active() }, &widen(x)?, &widen(weight)?)
}

/// f32 → bf16 bit patterns, rounding to nearest even.
pub fn to_bf16_bits(values: &[f32]) -> Vec<u16> {
    bf16::to_bf16(values)
}

/// [`to_bf16_bits`] into a given slice, on the calling thread (for rows a parallel task
/// already owns).
pub(crate) fn store_bf16(values: &[f32], out: &mut [std::mem::MaybeUninit<u16>]) {
    bf16::convert_chunk(values, out)
}

/// [`fully_written`] for a `fill` that cannot fail.
///
/// # Safety
/// `fill` must initialise every element.
pub(crate) unsafe fn fully_written_by(n: usize, fill: impl FnOnce(&mut [std::mem::MaybeUninit<f32>])) -> Vec<f32> {
    // SAFETY: forwarded from the caller.
    let written = unsafe {
        fully_written::<std::convert::Infallible>(n, |out| {
            fill(out);
            Ok(())
        })
    };
    written.unwrap_or_else(|never| match never {})
}

/// A vector of `n` f32 that `fill` writes completely, without zeroing it first (the
/// outputs of GEMMs and fused ops are tens of megabytes, written once).
///
/// # Safety
/// `fill` must initialise every element when it returns `Ok`.
pub(crate) unsafe fn fully_written<E>(n: usize, fill: impl FnOnce(&mut [std::mem::MaybeUninit<f32>]) -> std::result::Result<(), E>) -> std::result::Result<Vec<f32>, E> {
    let mut out = Vec::with_capacity(n);
    fill(&mut out.spare_capacity_mut()[..n])?;
    // SAFETY: the caller's `fill` initialised all `n` elements.
    unsafe { out.set_len(n) };
    Ok(out)
}

#[cfg(test)]
mod tests;

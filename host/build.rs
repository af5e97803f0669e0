//! With the `cuda` feature, compiles the MoE kernels in `../kernels/*.cu` to PTX with
//! nvcc (from `CUDA_HOME`, else `PATH`), for `src/cuda/kernels.rs` to embed. Without the
//! feature it does nothing, so the CPU build needs no CUDA.

use std::env;
use std::path::PathBuf;
use std::process::Command;

/// The kernel sources, one PTX module each.
const KERNELS: [&str; 3] = ["router", "permute", "combine"];

fn main() {
    println!("cargo::rerun-if-env-changed=CUDA_HOME");
    println!("cargo::rerun-if-env-changed=CUDA_COMPUTE_CAP");
    if env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let kernels = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR")).join("../kernels");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let nvcc = env::var_os("CUDA_HOME").map(|home| PathBuf::from(home).join("bin/nvcc")).filter(|p| p.exists()).unwrap_or_else(|| PathBuf::from("nvcc"));
    let arch = format!("compute_{}", env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "80".into()));
    println!("cargo::rerun-if-changed={}", kernels.join("common.cuh").display());
    for name in KERNELS {
        let source = kernels.join(format!("{name}.cu"));
        println!("cargo::rerun-if-changed={}", source.display());
        let status = Command::new(&nvcc)
            .args(["-ptx", "-O3", "-std=c++17", "-arch", &arch, "-o"])
            .arg(out.join(format!("{name}.ptx")))
            .arg(&source)
            .status()
            .unwrap_or_else(|e| panic!("the `cuda` feature needs nvcc ({}): {e}; scripts/cuda-toolchain.sh installs one, scripts/cuda-build.sh builds with it", nvcc.display()));
        assert!(status.success(), "nvcc failed on {}", source.display());
    }
}

//! `recast bench matmul`: the measurement behind `[compute] matmul = "auto"`. Every path
//! multiplies the same operands as a linear layer does (`x Wᵀ`) through the same entry
//! point the model uses, so conversions and thread splitting are counted.

use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};

use crate::cpu::matmul::{self, ActiveMatmul, Bf16Kernel, Precision};

pub(super) fn run(m: usize, k: usize, n: usize, repeats: usize) -> anyhow::Result<()> {
    let blas = matmul::library()?;
    let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu)?;
    let w = Tensor::randn(0f32, 1.0, (n, k), &Device::Cpu)?;
    let flop = 2.0 * (m * n * k) as f64;
    println!(
        "matmul: C[{m}x{n}] = A[{m}x{k}] . B[{n}x{k}]^T threads={} blas: {}",
        candle_core::utils::get_num_threads(),
        blas.as_ref().map_or("none".to_string(), |l| format!("{} ({})", l.vendor, l.path.display()))
    );
    let mut results = Vec::new();
    for precision in [Precision::F32, Precision::Bf16] {
        let mut paths = vec![ActiveMatmul { precision, blas: None }];
        if let Some(lib) = blas.as_ref() {
            paths.push(ActiveMatmul { precision, blas: Some(lib.clone()) });
        }
        for path in paths {
            let gflops = flop / median_seconds(&path, &x, &w, repeats)? / 1e9;
            let kernel = match (&path.blas, precision) {
                (Some(lib), Precision::Bf16) => format!("  ({})", matmul::bf16_choice(lib)),
                _ => String::new(),
            };
            println!("{:<10} {:<5} {gflops:>8.1} GFLOP/s{kernel}", path.blas.as_ref().map_or("candle", |l| l.vendor), format!("{precision:?}").to_lowercase());
            results.push((path, gflops));
        }
    }
    let candle_f32 = results.first().map(|r| r.1).unwrap_or(f64::NAN);
    for precision in [Precision::F32, Precision::Bf16] {
        if let Some((best, gflops)) = results.iter().filter(|r| r.0.precision == precision).max_by(|a, b| a.1.total_cmp(&b.1)) {
            println!("fastest {}: {} ({:.2}x candle f32)", format!("{precision:?}").to_lowercase(), best.blas.as_ref().map_or("candle", |l| l.vendor), gflops / candle_f32);
        }
    }
    Ok(())
}

/// The median time of `x Wᵀ` on `path` after two warm-ups.
fn median_seconds(path: &ActiveMatmul, x: &Tensor, w: &Tensor, repeats: usize) -> anyhow::Result<f64> {
    crate::memory::enter_steady_state();
    for _ in 0..2 {
        matmul::linear_on(path, x, w)?;
    }
    let mut times = (0..repeats.max(1))
        .map(|_| {
            let start = Instant::now();
            matmul::linear_on(path, x, w).map(|_| start.elapsed().as_secs_f64())
        })
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("matmul on {path}"))?;
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

/// This CPU's measured GEMM peak in `precision`: the best GFLOP/s of a `size`³ product
/// over every matmul path it has, all threads given; with the path that reached it.
/// What the other benchmarks state their achieved FLOP/s as a fraction of.
pub(super) fn peak(precision: Precision, size: usize, repeats: usize) -> anyhow::Result<(f64, String)> {
    let blas = matmul::library()?;
    let x = Tensor::randn(0f32, 1.0, (size, size), &Device::Cpu)?;
    let w = Tensor::randn(0f32, 1.0, (size, size), &Device::Cpu)?;
    let flop = 2.0 * (size as f64).powi(3);
    let mut paths = vec![ActiveMatmul { precision, blas: None }];
    if let Some(lib) = blas {
        paths.push(ActiveMatmul { precision, blas: Some(lib) });
    }
    let mut best = (0.0, String::new());
    for path in paths {
        let gflops = flop / median_seconds(&path, &x, &w, repeats)? / 1e9;
        if gflops > best.0 {
            best = (gflops, path_name(&path));
        }
    }
    Ok(best)
}

/// What multiplied on `path`: the library, and in bf16 the kernel measured the fastest
/// (Recast's own AVX512-BF16 GEMM may stand in for the library's).
fn path_name(path: &ActiveMatmul) -> String {
    match (&path.blas, path.precision) {
        (None, _) => "candle".to_string(),
        (Some(lib), Precision::F32) => lib.vendor.to_string(),
        (Some(lib), Precision::Bf16) => match matmul::bf16_choice(lib).kernel {
            Bf16Kernel::F32 => format!("{}, products in f32", lib.vendor),
            kernel => format!("{}, bf16 kernel {}", lib.vendor, kernel.name()),
        },
    }
}

/// `recast bench peak`: the f32 and bf16 GEMM peak of this CPU.
pub(super) fn run_peak(size: usize, repeats: usize) -> anyhow::Result<()> {
    println!("peak: {size}x{size}x{size} products, threads={}", candle_core::utils::get_num_threads());
    for precision in [Precision::F32, Precision::Bf16] {
        let (gflops, path) = peak(precision, size, repeats)?;
        println!("peak {}: {gflops:.1} GFLOP/s ({path})", format!("{precision:?}").to_lowercase());
    }
    Ok(())
}

/// "X GFLOP/s, Y % of this CPU's measured `precision` peak": how far a benchmark is from
/// what the machine can do (a short peak measurement, 1024³ products).
pub(super) fn fraction_of_peak(flop: f64, seconds: f64, precision: Precision) -> String {
    let achieved = flop / seconds.max(1e-12) / 1e9;
    match peak(precision, 1024, 3) {
        Ok((peak, path)) => {
            format!("achieved {achieved:.1} GFLOP/s, {:.0} % of this CPU's measured {} peak ({peak:.1} GFLOP/s, {path})", 100.0 * achieved / peak.max(1e-9), format!("{precision:?}").to_lowercase())
        }
        Err(e) => format!("achieved {achieved:.1} GFLOP/s (no peak measured: {e:#})"),
    }
}

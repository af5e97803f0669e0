//! `recast bench matmul`: the measurement behind `[compute] matmul = "auto"`. Every path
//! multiplies the same operands as a linear layer does (`x Wᵀ`) through the same entry
//! point the model uses, so conversions and thread splitting are counted.

use std::time::Instant;

use anyhow::Context;
use candle_core::{Device, Tensor};

use crate::cpu::matmul::{self, ActiveMatmul, Precision};

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
        if let Some(lib) = blas.as_ref().filter(|l| precision == Precision::F32 || l.has_bf16()) {
            paths.push(ActiveMatmul { precision, blas: Some(lib.clone()) });
        }
        for path in paths {
            for _ in 0..2 {
                matmul::linear_on(&path, &x, &w)?;
            }
            let mut times = (0..repeats.max(1))
                .map(|_| {
                    let start = Instant::now();
                    matmul::linear_on(&path, &x, &w).map(|_| start.elapsed().as_secs_f64())
                })
                .collect::<Result<Vec<_>, _>>()
                .with_context(|| format!("matmul on {path}"))?;
            times.sort_by(f64::total_cmp);
            let gflops = flop / times[times.len() / 2] / 1e9;
            println!("{:<10} {:<5} {gflops:>8.1} GFLOP/s", path.blas.as_ref().map_or("candle", |l| l.vendor), format!("{precision:?}").to_lowercase());
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

//! `recast bench languages`: what a plugin costs in each language. For each policy that
//! exists in Rust and in Python or JavaScript, the same measurements of both in this
//! process: component size, compile time (no cache), instantiation (instantiate, `info`,
//! `configure`), and the kind's per-step call; the non-Rust figures as ratios to Rust.

use std::time::{Duration, Instant};

use anyhow::Context;

use super::bench::{median, micros, millis, synthetic_layers};
use crate::plugins::aux_schedule::AuxSchedulePlugin;
use crate::plugins::router::RouterPlugin;
use crate::plugins::sampler::{DomainStats, SampleRequest, SamplerPlugin};
use crate::plugins::{PluginComponent, PluginEngine, PluginLimits};

/// One plugin's figures.
struct Figures {
    name: String,
    size: usize,
    compile: Duration,
    instantiate: Duration,
    call: Duration,
    /// Fuel of one per-step call.
    fuel: u64,
}

pub(super) fn languages(repeats: usize) -> anyhow::Result<()> {
    let built = super::build_plugins(&super::source_root().join("plugins")).context("building the plugins")?;
    let file = |name: &str| built.iter().find(|p| p.name == name).map(|p| p.path.clone()).with_context(|| format!("the build produced no {name}"));
    let engine = PluginEngine::without_disk_cache()?;
    let limits = PluginLimits::default;

    let uneven = |e: u32| 100 + (e * 37) % 50;
    let (layers, stats) = synthetic_layers(8, 64, 4096, 2, uneven);
    let moe_layers: Vec<u32> = layers.iter().map(|l| l.layer).collect();
    let request = SampleRequest {
        step: 7,
        batch_sequences: 64,
        domains: (0..3).map(|i| DomainStats { domain: i, name: format!("d{i}"), tokens_available: 1 << 20, tokens_seen: 0, train_loss: None, valid_loss: None, reference_loss: None }).collect(),
    };

    println!("per-step call: router on-step over 8 layers x 64 experts, sampler next over 3 domains, aux-schedule coefficients for 8 layers");
    println!("{:<20} {:>10} {:>12} {:>14} {:>12} {:>12}", "plugin", "size KiB", "compile ms", "instantiate ms", "call µs", "call fuel");
    let pairs = [("aux-free-bias", "py-aux-free-bias"), ("balanced", "py-balanced"), ("warmup-decay", "js-warmup-decay")];
    for (rust, other) in pairs {
        let mut rows = Vec::new();
        for name in [rust, other] {
            let bytes = std::fs::read(file(name)?)?;
            let start = Instant::now();
            let component = engine.load_bytes(name, &bytes)?;
            let compile = start.elapsed();
            let figures = match name {
                "aux-free-bias" | "py-aux-free-bias" => {
                    let make = |c: &PluginComponent| RouterPlugin::new(&engine, c, "gamma = 0.001", 0, limits());
                    let instantiate = median(repeats, || make(&component).map(drop).map_err(Into::into))?;
                    let mut p = make(&component)?;
                    let mut step = 0;
                    let call = per_call(repeats, || {
                        step += 1;
                        p.on_step(step, &stats, &layers).map(drop).map_err(Into::into)
                    })?;
                    (instantiate, call, p.instance().fuel_used_by_last_call().unwrap_or(0))
                }
                "balanced" | "py-balanced" => {
                    let make = |c: &PluginComponent| SamplerPlugin::new(&engine, c, "", 0, limits());
                    let instantiate = median(repeats, || make(&component).map(drop).map_err(Into::into))?;
                    let mut p = make(&component)?;
                    let call = per_call(repeats, || p.next(&request).map(drop).map_err(Into::into))?;
                    (instantiate, call, p.instance().fuel_used_by_last_call().unwrap_or(0))
                }
                _ => {
                    let make = |c: &PluginComponent| AuxSchedulePlugin::new(&engine, c, "warmup_steps = 10", 0, limits());
                    let instantiate = median(repeats, || make(&component).map(drop).map_err(Into::into))?;
                    let mut p = make(&component)?;
                    let call = per_call(repeats, || p.coefficients(5, &moe_layers, &stats).map(drop).map_err(Into::into))?;
                    (instantiate, call, p.instance().fuel_used_by_last_call().unwrap_or(0))
                }
            };
            rows.push(Figures { name: name.to_string(), size: bytes.len(), compile, instantiate: figures.0, call: figures.1, fuel: figures.2 });
        }
        let base = &rows[0];
        for f in &rows {
            println!("{:<20} {:>10} {:>12.0} {:>14.2} {:>12.1} {:>12}", f.name, f.size.div_ceil(1024), millis(f.compile), millis(f.instantiate), micros(f.call), f.fuel);
        }
        let o = &rows[1];
        println!(
            "{:<20} {:>9.0}x {:>11.0}x {:>13.0}x {:>11.1}x {:>11.0}x",
            "  ratio to Rust",
            o.size as f64 / base.size as f64,
            o.compile.as_secs_f64() / base.compile.as_secs_f64().max(1e-9),
            o.instantiate.as_secs_f64() / base.instantiate.as_secs_f64().max(1e-9),
            o.call.as_secs_f64() / base.call.as_secs_f64().max(1e-9),
            o.fuel as f64 / base.fuel.max(1) as f64
        );
    }
    // The largest router call a real model makes: DeepSeek-V3 has 58 MoE layers of 256
    // experts. Its fuel must stay well inside the default budget.
    let (big, big_stats) = synthetic_layers(58, 256, 4096, 2, uneven);
    let mut py = RouterPlugin::new(&engine, &engine.load_bytes("py-aux-free-bias", &std::fs::read(file("py-aux-free-bias")?)?)?, "gamma = 0.001", 0, limits())?;
    let start = Instant::now();
    py.on_step(1, &big_stats, &big)?;
    let took = start.elapsed();
    let fuel = py.instance().fuel_used_by_last_call().unwrap_or(0);
    let budget = limits().fuel_per_call.unwrap_or(u64::MAX);
    println!("py-aux-free-bias on-step over 58 layers x 256 experts: {:.1} ms, fuel {fuel} ({:.1} % of the default budget of {budget})", millis(took), fuel as f64 * 100.0 / budget as f64);
    Ok(())
}

/// Median time of one call, from batches of calls.
fn per_call(repeats: usize, mut call: impl FnMut() -> anyhow::Result<()>) -> anyhow::Result<Duration> {
    const CALLS: u32 = 50;
    Ok(median(repeats, || {
        for _ in 0..CALLS {
            call()?;
        }
        Ok(())
    })? / CALLS)
}

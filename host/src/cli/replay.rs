//! `recast replay RUN_DIR --step S`: replay a traced step with [`crate::run::Run::replay`]
//! and print what differs.

use std::path::Path;

use crate::run::{Run, RunOptions};

/// Differences printed one per line before the rest is summed up.
const SHOWN: usize = 20;

pub(super) fn run(run_dir: &Path, step: u64, json: bool) -> anyhow::Result<()> {
    let report = Run::replay(run_dir, step, &RunOptions::default())?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!("step {}: forward pass replayed with the recorded routing; loss {:.6}", report.step, report.loss);
    for layer in &report.layers {
        println!("layer {}: {} tokens, {} routed differently live", layer.layer, layer.tokens, layer.differing);
    }
    for d in report.differences.iter().take(SHOWN) {
        println!("micro-batch {} layer {} sequence {} position {}: recorded experts {:?}, live {:?}", d.micro_batch, d.layer, d.sequence, d.position, d.recorded, d.live);
    }
    if report.differences.len() > SHOWN {
        println!("… and {} more (--json lists all)", report.differences.len() - SHOWN);
    }
    match report.differences.len() {
        0 => println!("every token routes live as recorded"),
        n => println!("{n} token choices differ from the record"),
    }
    Ok(())
}

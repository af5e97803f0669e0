//! `recast distributed check` (every collective on known inputs, run under a launcher)
//! and `recast bench comm-plan` (a step's traffic for a model and a layout).

use std::path::Path;

use anyhow::Context;

use crate::distributed::comm_plan::{CommPlan, mixtral_8x7b};
use crate::distributed::launch;
use crate::distributed::{Backend, check_collectives};

/// Join the job, run every collective, print what this rank saw; exit non-zero on the
/// first wrong result.
pub(super) fn check(backend: Backend) -> anyhow::Result<()> {
    let comm = launch::world(backend)?;
    let lines = check_collectives(comm.as_ref())?;
    for line in lines {
        println!("rank {}/{} ({}): {line}", comm.rank(), comm.size(), comm.backend());
    }
    println!("rank {}/{}: all collectives correct", comm.rank(), comm.size());
    Ok(())
}

/// What `recast bench comm-plan` is told.
pub(super) struct PlanArgs<'a> {
    pub model: Option<&'a Path>,
    pub data_parallel: usize,
    pub expert_parallel: usize,
    pub tokens_per_rank: usize,
    pub activation_bytes: usize,
}

/// Print the per-rank traffic of one step.
pub(super) fn comm_plan(args: &PlanArgs<'_>) -> anyhow::Result<()> {
    let (model, name) = match args.model {
        Some(path) => (read_model_config(path)?, path.display().to_string()),
        None => (mixtral_8x7b(), "Mixtral-8x7B".to_string()),
    };
    let plan = CommPlan::new(&model, args.data_parallel, args.expert_parallel, args.tokens_per_rank, args.activation_bytes, 4);
    let gib = |bytes: f64| bytes / (1u64 << 30) as f64;
    println!(
        "{name}: data_parallel {} × expert_parallel {}, {} tokens per rank a step, {}-byte activations, f32 gradients",
        args.data_parallel, args.expert_parallel, args.tokens_per_rank, args.activation_bytes
    );
    println!("all-to-all per MoE layer: {:.3} GiB sent per rank a step (dispatch + combine, forward + backward)", gib(plan.all_to_all_per_layer));
    println!("all-to-all over {} MoE layers: {:.3} GiB", plan.moe_layers, gib(plan.all_to_all));
    println!(
        "gradient all-reduce: {:.3} GiB dense (over {} replicas) + {:.3} GiB experts (over the expert-data-parallel group)",
        gib(plan.dense_all_reduce),
        args.data_parallel,
        gib(plan.expert_all_reduce)
    );
    println!("total per rank a step: {:.3} GiB", gib(plan.all_to_all + plan.dense_all_reduce + plan.expert_all_reduce));
    Ok(())
}

/// A model's `config.json`, given as the file or the checkpoint folder holding it.
fn read_model_config(path: &Path) -> anyhow::Result<crate::model::config::ModelConfig> {
    let file = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
    let bytes = crate::regular_file::read(&file, 16 << 20).with_context(|| format!("cannot read {}", file.display()))?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).with_context(|| format!("{} is not valid JSON", file.display()))?;
    crate::model::hf_config::from_json(&json).map_err(anyhow::Error::msg).with_context(|| format!("{}", file.display()))
}

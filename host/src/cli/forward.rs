//! `recast forward`: logits of a checkpoint on given tokens, written as safetensors, so
//! users and tests can compare Recast with other implementations.

use std::path::Path;

use anyhow::{Context, bail};
use candle_core::DType;

use crate::model::checkpoint;
use crate::model::transformer::Transformer;
use crate::plugins::router::LayerInfo;
use crate::plugins::{PluginEngine, PluginLimits, RouterPlugin};

/// Token ids from a comma list (`1,2,3`) or from a file of ids separated by commas or
/// white space.
pub(super) fn parse_tokens(arg: &str) -> anyhow::Result<Vec<u32>> {
    let path = Path::new(arg);
    let (text, origin) = if path.is_file() {
        (std::fs::read_to_string(path).with_context(|| format!("cannot read token file {}", path.display()))?, format!("token file {}", path.display()))
    } else {
        (arg.to_string(), "--tokens".to_string())
    };
    let ids: Vec<u32> = text
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|s| !s.is_empty())
        .enumerate()
        .map(|(i, s)| s.parse::<u32>().with_context(|| format!("{origin}: item {} ({s:?}) is not a token id", i + 1)))
        .collect::<anyhow::Result<_>>()?;
    if ids.is_empty() {
        bail!("{origin}: no token ids (give a comma list such as 1,2,3 or a file of ids)");
    }
    Ok(ids)
}

pub(super) fn run(model: &Path, tokens: &str, out: &Path, router: Option<&Path>, router_params: &str) -> anyhow::Result<()> {
    let ids = parse_tokens(tokens)?;
    let ckpt = checkpoint::read(model, DType::F32).with_context(|| format!("cannot read the model in {}", model.display()))?;
    let mut transformer = Transformer::new(&ckpt.config, &ckpt.params, &model.display().to_string())?;
    if let Some(file) = router {
        apply_router(&mut transformer, file, router_params, ids.len())?;
    }
    let output = transformer.forward(&ids, 1).with_context(|| format!("forward pass of {}", model.display()))?;
    let logits = output.logits.to_dtype(DType::F32)?;
    checkpoint::write_tensors(out, &[("logits", &logits)], DType::F32)?;
    println!("wrote logits [{}, {}] to {}", ids.len(), ckpt.config.vocab_size, out.display());
    Ok(())
}

/// Ask a router plugin for every MoE layer's spec and install it.
fn apply_router(model: &mut Transformer, file: &Path, params: &str, tokens: usize) -> anyhow::Result<()> {
    let engine = PluginEngine::new()?;
    let component = engine.load_file(file)?;
    let mut plugin = RouterPlugin::new(&engine, &component, params, 0, PluginLimits::default())?;
    let num_layers = model.config.num_layers as u32;
    let hidden = model.config.hidden_size as u32;
    for layer in model.moe_layers_mut() {
        let info = LayerInfo {
            layer: layer.layer as u32,
            num_layers,
            hidden,
            num_experts: layer.experts.len() as u32,
            expert_intermediate: layer.experts.iter().map(|e| e.width() as u32).collect(),
            shared_experts: layer.shared.len() as u32,
            tokens_per_batch: tokens as u32,
        };
        layer.spec = plugin.spec(&info)?;
        if layer.spec.per_token_route {
            bail!("router {} asks for per-token routing in layer {}; `recast forward` runs native routing only", file.display(), layer.layer);
        }
    }
    Ok(())
}

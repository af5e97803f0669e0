//! The decoder, top to bottom as in the architecture figure: embed → blocks (attention,
//! then a dense or MoE MLP, each behind an RMSNorm and a residual) → norm → head.

use std::sync::{Arc, OnceLock};

use candle_core::{DType, Device, Tensor};

use super::attention::{Attention, causal_mask};
use super::config::ModelConfig;
use super::error::ModelError;
use super::ffn::Ffn;
use super::ops::{linear, rms_norm};
use super::params::{ParamReader, ParamSource, ParamStore};
use super::rope::RopeTables;
use crate::cpu::matmul;
use crate::moe::backend::MoeBackend;
use crate::moe::dispatcher::TokenDispatcher;
use crate::moe::layer::{MoeLayer, MoeOutput, RouteControl, TokenRouter};
use crate::moe::routing_record::RoutingRecord;
use crate::moe::spec::{self, LayerStats};

/// A layer's MLP.
pub enum Mlp {
    Dense(Ffn),
    Moe(MoeLayer),
}

/// One transformer block.
pub struct Block {
    pub input_norm: Tensor,
    pub attention: Attention,
    pub post_attention_norm: Tensor,
    pub mlp: Mlp,
}

/// A decoder whose tensors are views of a [`ParamStore`]: build it from a trainable
/// store and gradients reach the store's tensors.
pub struct Transformer {
    pub config: ModelConfig,
    pub embed: Tensor,
    pub blocks: Vec<Block>,
    pub norm: Tensor,
    /// Output projection `[vocab, d]`; the embedding itself when tied.
    pub head: Tensor,
    /// How the MoE layers dispatch and run their experts, chosen once at the first
    /// forward (by then the run has configured its matmul path) from the model's device
    /// and dtype.
    moe_backend: OnceLock<MoeBackend>,
    /// The dispatcher the MoE layers use instead of the local one (a multi-process job's).
    dispatcher: Option<Arc<dyn TokenDispatcher>>,
}

/// What a forward pass produces.
pub struct ForwardOutput {
    /// `[batch * seq, vocab]`.
    pub logits: Tensor,
    /// Sum over MoE layers of their weighted auxiliary losses, if any is weighted.
    pub aux_loss: Option<Tensor>,
    /// One record per MoE layer, in layer order.
    pub moe_stats: Vec<LayerStats>,
    /// Per MoE layer, the mean router probability of every expert.
    pub gate_means: Vec<Vec<f32>>,
}

/// What [`Transformer::hidden_routed`] gives: the final hidden states instead of the
/// logits, for a loss that makes the logits in chunks.
pub struct HiddenOutput {
    /// `[batch * seq, hidden]`, after the final norm: the LM head's input.
    pub hidden: Tensor,
    /// As in [`ForwardOutput`].
    pub aux_loss: Option<Tensor>,
    pub moe_stats: Vec<LayerStats>,
    pub gate_means: Vec<Vec<f32>>,
    /// What [`RoutingCapture::record`] asked for: per MoE layer, its routing.
    pub routing: Vec<RoutingRecord>,
    /// Per MoE layer, its raw router logits (when recorded).
    pub logits: Vec<Vec<f32>>,
}

/// What a pass asks of its MoE layers' routing besides per-token routing: a record of
/// what they chose (a routing trace, shadow routers), or a recorded routing to run
/// instead (a replay).
#[derive(Clone, Copy, Default)]
pub struct RoutingCapture<'a> {
    /// Record every MoE layer's routing and raw logits.
    pub record: bool,
    /// Recorded routings to run instead of the router's, by layer; a layer without one
    /// routes itself.
    pub replay: &'a [RoutingRecord],
}

impl Transformer {
    /// Route the MoE layers' tokens through `dispatcher` instead of keeping them local:
    /// what a multi-process job sets before its first step.
    pub fn use_dispatcher(&mut self, dispatcher: Arc<dyn TokenDispatcher>) {
        self.dispatcher = Some(dispatcher);
        self.moe_backend = OnceLock::new();
    }

    /// Build the model `config` describes from `params`; every tensor must be present
    /// with the right shape and none may be left over. `looked_in` names the
    /// checkpoint in errors.
    pub fn new(config: &ModelConfig, params: &ParamStore, looked_in: &str) -> Result<Self, ModelError> {
        config.validate().map_err(|reason| ModelError::Config { path: looked_in.into(), reason })?;
        let mut reader = ParamReader::new(params, looked_in, config.architecture);
        let model = Self::build(config, &mut reader)?;
        reader.finish(config.architecture.hf_class())?;
        Ok(model)
    }

    /// Build the model, taking each tensor from `src`: the one place tensor names and
    /// shapes are spelled out.
    pub fn build(config: &ModelConfig, src: &mut impl ParamSource) -> Result<Self, ModelError> {
        let (d, v) = (config.hidden_size, config.vocab_size);
        let embed = src.tensor("model.embed_tokens.weight", &[v, d])?;
        let mut blocks = Vec::with_capacity(config.num_layers);
        for l in 0..config.num_layers {
            blocks.push(block(config, l, src)?);
        }
        let norm = src.tensor("model.norm.weight", &[d])?;
        let head = if config.tie_word_embeddings { embed.clone() } else { src.tensor("lm_head.weight", &[v, d])? };
        Ok(Self { config: config.clone(), embed, blocks, norm, head, moe_backend: OnceLock::new(), dispatcher: None })
    }

    /// Refuse `batch` sequences of `seq` tokens that the model's positions or this
    /// machine's memory cannot hold, before anything is allocated.
    pub fn check_sequence(&self, batch: usize, seq: usize) -> Result<(), ModelError> {
        let max = self.config.max_position_embeddings;
        if seq > max {
            return Err(ModelError::Request(format!("a sequence of {seq} tokens is longer than the model's max_position_embeddings ({max}); split it into windows of at most {max}")));
        }
        // The largest activations: each layer's attention probabilities and logits.
        let scores = batch as u128 * self.config.num_heads as u128 * seq as u128 * seq as u128 * 4;
        let logits = batch as u128 * seq as u128 * self.config.vocab_size as u128 * 4;
        crate::memory::ensure_fits(&format!("a forward pass over {batch} × {seq} tokens"), scores + logits).map_err(ModelError::Request)
    }

    /// Logits for `tokens`, `batch` sequences of equal length laid end to end.
    pub fn forward(&self, tokens: &[u32], batch: usize) -> Result<ForwardOutput, ModelError> {
        self.forward_routed(tokens, batch, None)
    }

    /// [`Transformer::forward`], with `route` answering the MoE layers whose spec asks
    /// for per-token routing.
    pub fn forward_routed(&self, tokens: &[u32], batch: usize, route: Option<&mut TokenRouter<'_>>) -> Result<ForwardOutput, ModelError> {
        let out = self.hidden_routed(tokens, batch, route)?;
        let logits = linear(&out.hidden, &self.head, None)?;
        Ok(ForwardOutput { logits, aux_loss: out.aux_loss, moe_stats: out.moe_stats, gate_means: out.gate_means })
    }

    /// [`Transformer::forward_routed`] up to the LM head: the final hidden states, which
    /// training turns into a loss chunk by chunk (`model::loss::chunked_next_token_loss`).
    pub fn hidden_routed(&self, tokens: &[u32], batch: usize, route: Option<&mut TokenRouter<'_>>) -> Result<HiddenOutput, ModelError> {
        self.hidden_captured(tokens, batch, route, RoutingCapture::default())
    }

    /// [`Transformer::hidden_routed`] that records or replays routing as `capture` says.
    pub fn hidden_captured(&self, tokens: &[u32], batch: usize, mut route: Option<&mut TokenRouter<'_>>, capture: RoutingCapture<'_>) -> Result<HiddenOutput, ModelError> {
        let (mut h, pass) = self.embed_tokens(tokens, batch)?;
        let mut routing = RoutingOutputs::default();
        for l in 0..self.blocks.len() {
            h = self.attention_residual(l, &h, &pass)?;
            let (next, moe) = self.mlp_residual(l, &h, route.as_deref_mut(), capture)?;
            routing.add(moe)?;
            h = next;
        }
        let hidden = self.final_norm(&h)?;
        Ok(HiddenOutput { hidden, aux_loss: routing.aux_loss, moe_stats: routing.moe_stats, gate_means: routing.gate_means, routing: routing.records, logits: routing.logits })
    }

    /// Check `tokens` and embed them: the residual stream's start, and what every
    /// layer of this pass shares.
    pub(crate) fn embed_tokens(&self, tokens: &[u32], batch: usize) -> Result<(Tensor, PassContext), ModelError> {
        let vocab = self.config.vocab_size;
        if let Some((position, &id)) = tokens.iter().enumerate().find(|(_, id)| **id as usize >= vocab) {
            return Err(ModelError::TokenOutOfRange { id, position, vocab });
        }
        let seq = tokens.len() / batch.max(1);
        if batch == 0 || seq * batch != tokens.len() {
            return Err(ModelError::Request(format!("{} tokens do not split into {batch} sequences of equal length", tokens.len())));
        }
        self.check_sequence(batch, seq)?;
        let device = self.embed.device();
        let dtype = self.embed.dtype();
        let ids = Tensor::from_slice(tokens, tokens.len(), device)?;
        let h = self.embed.index_select(&ids, 0)?;
        let rope = RopeTables::new(&self.config.rope, self.config.head_dim, seq, dtype, device)?;
        let masks = Masks::new(&self.config.attention_window, seq, dtype, device)?;
        Ok((h, PassContext { batch, seq, rope, masks }))
    }

    /// Layer `l`'s first half: `h + attention(norm(h))`.
    pub(crate) fn attention_residual(&self, l: usize, h: &Tensor, pass: &PassContext) -> Result<Tensor, ModelError> {
        let block = &self.blocks[l];
        let a = block.attention.forward(&rms_norm(h, &block.input_norm, self.config.rms_norm_eps)?, pass.batch, pass.seq, &pass.rope, pass.masks.for_layer(l))?;
        Ok(residual_sum(h, &a)?)
    }

    /// Layer `l`'s second half: `h + mlp(norm(h))`, and what an MoE layer reports
    /// beside its output.
    pub(crate) fn mlp_residual(&self, l: usize, h: &Tensor, route: Option<&mut TokenRouter<'_>>, capture: RoutingCapture<'_>) -> Result<(Tensor, Option<MoeOutput>), ModelError> {
        let block = &self.blocks[l];
        let x = rms_norm(h, &block.post_attention_norm, self.config.rms_norm_eps)?;
        match &block.mlp {
            Mlp::Dense(ffn) => Ok((residual_sum(h, &ffn.forward(&x)?)?, None)),
            Mlp::Moe(moe) => {
                let backend = self.moe_backend.get_or_init(|| {
                    let chosen = MoeBackend::select(x.device(), x.dtype(), &matmul::active());
                    MoeBackend { dispatcher: self.dispatcher.clone().unwrap_or(chosen.dispatcher), ..chosen }
                });
                let control = RouteControl { route, record: capture.record, replay: capture.replay.iter().find(|r| r.layer == l) };
                let out = moe.forward_controlled(backend, &x, control)?;
                Ok((residual_sum(h, &out.output)?, Some(out)))
            }
        }
    }

    /// The LM head's input: the residual stream after the final norm.
    pub(crate) fn final_norm(&self, h: &Tensor) -> Result<Tensor, ModelError> {
        Ok(rms_norm(h, &self.norm, self.config.rms_norm_eps)?)
    }

    /// Whether layer `l`'s MLP is an MoE layer.
    pub fn is_moe_block(&self, l: usize) -> bool {
        matches!(self.blocks.get(l).map(|b| &b.mlp), Some(Mlp::Moe(_)))
    }

    /// The MoE layers, for setting routing specs, biases and coefficients.
    pub fn moe_layers_mut(&mut self) -> impl Iterator<Item = &mut MoeLayer> {
        self.blocks.iter_mut().filter_map(|b| match &mut b.mlp {
            Mlp::Moe(m) => Some(m),
            Mlp::Dense(_) => None,
        })
    }

    /// The MoE layers, in layer order.
    pub fn moe_layers(&self) -> impl Iterator<Item = &MoeLayer> {
        self.blocks.iter().filter_map(|b| match &b.mlp {
            Mlp::Moe(m) => Some(m),
            Mlp::Dense(_) => None,
        })
    }

    /// Element type of the weights.
    pub fn dtype(&self) -> DType {
        self.embed.dtype()
    }
}

/// What every layer of one forward pass shares: the batch's shape, the rotary tables
/// and the attention masks.
pub(crate) struct PassContext {
    batch: usize,
    seq: usize,
    rope: RopeTables,
    masks: Masks,
}

/// The MoE layers' side outputs of a forward pass, gathered layer by layer.
#[derive(Default)]
pub(crate) struct RoutingOutputs {
    pub aux_loss: Option<Tensor>,
    pub moe_stats: Vec<LayerStats>,
    pub gate_means: Vec<Vec<f32>>,
    pub records: Vec<RoutingRecord>,
    pub logits: Vec<Vec<f32>>,
}

impl RoutingOutputs {
    /// Add one layer's (nothing for a dense layer): its aux loss to the sum, its
    /// statistics and gate means to the lists.
    pub fn add(&mut self, moe: Option<MoeOutput>) -> candle_core::Result<()> {
        let Some(out) = moe else { return Ok(()) };
        if let Some(loss) = out.aux_loss {
            self.aux_loss = Some(match self.aux_loss.take() {
                Some(acc) => acc.add(&loss.to_dtype(acc.dtype())?)?,
                None => loss,
            });
        }
        self.moe_stats.push(out.stats);
        self.gate_means.push(out.gate_mean);
        self.records.extend(out.routing);
        self.logits.extend(out.logits);
        Ok(())
    }
}

/// Attention masks, one per distinct window.
struct Masks {
    by_window: Vec<(Option<usize>, Tensor)>,
    layer_window: Vec<Option<usize>>,
}

impl Masks {
    fn new(windows: &[Option<usize>], seq: usize, dtype: DType, device: &Device) -> candle_core::Result<Self> {
        let mut by_window: Vec<(Option<usize>, Tensor)> = Vec::new();
        for &w in windows {
            if !by_window.iter().any(|(x, _)| *x == w) {
                by_window.push((w, causal_mask(seq, w, dtype, device)?));
            }
        }
        Ok(Self { by_window, layer_window: windows.to_vec() })
    }

    fn for_layer(&self, layer: usize) -> &Tensor {
        let w = self.layer_window[layer];
        // Every layer's window was added in `new`.
        &self.by_window.iter().find(|(x, _)| *x == w).expect("mask for every window").1
    }
}

/// `h + out` for a block's output `out`, whose values are then freed (f32 on the CPU):
/// no backward reads an attention's or an MLP's output (the sum passes its gradient on
/// unchanged, the products' backwards read their inputs, the combine of expert rows its
/// gates and rows), but the graph would keep it until the backward ends: 4.7 MB a layer
/// at a real model's shape. The node keeps its shape and its place in the graph.
fn residual_sum(h: &Tensor, out: &Tensor) -> candle_core::Result<Tensor> {
    let sum = h.add(out)?;
    if out.device().is_cpu() && out.dtype() == DType::F32 {
        crate::cpu::released_weights::release(out)?;
    }
    Ok(sum)
}

fn block(config: &ModelConfig, l: usize, r: &mut impl ParamSource) -> Result<Block, ModelError> {
    let (d, h, kvh, hd) = (config.hidden_size, config.num_heads, config.num_kv_heads, config.head_dim);
    let p = format!("model.layers.{l}");
    let bias = |r: &mut dyn ParamSource, on: bool, name: &str, n: usize| -> Result<Option<Tensor>, ModelError> { if on { r.tensor(name, &[n]).map(Some) } else { Ok(None) } };
    let attention = Attention {
        q: r.tensor(&format!("{p}.self_attn.q_proj.weight"), &[h * hd, d])?,
        k: r.tensor(&format!("{p}.self_attn.k_proj.weight"), &[kvh * hd, d])?,
        v: r.tensor(&format!("{p}.self_attn.v_proj.weight"), &[kvh * hd, d])?,
        o: r.tensor(&format!("{p}.self_attn.o_proj.weight"), &[d, h * hd])?,
        q_bias: bias(r, config.qkv_bias, &format!("{p}.self_attn.q_proj.bias"), h * hd)?,
        k_bias: bias(r, config.qkv_bias, &format!("{p}.self_attn.k_proj.bias"), kvh * hd)?,
        v_bias: bias(r, config.qkv_bias, &format!("{p}.self_attn.v_proj.bias"), kvh * hd)?,
        o_bias: bias(r, config.o_bias, &format!("{p}.self_attn.o_proj.bias"), d)?,
        num_heads: h,
        num_kv_heads: kvh,
        head_dim: hd,
        window: config.attention_window[l],
    };
    let mlp = match &config.moe {
        Some(moe) if config.is_moe_layer(l) => {
            let e = moe.num_experts;
            let experts = (0..e).map(|i| ffn(r, &format!("{p}.mlp.experts.{i}"), d, moe.expert_intermediate[i])).collect::<Result<Vec<_>, _>>()?;
            let shared = moe.shared_expert_intermediate.iter().enumerate().map(|(i, &w)| ffn(r, &format!("{p}.mlp.shared_experts.{i}"), d, w)).collect::<Result<Vec<_>, _>>()?;
            let shared_gate = if moe.shared_expert_gate { Some(r.tensor(&format!("{p}.mlp.shared_expert_gate.weight"), &[1, d])?) } else { None };
            Mlp::Moe(MoeLayer {
                layer: l,
                router: r.tensor(&format!("{p}.mlp.gate.weight"), &[e, d])?,
                experts,
                shared,
                shared_gate,
                spec: spec::checkpoint_default(moe),
                selection_bias: vec![0.0; e],
                coefficients: Default::default(),
            })
        }
        _ => Mlp::Dense(ffn(r, &format!("{p}.mlp"), d, config.intermediate_size)?),
    };
    Ok(Block { input_norm: r.tensor(&format!("{p}.input_layernorm.weight"), &[d])?, attention, post_attention_norm: r.tensor(&format!("{p}.post_attention_layernorm.weight"), &[d])?, mlp })
}

fn ffn(r: &mut impl ParamSource, prefix: &str, d: usize, width: usize) -> Result<Ffn, ModelError> {
    Ok(Ffn {
        gate: r.tensor(&format!("{prefix}.gate_proj.weight"), &[width, d])?,
        up: r.tensor(&format!("{prefix}.up_proj.weight"), &[width, d])?,
        down: r.tensor(&format!("{prefix}.down_proj.weight"), &[d, width])?,
    })
}

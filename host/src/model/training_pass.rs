//! The forward pass training takes, kept piece by piece (half a layer, or a layer) so
//! that the backward pass runs one piece at a time: each piece's activations are freed
//! as soon as its gradients are taken, instead of all of them living until the last
//! gradient is known. With `[compute] recompute`, the pieces it names keep nothing but
//! their input and are run again in the backward pass; the gradients are bit for bit
//! those of keeping everything (the recomputed forward replays the recorded routing, and
//! every piece's backward sees the same graph either way).

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};
use serde::{Deserialize, Serialize};

use super::error::ModelError;
use super::transformer::{PassContext, RoutingCapture, RoutingOutputs, Transformer};
use crate::contract::{RouteAssignment, TokenLogits};
use crate::moe::layer::{MoeOutput, TokenRouter};
use crate::moe::routing_record::RoutingRecord;
use crate::moe::spec::LayerStats;

/// Which activations training recomputes in the backward pass instead of keeping: the
/// run config's `[compute] recompute`. Memory for time; the loss and gradients do not
/// change.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Recompute {
    /// Keep every layer's activations: the fastest.
    #[default]
    None,
    /// Recompute the MoE MLPs (their experts' hidden rows are most of a sparse model's
    /// activations); keep attention and dense MLPs.
    Moe,
    /// Keep only each layer's input; recompute the whole layer.
    Full,
}

/// A piece of the model one backward step covers.
#[derive(Clone, Copy, Debug)]
enum Piece {
    /// `h + attention(norm(h))` of a layer.
    Attention(usize),
    /// `h + mlp(norm(h))` of a layer.
    Mlp(usize),
    /// Both halves of a layer.
    Block(usize),
}

/// One piece's input (a variable, so its backward yields the gradient for the piece
/// below) and, unless it is recomputed, its output and aux loss with their graphs.
struct Segment {
    piece: Piece,
    input: Var,
    kept: Option<PieceOutput>,
}

/// What a piece's backward starts from.
struct PieceOutput {
    output: Tensor,
    aux_loss: Option<Tensor>,
}

/// A training forward pass whose backward runs piece by piece ([`TrainingPass::backward`]).
pub struct TrainingPass {
    context: PassContext,
    /// The embedded tokens, with their graph to the embedding.
    embedded: Tensor,
    segments: Vec<Segment>,
    /// The final norm's input.
    top: Var,
    /// `[batch * seq, hidden]`, after the final norm: the LM head's input. The loss is
    /// computed from it (and the head) and handed to [`TrainingPass::backward`].
    pub hidden: Tensor,
    /// Sum over MoE layers of their weighted auxiliary losses (values only; their
    /// gradients are taken in the backward pass).
    pub aux_loss: Option<Tensor>,
    /// One record per MoE layer, in layer order.
    pub moe_stats: Vec<LayerStats>,
    /// Per MoE layer, the mean router probability of every expert.
    pub gate_means: Vec<Vec<f32>>,
    /// Per MoE layer, its routing, when the pass was asked to record it.
    pub routing: Vec<RoutingRecord>,
    /// Per MoE layer, its raw router logits `[T, E]`, when recorded.
    pub logits: Vec<Vec<f32>>,
    /// Whether the forward pass had a per-token router, and what it chose per layer:
    /// a recomputed MoE layer replays it instead of asking the plugin again.
    routed: bool,
    routes: Vec<(usize, RouteAssignment)>,
}

impl Transformer {
    /// The forward pass over `tokens` (`batch` sequences) for a training step, keeping
    /// what `recompute` says; `route` answers per-token routing as in
    /// [`Transformer::hidden_routed`].
    pub fn training_pass(&self, tokens: &[u32], batch: usize, route: Option<&mut TokenRouter<'_>>, recompute: Recompute) -> Result<TrainingPass, ModelError> {
        self.training_pass_recorded(tokens, batch, route, recompute, false)
    }

    /// [`Transformer::training_pass`] that, with `record`, also reports every MoE
    /// layer's routing and raw router logits ([`TrainingPass::routing`]).
    pub fn training_pass_recorded(&self, tokens: &[u32], batch: usize, route: Option<&mut TokenRouter<'_>>, recompute: Recompute, record: bool) -> Result<TrainingPass, ModelError> {
        let capture = RoutingCapture { record, replay: &[] };
        let (embedded, context) = self.embed_tokens(tokens, batch)?;
        let routed = route.is_some();
        let mut routes = Vec::new();
        let mut segments = Vec::new();
        let mut routing = RoutingOutputs::default();
        let mut input = Var::from_tensor(&embedded)?;
        {
            let mut recorder = route.map(|route| {
                let routes = &mut routes;
                move |layer: usize, logits: &TokenLogits| -> Result<RouteAssignment, String> {
                    let chosen = route(layer, logits)?;
                    routes.push((layer, chosen.clone()));
                    Ok(chosen)
                }
            });
            for l in 0..self.blocks.len() {
                let pieces = match recompute {
                    Recompute::None => [(Piece::Attention(l), true), (Piece::Mlp(l), true)].to_vec(),
                    Recompute::Moe => [(Piece::Attention(l), true), (Piece::Mlp(l), !self.is_moe_block(l))].to_vec(),
                    Recompute::Full => [(Piece::Block(l), false)].to_vec(),
                };
                for (piece, keep) in pieces {
                    let hook = recorder.as_mut().map(|f| f as &mut TokenRouter<'_>);
                    let (output, moe) = self.run_piece(piece, input.as_tensor(), &context, hook, capture)?;
                    let aux_loss = moe.as_ref().and_then(|m| m.aux_loss.clone());
                    routing.add(moe.map(detach_aux))?;
                    let next = Var::from_tensor(&output)?;
                    segments.push(Segment { piece, input, kept: keep.then_some(PieceOutput { output, aux_loss }) });
                    input = next;
                }
            }
        }
        let hidden = self.final_norm(input.as_tensor())?;
        Ok(TrainingPass {
            context,
            embedded,
            segments,
            top: input,
            hidden,
            aux_loss: routing.aux_loss,
            moe_stats: routing.moe_stats,
            gate_means: routing.gate_means,
            routing: routing.records,
            logits: routing.logits,
            routed,
            routes,
        })
    }

    /// Run one piece on `input`.
    fn run_piece(&self, piece: Piece, input: &Tensor, context: &PassContext, route: Option<&mut TokenRouter<'_>>, capture: RoutingCapture<'_>) -> Result<(Tensor, Option<MoeOutput>), ModelError> {
        match piece {
            Piece::Attention(l) => Ok((self.attention_residual(l, input, context)?, None)),
            Piece::Mlp(l) => self.mlp_residual(l, input, route, capture),
            Piece::Block(l) => {
                let h = self.attention_residual(l, input, context)?;
                self.mlp_residual(l, &h, route, capture)
            }
        }
    }
}

impl TrainingPass {
    /// The backward pass of `loss` (computed from [`TrainingPass::hidden`] and the
    /// model's parameters) plus the MoE layers' aux losses times `aux_scale`: `sink`
    /// receives the gradient store of the loss, then of each piece from the top down,
    /// then of the embedding, and takes the parameters' gradients from each (a
    /// parameter used in two places, like tied embeddings, appears in two stores).
    pub fn backward(self, model: &Transformer, loss: &Tensor, aux_scale: f64, mut sink: impl FnMut(&GradStore) -> Result<(), ModelError>) -> Result<(), ModelError> {
        let TrainingPass { context, embedded, mut segments, top, hidden, routed, routes, .. } = self;
        let dtype = hidden.dtype();
        let store = loss.backward()?;
        sink(&store)?;
        let mut grad = store.get(top.as_tensor()).cloned();
        drop((store, hidden));
        let mut replay = |layer: usize, _: &TokenLogits| -> Result<RouteAssignment, String> {
            routes.iter().find(|(l, _)| *l == layer).map(|(_, chosen)| chosen.clone()).ok_or_else(|| format!("layer {layer}: no routing recorded to replay"))
        };
        while let Some(segment) = segments.pop() {
            let Some(g) = grad.take() else { return Ok(()) };
            let kept = match segment.kept {
                Some(kept) => kept,
                None => {
                    let hook = routed.then_some(&mut replay as &mut TokenRouter<'_>);
                    let (output, moe) = model.run_piece(segment.piece, segment.input.as_tensor(), &context, hook, RoutingCapture::default())?;
                    PieceOutput { output, aux_loss: moe.and_then(|m| m.aux_loss) }
                }
            };
            // `sum(output · g)` has gradient `g` at the output, exactly.
            let mut surrogate = kept.output.mul(&g)?.sum_all()?;
            if let Some(aux) = kept.aux_loss {
                surrogate = surrogate.add(&aux.to_dtype(dtype)?.affine(aux_scale, 0.0)?)?;
            }
            let store = surrogate.backward()?;
            sink(&store)?;
            grad = store.get(segment.input.as_tensor()).cloned();
        }
        if let Some(g) = grad {
            sink(&embedded.mul(&g)?.sum_all()?.backward()?)?;
        }
        Ok(())
    }
}

/// `moe` with its aux loss cut from the graph: what the pass reports.
fn detach_aux(mut moe: MoeOutput) -> MoeOutput {
    moe.aux_loss = moe.aux_loss.map(|a| a.detach());
    moe
}

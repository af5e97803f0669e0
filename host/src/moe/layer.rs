//! The MoE layer as wiring: router → selection → dispatch to experts → weighted
//! combine, plus shared experts, auxiliary losses and statistics. It executes whatever
//! validated `router-spec` it holds (the router plugin changes that spec and the
//! selection bias between steps); how rows move and experts compute is its
//! [`MoeBackend`]'s business.

use candle_core::{D, DType, Result, Tensor};

use super::backend::MoeBackend;
use super::experts::RoutedLayer;
use super::gates::{RouterScores, expert_choice_gates, router_dtype, router_scores, token_choice_gates};
use super::losses;
use super::routing_record::RoutingRecord;
use super::selection::{self, Selection, token_choice_capacity, top_k};
use super::spec::{AuxCoefficients, DropPolicy, LayerStats, RouterSpec, RoutingMode, SelectionBias};
use super::stats::layer_stats;
use crate::contract::{RouteAssignment, TokenLogits};
use crate::model::ffn::Ffn;
use crate::model::ops::{linear, linear_f32, sigmoid};

/// One MoE layer's weights and routing state.
pub struct MoeLayer {
    /// Index of the transformer layer.
    pub layer: usize,
    /// Router weight `W_g`, `[E, d]`.
    pub router: Tensor,
    /// Routed experts (widths may differ).
    pub experts: Vec<Ffn>,
    /// Shared experts held by the checkpoint (the spec says how many run).
    pub shared: Vec<Ffn>,
    /// Learned gate on the shared experts' output, `[1, d]` (Qwen2-MoE).
    pub shared_gate: Option<Tensor>,
    /// The routing this layer executes.
    pub spec: RouterSpec,
    /// Per-expert selection bias (aux-loss-free balancing); used when the spec's
    /// `selection-bias` is not `none`.
    pub selection_bias: Vec<f32>,
    /// Weights of the auxiliary losses for the current step.
    pub coefficients: AuxCoefficients,
}

/// What one forward pass of an MoE layer produces.
pub struct MoeOutput {
    /// `[T, d]`.
    pub output: Tensor,
    /// `α · L_LB + β_z · L_z`, or `None` when both coefficients are 0.
    pub aux_loss: Option<Tensor>,
    /// Statistics for the plugins.
    pub stats: LayerStats,
    /// Mean router probability of every expert over the tokens: which experts the
    /// gate favours on this input (evaluation reports it per domain).
    pub gate_mean: Vec<f32>,
    /// The routing the layer's own router chose, when [`RouteControl::record`] asked
    /// (with a replay: what it would have chosen).
    pub routing: Option<RoutingRecord>,
    /// The raw router logits `[T, E]` as f32, when [`RouteControl::record`] asked: what
    /// shadow routers route from.
    pub logits: Option<Vec<f32>>,
}

/// What a forward pass asks of a layer's routing beyond its spec.
#[derive(Default)]
pub struct RouteControl<'r, 'a> {
    /// Per-token routing by the plugin, for specs that ask for it.
    pub route: Option<&'r mut TokenRouter<'a>>,
    /// Report the chosen routing and the raw logits ([`MoeOutput::routing`],
    /// [`MoeOutput::logits`]).
    pub record: bool,
    /// Run the experts with this recorded routing instead of the router's (the router
    /// still runs, and `record` reports what it chose).
    pub replay: Option<&'r RoutingRecord>,
}

/// The per-token `route` escape hatch: router logits in, assignments out (already
/// validated by the plugin adapter).
pub type TokenRouter<'a> = dyn FnMut(usize, &TokenLogits) -> std::result::Result<RouteAssignment, String> + 'a;

impl MoeLayer {
    /// Route and run `x` (`[T, d]`) natively, on the backend for `x`'s device and dtype.
    pub fn forward(&self, x: &Tensor) -> Result<MoeOutput> {
        self.forward_routed(x, None)
    }

    /// Route and run `x`; when the spec asks for `per-token-route` and `route` is given,
    /// the plugin chooses the experts and combine weights of every token (weights are
    /// constants: no gradient reaches the router through them). Runs on the backend for
    /// `x`'s device and dtype; a model chooses it once and calls [`Self::forward_on`].
    pub fn forward_routed(&self, x: &Tensor, route: Option<&mut TokenRouter<'_>>) -> Result<MoeOutput> {
        self.forward_on(&MoeBackend::for_input(x), x, route)
    }

    /// [`Self::forward_routed`] on a given backend.
    pub fn forward_on(&self, backend: &MoeBackend, x: &Tensor, route: Option<&mut TokenRouter<'_>>) -> Result<MoeOutput> {
        self.forward_controlled(backend, x, RouteControl { route, ..RouteControl::default() })
    }

    /// [`Self::forward_on`] that may also record its routing or replay a recorded one.
    pub fn forward_controlled(&self, backend: &MoeBackend, x: &Tensor, control: RouteControl<'_, '_>) -> Result<MoeOutput> {
        let RouteControl { route, record, replay } = control;
        let tokens = x.dim(0)?;
        let experts = self.experts.len();
        let z = linear_f32(x, &self.router, None)?.to_dtype(router_dtype(x.dtype()))?;
        // A plugin that routes per token, a record or a replay needs the host-side
        // selection below.
        let plugin_routes = route.is_some() && self.spec.per_token_route;
        if !plugin_routes
            && !record
            && replay.is_none()
            && backend.dispatcher.keeps_rows_local()
            && let Some(routed) = backend.experts.route_and_run(&self.routed_layer(), x, &z)?
        {
            let selection = Selection::dropless(routed.load, tokens, routed.k);
            let output = match self.shared_output(x)? {
                Some(shared) => routed.output.add(&shared)?,
                None => routed.output,
            };
            let (aux_loss, stats, gate_mean) = self.losses_and_stats(&routed.probs, &z, &selection, tokens, routed.k)?;
            return Ok(MoeOutput { output, aux_loss, stats, gate_mean, routing: None, logits: None });
        }
        let RoutedTokens { scores, selection, gates, k } = route_tokens(self.layer, &z, &self.spec, &self.selection_bias, route)?;
        let routing = match record {
            true => Some(RoutingRecord::new(self.layer, tokens, &selection, &gates.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?)),
            false => None,
        };
        let logits = match record {
            true => Some(z.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?),
            false => None,
        };
        let (selection, gates) = match replay {
            Some(recorded) => {
                recorded.check().map_err(|e| candle_core::Error::Msg(format!("replay: {e}")))?;
                if recorded.tokens != tokens || recorded.experts() != experts {
                    return Err(candle_core::Error::Msg(format!(
                        "layer {}: the recorded routing is for {} tokens and {} experts, the layer has {tokens} and {experts}",
                        self.layer,
                        recorded.tokens,
                        recorded.experts()
                    )));
                }
                (recorded.selection(), Tensor::from_slice(&recorded.gates, recorded.gates.len(), x.device())?.to_dtype(gates.dtype())?)
            }
            None => (selection, gates),
        };
        let dispatch = backend.dispatcher.dispatch(x, &selection)?;
        let expert_rows = dispatch.run_experts(backend.experts.as_ref(), &self.experts)?;
        let mut output = dispatch.combine(&expert_rows, &gates)?;
        if let Some(shared) = self.shared_output(x)? {
            output = output.add(&shared)?;
        }
        let (aux_loss, stats, gate_mean) = self.losses_and_stats(&scores.probs, &z, &selection, tokens, k)?;
        Ok(MoeOutput { output, aux_loss, stats, gate_mean, routing, logits })
    }

    /// The layer as a fused routing backend sees it.
    fn routed_layer(&self) -> RoutedLayer<'_> {
        RoutedLayer { layer: self.layer, spec: &self.spec, experts: &self.experts, selection_bias: &self.selection_bias }
    }

    /// The shared experts' summed output, gated if the spec says so.
    fn shared_output(&self, x: &Tensor) -> Result<Option<Tensor>> {
        let n = (self.spec.shared_experts as usize).min(self.shared.len());
        if n == 0 {
            return Ok(None);
        }
        let mut sum = self.shared[0].forward(x)?;
        for expert in &self.shared[1..n] {
            sum = sum.add(&expert.forward(x)?)?;
        }
        match (&self.shared_gate, self.spec.shared_expert_gate) {
            (Some(gate), true) => Ok(Some(sum.broadcast_mul(&sigmoid(&linear(x, gate, None)?)?)?)),
            (None, true) => Err(candle_core::Error::Msg(format!("layer {}: the spec gates the shared experts but the checkpoint has no `shared_expert_gate`", self.layer))),
            _ => Ok(Some(sum)),
        }
    }

    fn losses_and_stats(&self, probs: &Tensor, z: &Tensor, selection: &Selection, tokens: usize, k: usize) -> Result<(Option<Tensor>, LayerStats, Vec<f32>)> {
        // Loads of this forward pass's tokens (Megatron's micro-batch scope): a job that
        // splits the batch over processes computes what one process accumulating the
        // same micro-batches computes.
        let lb = losses::load_balance(probs, &selection.load)?;
        let zl = losses::z_loss(z)?;
        let c = self.coefficients;
        let aux_loss = if c.load_balance > 0.0 || c.z_loss > 0.0 { Some(((&lb * c.load_balance as f64)? + (&zl * c.z_loss as f64)?)?) } else { None };
        let probs_values = probs.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let experts = probs.dim(D::Minus1)?;
        let scalar = |t: &Tensor| -> Result<f32> { t.to_dtype(DType::F32)?.to_scalar::<f32>() };
        let stats = layer_stats(self.layer, tokens, k, selection, &probs_values, experts, (scalar(&lb)?, scalar(&zl)?));
        let mut gate_mean = vec![0f32; experts];
        for row in probs_values.chunks_exact(experts.max(1)) {
            for (m, p) in gate_mean.iter_mut().zip(row) {
                *m += p;
            }
        }
        gate_mean.iter_mut().for_each(|m| *m /= tokens.max(1) as f32);
        Ok((aux_loss, stats, gate_mean))
    }
}

/// What routing one micro-batch decided, before any expert runs.
pub struct RoutedTokens {
    /// The router scores (for the losses and statistics).
    pub scores: RouterScores,
    /// Which tokens each expert keeps.
    pub selection: Selection,
    /// Combine weights, indexed by the selection's slots.
    pub gates: Tensor,
    /// Experts per token (0 under expert choice).
    pub k: usize,
}

/// Route the tokens whose raw router logits are `z` (`[T, E]`) as `spec` says, with
/// `bias` added to the selection scores when the spec uses a selection bias, and `route`
/// choosing per token when the spec asks for it: the routing a layer executes, and the
/// routing a shadow router's spec would execute on the same logits.
pub fn route_tokens(layer: usize, z: &Tensor, spec: &RouterSpec, bias: &[f32], route: Option<&mut TokenRouter<'_>>) -> Result<RoutedTokens> {
    let (tokens, experts) = z.dims2()?;
    let scores = router_scores(z, spec)?;
    let mut selection_scores = scores.scores.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    if spec.selection_bias != SelectionBias::None {
        for row in selection_scores.chunks_exact_mut(experts) {
            for (s, b) in row.iter_mut().zip(bias) {
                *s += b;
            }
        }
    }
    let (selection, gates, k) = match (spec.mode, route.filter(|_| spec.per_token_route)) {
        (RoutingMode::TokenChoice, Some(route)) => {
            let values = z.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let logits = TokenLogits { tokens: tokens as u32, experts: experts as u32, values };
            let a = route(layer, &logits).map_err(|e| candle_core::Error::Msg(format!("layer {layer}: per-token route: {e}")))?;
            let k = a.top_k as usize;
            let gates = Tensor::from_vec(a.weights.clone(), a.weights.len(), z.device())?;
            let capacity = spec.capacity.map(|c| (token_choice_capacity(c.factor, tokens, k, experts), c.drop_policy));
            (selection::token_choice(&a.experts, &a.weights, experts, k, capacity), gates, k)
        }
        (RoutingMode::TokenChoice, None) => {
            let k = spec.top_k as usize;
            let mut chosen = Vec::with_capacity(tokens * k);
            for row in selection_scores.chunks_exact(experts) {
                top_k(row, k, &mut chosen);
            }
            let gates = token_choice_gates(&scores, &chosen, spec)?;
            let capacity = spec.capacity.map(|c| (token_choice_capacity(c.factor, tokens, k, experts), c.drop_policy));
            let gate_values = match capacity {
                Some((_, DropPolicy::Probs)) => gates.to_dtype(DType::F32)?.to_vec1::<f32>()?,
                _ => Vec::new(),
            };
            (selection::token_choice(&chosen, &gate_values, experts, k, capacity), gates, k)
        }
        (RoutingMode::ExpertChoice, _) => {
            let factor = spec.capacity.map(|c| c.factor).ok_or_else(|| candle_core::Error::Msg(format!("layer {layer}: expert-choice routing needs a capacity factor")))?;
            let capacity = ((tokens as f64) * factor as f64 / experts as f64).floor() as usize;
            (selection::expert_choice(&selection_scores, experts, capacity), expert_choice_gates(&scores, spec)?, 0)
        }
    };
    Ok(RoutedTokens { scores, selection, gates, k })
}

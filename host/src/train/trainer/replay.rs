//! Replaying a traced step (`recast replay RUN --step S`): the step's forward pass again,
//! on the weights it ran on, with every traced MoE layer executing the recorded routing
//! instead of its router's; beside it each layer's router routes the same input live,
//! and any token whose experts differ from the record is reported. With the recorded
//! routing the loss is the step's training loss, whatever the router does now.

use super::{TrainError, Trainer, tensor_err};
use crate::model::loss::chunked_next_token_loss;
use crate::model::transformer::RoutingCapture;
use crate::train::routing_trace::StepTrace;

/// What a replay found.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplayReport {
    /// The replayed step (1-based).
    pub step: u64,
    /// Mean next-token loss of the step's micro-batches with the recorded routing.
    pub loss: f64,
    /// Per traced layer: tokens compared and tokens whose experts differ.
    pub layers: Vec<LayerReplay>,
    /// Every token whose live experts differ from the recorded ones.
    pub differences: Vec<TokenDifference>,
}

/// One traced layer's comparison.
#[derive(Clone, Debug, serde::Serialize)]
pub struct LayerReplay {
    pub layer: usize,
    pub tokens: usize,
    pub differing: usize,
}

/// A token the live router sends elsewhere than the record says.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct TokenDifference {
    pub micro_batch: usize,
    pub layer: usize,
    /// The sequence in the micro-batch and the position in it.
    pub sequence: usize,
    pub position: usize,
    /// Experts (ascending) in the record and live.
    pub recorded: Vec<u32>,
    pub live: Vec<u32>,
}

impl Trainer {
    /// Replay `trace` on this trainer's weights, which must be those the traced step
    /// ran on (see [`Trainer::reopen_at`]); a per-token router plugin answers live.
    pub fn replay_step(&mut self, trace: &StepTrace) -> Result<ReplayReport, TrainError> {
        let step = trace.step.saturating_sub(1);
        if self.step != step {
            return Err(TrainError::Resume(format!("step {} ran on the weights after step {step}, but this trainer is at step {}", trace.step, self.step)));
        }
        if let Some((index, start)) = self.stage_at(step)
            && self.stage != Some(index)
        {
            self.enter_stage(index, start)?;
        }
        let infos = self.layer_infos();
        let moe_layers: Vec<usize> = infos.iter().map(|i| i.layer as usize).collect();
        let mut report = ReplayReport { step: trace.step, loss: 0.0, layers: Vec::new(), differences: Vec::new() };
        for (m, mb) in trace.micro_batches.iter().enumerate() {
            if let Some(r) = mb.layers.iter().find(|r| !moe_layers.contains(&r.layer)) {
                return Err(TrainError::Resume(format!("the trace routes layer {}, which is not an MoE layer of this model", r.layer)));
            }
            let capture = RoutingCapture { record: true, replay: &mb.layers };
            let (out, _) = self.with_token_router(step, |model, route| model.hidden_captured(&mb.tokens, mb.sequences, route, capture))?;
            let loss = chunked_next_token_loss(&out.hidden, &self.model.head, &mb.tokens, mb.sequences).map_err(tensor_err(trace.step))?;
            report.loss += loss.value / trace.micro_batches.len() as f64;
            let seq = mb.tokens.len() / mb.sequences.max(1);
            for recorded in &mb.layers {
                let Some(live) = out.routing.iter().find(|r| r.layer == recorded.layer) else { continue };
                let (want, got) = (recorded.experts_by_token(), live.experts_by_token());
                let mut differing = 0;
                for (t, (a, b)) in want.iter().zip(&got).enumerate() {
                    if a != b {
                        differing += 1;
                        report.differences.push(TokenDifference { micro_batch: m, layer: recorded.layer, sequence: t / seq.max(1), position: t % seq.max(1), recorded: a.clone(), live: b.clone() });
                    }
                }
                match report.layers.iter_mut().find(|l| l.layer == recorded.layer) {
                    Some(l) => {
                        l.tokens += want.len();
                        l.differing += differing;
                    }
                    None => report.layers.push(LayerReplay { layer: recorded.layer, tokens: want.len(), differing }),
                }
            }
        }
        Ok(report)
    }
}

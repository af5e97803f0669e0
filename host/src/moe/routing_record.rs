//! The routing one MoE layer applied to one micro-batch, as plain numbers: which tokens
//! each expert kept and with what combine weight. A routing trace stores it, a replay
//! forces it back into the layer, and shadow routers compare their choices against it.
//! The same record serves token choice and expert choice, because both end as kept
//! `(token, expert, gate)` assignments grouped by expert.

use super::selection::Selection;

/// One layer's routing of one micro-batch.
#[derive(Clone, Debug, PartialEq)]
pub struct RoutingRecord {
    /// The transformer layer.
    pub layer: usize,
    /// Tokens in the micro-batch.
    pub tokens: usize,
    /// Kept assignments per expert (the group sizes of `assigned`).
    pub counts: Vec<u32>,
    /// Assignments each expert received before any capacity limit.
    pub load: Vec<u32>,
    /// Token of each kept assignment, grouped by expert, each group in token order.
    pub assigned: Vec<u32>,
    /// Combine weight of each kept assignment (the router's dtype, as f32).
    pub gates: Vec<f32>,
}

impl RoutingRecord {
    /// The record of `selection`, whose gate of kept assignment `i` is
    /// `gate_by_slot[selection.slots[i]]`.
    pub fn new(layer: usize, tokens: usize, selection: &Selection, gate_by_slot: &[f32]) -> Self {
        Self {
            layer,
            tokens,
            counts: selection.counts.iter().map(|&c| c as u32).collect(),
            load: selection.load.clone(),
            assigned: selection.tokens.clone(),
            gates: selection.slots.iter().map(|&s| gate_by_slot.get(s as usize).copied().unwrap_or(0.0)).collect(),
        }
    }

    /// Routed experts.
    pub fn experts(&self) -> usize {
        self.counts.len()
    }

    /// The selection that replays this record: the same kept tokens per expert, each
    /// assignment's gate at its own index (`slots` = 0, 1, 2, …).
    pub fn selection(&self) -> Selection {
        let kept: u32 = self.counts.iter().sum();
        let loaded: u32 = self.load.iter().sum();
        Selection {
            tokens: self.assigned.clone(),
            slots: (0..self.assigned.len() as u32).collect(),
            counts: self.counts.iter().map(|&c| c as usize).collect(),
            load: self.load.clone(),
            dropped: loaded.saturating_sub(kept),
            overflow_at_1_25: 0,
        }
    }

    /// For every token, the experts it went to (ascending).
    pub fn experts_by_token(&self) -> Vec<Vec<u32>> {
        let mut out = vec![Vec::new(); self.tokens];
        let mut at = 0usize;
        for (e, &count) in self.counts.iter().enumerate() {
            for &t in &self.assigned[at..at + count as usize] {
                if let Some(list) = out.get_mut(t as usize) {
                    list.push(e as u32);
                }
            }
            at += count as usize;
        }
        out
    }

    /// Whether the record is consistent: group sizes add up to the assignments, one gate
    /// per assignment, every token in range. A trace read from disk is checked with it
    /// before it drives a forward pass.
    pub fn check(&self) -> Result<(), String> {
        let kept: usize = self.counts.iter().map(|&c| c as usize).sum();
        if kept != self.assigned.len() || kept != self.gates.len() {
            return Err(format!("layer {}: {} kept assignments by the counts, {} tokens and {} gates recorded", self.layer, kept, self.assigned.len(), self.gates.len()));
        }
        if self.load.len() != self.counts.len() {
            return Err(format!("layer {}: {} loads for {} experts", self.layer, self.load.len(), self.counts.len()));
        }
        if let Some(t) = self.assigned.iter().find(|&&t| t as usize >= self.tokens) {
            return Err(format!("layer {}: token {t} out of range for {} tokens", self.layer, self.tokens));
        }
        if let Some(g) = self.gates.iter().find(|g| !g.is_finite()) {
            return Err(format!("layer {}: a recorded gate is {g}", self.layer));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::RoutingRecord;
    use crate::moe::selection::token_choice;

    #[test]
    fn a_record_gives_back_each_tokens_experts_and_replays_its_selection() {
        // 3 tokens, top-2 of 3 experts; the gate of slot s is s / 10.
        let chosen = [0u32, 2, 1, 0, 2, 1];
        let gates: Vec<f32> = (0..6).map(|s| s as f32 / 10.0).collect();
        let selection = token_choice(&chosen, &gates, 3, 2, None);
        let record = RoutingRecord::new(4, 3, &selection, &gates);
        assert_eq!(record.experts_by_token(), vec![vec![0, 2], vec![0, 1], vec![1, 2]]);
        // Expert 0 keeps tokens 0 and 1 (slots 0 and 3).
        assert_eq!((&record.assigned[..2], &record.gates[..2]), (&[0u32, 1][..], &[0.0f32, 0.3][..]));
        let replay = record.selection();
        assert_eq!((replay.tokens, replay.counts, replay.load), (selection.tokens, selection.counts, selection.load));
        assert!(record.check().is_ok());
        let broken = RoutingRecord { assigned: vec![0, 9, 0, 1, 2, 2], ..record };
        assert!(broken.check().unwrap_err().contains("token 9 out of range"));
    }
}

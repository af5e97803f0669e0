//! Which tokens go to which experts: top-k per token or top-C per expert, capacity
//! limits and drops. Pure index arithmetic on the CPU, no tensors and no gradients —
//! the combine weights are computed differentiably elsewhere ([`super::gates`]).

use super::spec::DropPolicy;

/// Indices of the `k` largest values of `row`, best first; equal values go to the lower
/// index (so identical experts are chosen deterministically).
pub fn top_k(row: &[f32], k: usize, out: &mut Vec<u32>) {
    let start = out.len();
    for (i, &v) in row.iter().enumerate() {
        let chosen = out.len() - start;
        if chosen == k && row[out[out.len() - 1] as usize] >= v {
            continue;
        }
        // First slot holding a strictly smaller value: ties stay behind earlier indices.
        let at = out[start..].iter().position(|&j| row[j as usize] < v).map_or(out.len(), |p| start + p);
        out.insert(at, i as u32);
        if out.len() - start > k {
            out.pop();
        }
    }
}

/// The assignments that survive, grouped by expert, each group in token order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selection {
    /// Token of each kept assignment, grouped by expert.
    pub tokens: Vec<u32>,
    /// For each kept assignment, its index into the gate vector (token choice: the
    /// slot `t * k + j`; expert choice: `t * E + e`).
    pub slots: Vec<u32>,
    /// Kept assignments per expert (the group sizes).
    pub counts: Vec<usize>,
    /// Assignments each expert received before any capacity limit (c_e).
    pub load: Vec<u32>,
    /// Assignments dropped by the capacity limit.
    pub dropped: u32,
    /// Assignments a capacity factor of 1.25 would drop (reported even when dropless).
    pub overflow_at_1_25: u32,
}

impl Selection {
    /// The counts-only selection of dropless token choice whose per-expert loads were
    /// counted elsewhere (the CUDA router): what the statistics and losses need.
    pub fn dropless(load: Vec<u32>, tokens: usize, k: usize) -> Self {
        let c_125 = token_choice_capacity(1.25, tokens, k, load.len().max(1));
        let overflow_at_1_25 = load.iter().map(|&c| (c as usize).saturating_sub(c_125) as u32).sum();
        Self { counts: load.iter().map(|&c| c as usize).collect(), load, overflow_at_1_25, ..Self::default() }
    }
}

/// Capacity per expert under token choice: `ceil(cf · T · k / E)` (Megatron's form).
pub fn token_choice_capacity(factor: f32, tokens: usize, k: usize, experts: usize) -> usize {
    ((factor as f64) * (tokens * k) as f64 / experts as f64).ceil() as usize
}

/// Token choice. `experts_per_slot[t*k + j]` is token `t`'s `j`-th expert and
/// `gate_values` its combine weight; `capacity` limits each expert's assignments.
pub fn token_choice(experts_per_slot: &[u32], gate_values: &[f32], num_experts: usize, k: usize, capacity: Option<(usize, DropPolicy)>) -> Selection {
    let tokens = experts_per_slot.len() / k.max(1);
    let mut by_expert: Vec<Vec<u32>> = vec![Vec::new(); num_experts];
    for (slot, &e) in experts_per_slot.iter().enumerate() {
        by_expert[e as usize].push(slot as u32);
    }
    let load: Vec<u32> = by_expert.iter().map(|s| s.len() as u32).collect();
    let c_125 = token_choice_capacity(1.25, tokens, k, num_experts);
    let overflow_at_1_25 = load.iter().map(|&c| (c as usize).saturating_sub(c_125) as u32).sum();

    let mut out = Selection { load, overflow_at_1_25, counts: Vec::with_capacity(num_experts), ..Selection::default() };
    for mut slots in by_expert {
        if let Some((cap, policy)) = capacity
            && slots.len() > cap
        {
            out.dropped += (slots.len() - cap) as u32;
            if policy == DropPolicy::Probs {
                // Highest gates survive; ties to the earlier token. Then back to token order.
                slots.sort_by(|&a, &b| gate_values[b as usize].total_cmp(&gate_values[a as usize]).then(a.cmp(&b)));
                slots.truncate(cap);
                slots.sort_unstable();
            } else {
                slots.truncate(cap);
            }
        }
        out.counts.push(slots.len());
        out.tokens.extend(slots.iter().map(|&s| s / k as u32));
        out.slots.extend(slots);
    }
    out
}

/// Expert choice: expert `e` takes the `capacity` tokens with the highest
/// `scores[t*E + e]` (ties to the lower token index).
pub fn expert_choice(scores: &[f32], num_experts: usize, capacity: usize) -> Selection {
    let tokens = scores.len() / num_experts;
    let capacity = capacity.min(tokens);
    let mut out = Selection { counts: Vec::with_capacity(num_experts), ..Selection::default() };
    let mut column = vec![0f32; tokens];
    let mut chosen = Vec::with_capacity(capacity);
    for e in 0..num_experts {
        for (t, c) in column.iter_mut().enumerate() {
            *c = scores[t * num_experts + e];
        }
        chosen.clear();
        top_k(&column, capacity, &mut chosen);
        chosen.sort_unstable();
        out.counts.push(chosen.len());
        out.load.push(chosen.len() as u32);
        out.tokens.extend_from_slice(&chosen);
        out.slots.extend(chosen.iter().map(|&t| t * num_experts as u32 + e as u32));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_is_sorted_and_breaks_ties_low() {
        let mut out = vec![];
        top_k(&[0.1, 0.5, 0.5, 0.9, 0.5], 3, &mut out);
        assert_eq!(out, vec![3, 1, 2]);
        out.clear();
        top_k(&[1.0; 6], 4, &mut out);
        assert_eq!(out, vec![0, 1, 2, 3]);
    }

    #[test]
    fn top_k_matches_a_full_sort() {
        let row: Vec<f32> = (0..64).map(|i| ((i * 7919) % 101) as f32 / 7.0).collect();
        for k in [1, 2, 5, 64] {
            let mut out = vec![];
            top_k(&row, k, &mut out);
            let mut idx: Vec<u32> = (0..64).collect();
            idx.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]).then(a.cmp(&b)));
            assert_eq!(out, idx[..k].to_vec());
        }
    }

    #[test]
    fn capacity_keeps_the_highest_gates_and_counts_drops() {
        // 4 tokens, k = 1, all to expert 0; capacity 2 by probs keeps tokens 1 and 3.
        let sel = token_choice(&[0, 0, 0, 0], &[0.1, 0.9, 0.2, 0.8], 2, 1, Some((2, DropPolicy::Probs)));
        assert_eq!(sel.tokens, vec![1, 3]);
        assert_eq!(sel.counts, vec![2, 0]);
        assert_eq!(sel.load, vec![4, 0]);
        assert_eq!(sel.dropped, 2);
        let sel = token_choice(&[0, 0, 0, 0], &[0.1, 0.9, 0.2, 0.8], 2, 1, Some((2, DropPolicy::Position)));
        assert_eq!(sel.tokens, vec![0, 1]);
    }

    #[test]
    fn dropless_selection_reports_what_token_choice_reports() {
        let experts = [0u32, 1, 0, 0, 2, 0, 0, 1];
        let full = token_choice(&experts, &[], 3, 2, None);
        let counted = Selection::dropless(full.load.clone(), 4, 2);
        assert_eq!((counted.counts, counted.load, counted.dropped, counted.overflow_at_1_25), (full.counts, full.load, full.dropped, full.overflow_at_1_25));
        assert!(full.overflow_at_1_25 > 0);
    }

    #[test]
    fn no_drops_when_capacity_covers_everything() {
        // cf >= E / k means C >= T: nothing can overflow.
        let experts = [0u32, 1, 0, 1, 0, 1, 1, 0];
        let c = token_choice_capacity(2.0 / 2.0, 4, 2, 2);
        let sel = token_choice(&experts, &[0.5; 8], 2, 2, Some((c, DropPolicy::Probs)));
        assert_eq!(sel.dropped, 0);
        assert_eq!(sel.counts.iter().sum::<usize>(), 8);
    }

    #[test]
    fn expert_choice_gives_every_expert_exactly_c_tokens() {
        let scores: Vec<f32> = (0..6 * 3).map(|i| ((i * 37) % 17) as f32).collect();
        let sel = expert_choice(&scores, 3, 2);
        assert_eq!(sel.counts, vec![2, 2, 2]);
        assert_eq!(sel.tokens.len(), 6);
        for e in 0..3 {
            let col: Vec<f32> = (0..6).map(|t| scores[t * 3 + e]).collect();
            let mut want = vec![];
            top_k(&col, 2, &mut want);
            want.sort_unstable();
            assert_eq!(sel.tokens[e * 2..e * 2 + 2], want[..]);
        }
    }
}

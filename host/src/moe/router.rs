//! Native token-choice routing: softmax scores, top-k with ties to the lower expert
//! index, optional renormalisation (METHODS.md §1.1). A plain-slice reference, without
//! tensors, for the per-token `route` escape hatch and its benchmark.

use super::selection::top_k;

/// Per-token top-k selection: for token `t`, slots `t*k .. t*k+k` hold its experts
/// (best first) and their gates.
#[derive(Clone, Debug, PartialEq)]
pub struct TopKRouting {
    /// Experts per token.
    pub top_k: usize,
    /// Chosen expert per slot, best first within a token.
    pub experts: Vec<u32>,
    /// Combine weight per slot.
    pub gates: Vec<f32>,
}

/// Softmax over each row of `logits` (`tokens x experts`, row-major), keep the `k`
/// highest scores (ties to the lower index), renormalise them to sum to 1 if asked.
pub fn softmax_topk(logits: &[f32], experts: usize, k: usize, renormalize: bool) -> TopKRouting {
    assert!(experts > 0 && (1..=experts).contains(&k) && logits.len().is_multiple_of(experts), "softmax_topk: bad shape");
    let tokens = logits.len() / experts;
    let mut out = TopKRouting { top_k: k, experts: Vec::with_capacity(tokens * k), gates: Vec::with_capacity(tokens * k) };
    let mut probs = vec![0f32; experts];
    let mut chosen = Vec::with_capacity(k);
    for row in logits.chunks_exact(experts) {
        let max = row.iter().fold(f32::NEG_INFINITY, |m, &z| m.max(z));
        let mut sum = 0.0f32;
        for (p, &z) in probs.iter_mut().zip(row) {
            *p = (z - max).exp();
            sum += *p;
        }
        chosen.clear();
        top_k(&probs, k, &mut chosen);
        let denom = if renormalize { chosen.iter().map(|&e| probs[e as usize]).sum::<f32>() } else { sum };
        for &e in &chosen {
            out.experts.push(e);
            out.gates.push(probs[e as usize] / denom);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::softmax_topk;

    #[test]
    fn picks_the_largest_and_breaks_ties_low() {
        let r = softmax_topk(&[0.0, 3.0, 1.0, 3.0], 4, 2, true);
        assert_eq!(r.experts, vec![1, 3]);
        assert!((r.gates[0] - 0.5).abs() < 1e-6 && (r.gates[1] - 0.5).abs() < 1e-6);
    }

    #[test]
    fn gates_are_softmax_probabilities() {
        let logits = [0.5f32, -1.0, 2.0];
        let r = softmax_topk(&logits, 3, 1, false);
        let z: f32 = logits.iter().map(|x| x.exp()).sum();
        assert_eq!(r.experts, vec![2]);
        assert!((r.gates[0] - 2f32.exp() / z).abs() < 1e-6);
    }

    #[test]
    fn renormalised_gates_sum_to_one_and_shift_invariant() {
        let logits: Vec<f32> = (0..64).map(|i| ((i * 37 % 11) as f32) * 0.3).collect();
        let shifted: Vec<f32> = logits.iter().map(|x| x + 5.0).collect();
        let a = softmax_topk(&logits, 8, 2, true);
        let b = softmax_topk(&shifted, 8, 2, true);
        assert_eq!(a.experts, b.experts);
        for (t, pair) in a.gates.chunks(2).enumerate() {
            assert!((pair.iter().sum::<f32>() - 1.0).abs() < 1e-6);
            assert!((pair[0] - b.gates[2 * t]).abs() < 1e-6);
        }
    }
}

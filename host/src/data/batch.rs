//! Filling a step's batch: which domain each sequence comes from (the sampler's
//! mixture) and where in that domain it starts, all from (seed, step), so a resumed run
//! draws exactly the batches the uninterrupted run would have.

use super::domain::Domain;
use crate::contract::Mixture;
use crate::model::init::SplitMix64;

/// A step's sequences, laid end to end.
pub struct Batch {
    /// `sequences * seq` token ids.
    pub tokens: Vec<u32>,
    /// Domain of each sequence.
    pub domains: Vec<usize>,
    /// Tokens per sequence.
    pub seq: usize,
}

/// Domain of each of `n` sequences under `mixture`.
pub fn assign_domains(mixture: &Mixture, n: usize, rng: &mut SplitMix64) -> Vec<usize> {
    match mixture {
        Mixture::Counts(counts) => counts.iter().enumerate().flat_map(|(d, &c)| std::iter::repeat_n(d, c as usize)).collect(),
        Mixture::Weights(weights) => {
            let total: f64 = weights.iter().map(|&w| w as f64).sum();
            (0..n)
                .map(|_| {
                    let mut u = rng.uniform() * total;
                    for (d, &w) in weights.iter().enumerate() {
                        u -= w as f64;
                        if u < 0.0 {
                            return d;
                        }
                    }
                    weights.iter().rposition(|&w| w > 0.0).unwrap_or(0)
                })
                .collect()
        }
    }
}

/// The training batch of `step`: `n` sequences of `seq` tokens.
pub fn training_batch(domains: &[Domain], mixture: &Mixture, seed: u64, step: u64, n: usize, seq: usize) -> Batch {
    let mut rng = SplitMix64(seed ^ step.wrapping_mul(0xA24B_AED4_963E_E407));
    let assignment = assign_domains(mixture, n, &mut rng);
    let mut tokens = Vec::with_capacity(n * seq);
    for &d in &assignment {
        let store = &domains[d].train;
        let start = rng.below((store.len() - seq + 1) as u64) as usize;
        store.copy_window(start, seq, &mut tokens);
    }
    Batch { tokens, domains: assignment, seq }
}

/// The validation sequences of one domain: up to `n` consecutive windows from the start.
pub fn validation_windows(domain: &Domain, n: usize, seq: usize) -> Vec<u32> {
    let count = n.min(domain.valid.len() / seq).max(1);
    let mut tokens = Vec::with_capacity(count * seq);
    for i in 0..count {
        domain.valid.copy_window(i * seq, seq, &mut tokens);
    }
    tokens
}

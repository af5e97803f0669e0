//! The language-modelling loss.

use candle_core::{D, Result, Tensor};

use super::ops::logsumexp_last_dim;

/// Mean cross-entropy of `logits` (`[N, vocab]`) against `targets` (N ids).
pub fn cross_entropy(logits: &Tensor, targets: &[u32]) -> Result<Tensor> {
    let targets = Tensor::from_slice(targets, (targets.len(), 1), logits.device())?;
    let picked = logits.gather(&targets, D::Minus1)?;
    logsumexp_last_dim(logits)?.sub(&picked)?.mean_all()
}

/// Next-token targets for `batch` sequences laid end to end: the loss is taken on
/// positions `0..seq-1` of each sequence against positions `1..seq`. Returns the row
/// indices of the logits to use and their targets.
pub fn next_token_pairs(tokens: &[u32], batch: usize) -> (Vec<u32>, Vec<u32>) {
    let seq = tokens.len() / batch.max(1);
    let mut rows = Vec::with_capacity(batch * seq.saturating_sub(1));
    let mut targets = Vec::with_capacity(rows.capacity());
    for b in 0..batch {
        for t in 0..seq.saturating_sub(1) {
            rows.push((b * seq + t) as u32);
            targets.push(tokens[b * seq + t + 1]);
        }
    }
    (rows, targets)
}

/// Per-position next-token negative log-likelihood, `[batch * (seq - 1)]`, sequence by
/// sequence.
pub fn next_token_nll(logits: &Tensor, tokens: &[u32], batch: usize) -> Result<Tensor> {
    let (rows, targets) = next_token_pairs(tokens, batch);
    let rows = Tensor::from_vec(rows, targets.len(), logits.device())?;
    let picked_logits = logits.index_select(&rows, 0)?;
    let targets = Tensor::from_slice(&targets, (targets.len(), 1), logits.device())?;
    let picked = picked_logits.gather(&targets, D::Minus1)?;
    logsumexp_last_dim(&picked_logits)?.sub(&picked)?.squeeze(D::Minus1)
}

/// Mean next-token cross-entropy of a forward pass over `tokens`.
pub fn next_token_loss(logits: &Tensor, tokens: &[u32], batch: usize) -> Result<Tensor> {
    let (rows, targets) = next_token_pairs(tokens, batch);
    let rows = Tensor::from_vec(rows, targets.len(), logits.device())?;
    cross_entropy(&logits.index_select(&rows, 0)?, &targets)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    #[test]
    fn uniform_logits_give_log_vocab() {
        let logits = Tensor::zeros((3, 10), candle_core::DType::F64, &Device::Cpu).expect("z");
        let l = super::cross_entropy(&logits, &[1, 2, 3]).expect("ce").to_scalar::<f64>().expect("s");
        assert!((l - 10f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn pairs_stay_within_each_sequence() {
        let (rows, targets) = super::next_token_pairs(&[1, 2, 3, 4, 5, 6], 2);
        assert_eq!(rows, vec![0, 1, 3, 4]);
        assert_eq!(targets, vec![2, 3, 5, 6]);
    }
}

//! The language-modelling loss.

use candle_core::{D, DType, Result, Tensor};

use super::ops::logsumexp_last_dim;
use crate::cpu::matmul;
use crate::cpu::op_io::is_f32_cpu;

/// Logit elements computed at once by [`chunked_next_token_loss`]: a few such buffers
/// (16 MiB each) are all the head's memory, whatever the vocabulary and batch.
const CHUNK_ELEMENTS: usize = 1 << 22;

/// The mean next-token loss computed from the final hidden states and the LM head,
/// without a `[tokens, vocab]` logits tensor: the logits are made a chunk of rows at a
/// time, and the gradients they give (for the hidden states and the head) are computed
/// there and then, so nothing of the size of the logits is kept for the backward pass.
pub struct ChunkedLoss {
    /// The mean loss; its backward gives the hidden states and the head exactly the
    /// gradients of the mean cross-entropy.
    pub loss: Tensor,
    /// Its value.
    pub value: f64,
    /// Per position, the next-token negative log-likelihood, sequence by sequence (as
    /// [`next_token_nll`] orders them).
    pub nll: Vec<f32>,
}

/// [`next_token_loss`] of `linear(hidden, head)` for `batch` sequences of `tokens`, with
/// the logits made in chunks and never kept (see [`ChunkedLoss`]). On the CPU with a
/// BLAS this is one fused op ([`crate::cpu::lm_head_loss`]); elsewhere candle's ops.
pub fn chunked_next_token_loss(hidden: &Tensor, head: &Tensor, tokens: &[u32], batch: usize) -> Result<ChunkedLoss> {
    let (rows, targets) = next_token_pairs(tokens, batch);
    let n = targets.len();
    let device = hidden.device();
    let h = hidden.index_select(&Tensor::from_vec(rows, n, device)?, 0)?;
    let path = matmul::active();
    if let Some(library) = path.blas.clone()
        && is_f32_cpu(&h)
        && is_f32_cpu(head)
        && h.rank() == 2
        && head.rank() == 2
    {
        let fused = crate::cpu::lm_head_loss::head_loss(&h, head, &targets, path.precision, library)?;
        return Ok(ChunkedLoss { loss: fused.loss, value: fused.value, nll: fused.nll });
    }
    let (h_const, w_const) = (h.detach(), head.detach());
    let w_t = w_const.t()?.contiguous()?;
    let vocab = head.dim(0)?;
    let chunk = (CHUNK_ELEMENTS / vocab.max(1)).max(1);
    let mut nll = Vec::with_capacity(n);
    let mut dh_parts = Vec::new();
    let mut dw: Option<Tensor> = None;
    for start in (0..n).step_by(chunk) {
        let len = chunk.min(n - start);
        let hc = h_const.narrow(0, start, len)?;
        let logits = matmul::linear(&hc, &w_const)?.to_dtype(DType::F32)?;
        let max = logits.max_keepdim(D::Minus1)?;
        let shifted = logits.broadcast_sub(&max)?;
        let e = shifted.exp()?;
        let sum = e.sum_keepdim(D::Minus1)?;
        let t = Tensor::from_slice(&targets[start..start + len], (len, 1), device)?;
        let picked = shifted.gather(&t, D::Minus1)?;
        nll.extend(sum.log()?.sub(&picked)?.flatten_all()?.to_vec1::<f32>()?);
        // d(mean loss)/d logits = (softmax − one-hot) / n.
        let g = e.broadcast_div(&sum)?.scatter_add(&t, &Tensor::full(-1f32, (len, 1), device)?, D::Minus1)?;
        let g = (g / n as f64)?.to_dtype(hc.dtype())?;
        dh_parts.push(matmul::linear(&g, &w_t)?);
        let dw_chunk = matmul::linear(&g.t()?.contiguous()?, &hc.t()?.contiguous()?)?;
        dw = Some(match dw {
            Some(acc) => acc.add(&dw_chunk)?,
            None => dw_chunk,
        });
    }
    let value = nll.iter().map(|&x| x as f64).sum::<f64>() / n.max(1) as f64;
    let Some(dw) = dw else {
        return Ok(ChunkedLoss { loss: Tensor::zeros((), hidden.dtype(), device)?, value, nll });
    };
    let dh = Tensor::cat(&dh_parts, 0)?;
    // A surrogate whose gradient is (dh, dw) and whose value is exactly the loss:
    // `s - detach(s)` is zero, and only `s` carries a graph.
    let surrogate = h.mul(&dh.to_dtype(h.dtype())?)?.sum_all()?.add(&head.mul(&dw.to_dtype(head.dtype())?)?.sum_all()?)?;
    let loss = surrogate.sub(&surrogate.detach())?.affine(1.0, value)?;
    Ok(ChunkedLoss { loss, value, nll })
}

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

    /// The chunked loss has the value and the gradients (for the hidden states and the
    /// head) of the plain one, with chunks smaller than the batch.
    #[test]
    fn chunked_loss_matches_the_plain_loss_and_its_gradients() {
        use candle_core::Var;
        let device = Device::Cpu;
        // 18 positions; 300,000 logits a row make chunks of 13 rows.
        let (batch, seq, d, vocab) = (3, 7, 16, 300_000);
        let hidden = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (batch * seq, d), &device).expect("h"))).expect("var");
        let head = Var::from_tensor(&(Tensor::randn(0f32, 0.1, (vocab, d), &device).expect("w"))).expect("var");
        let tokens: Vec<u32> = (0..batch * seq).map(|i| ((i * 7919) % vocab) as u32).collect();
        let plain = super::next_token_loss(&crate::cpu::matmul::linear(hidden.as_tensor(), head.as_tensor()).expect("logits"), &tokens, batch).expect("loss");
        let chunked = super::chunked_next_token_loss(hidden.as_tensor(), head.as_tensor(), &tokens, batch).expect("chunked");
        let (a, b) = (plain.to_scalar::<f32>().expect("a") as f64, chunked.loss.to_scalar::<f32>().expect("b") as f64);
        // f32 sums over 300,000 logits, ordered differently by each CPU's GEMM and
        // reduction kernels, agree to about sqrt(n)·ε ≈ 3e-5 of their size: 1e-4 holds
        // on every CPU, and a wrong chunk (a row or a gradient lost) is off by far more.
        assert!((a - b).abs() < 1e-4 * a.abs(), "{a} vs {b}");
        assert!((chunked.value - a).abs() < 1e-4 * a.abs());
        assert_eq!(chunked.nll.len(), batch * (seq - 1));
        let (gp, gc) = (plain.backward().expect("bp"), chunked.loss.backward().expect("bc"));
        for var in [&hidden, &head] {
            let (x, y) = (gp.get(var.as_tensor()).expect("plain grad"), gc.get(var.as_tensor()).expect("chunked grad"));
            let scale = x.abs().expect("abs").max_all().expect("max").to_scalar::<f32>().expect("s");
            let diff = (x - y).expect("diff").abs().expect("abs").max_all().expect("max").to_scalar::<f32>().expect("s");
            assert!(diff <= 1e-4 * scale.max(1e-12), "gradient differs by {diff} (scale {scale})");
        }
    }

    #[test]
    fn pairs_stay_within_each_sequence() {
        let (rows, targets) = super::next_token_pairs(&[1, 2, 3, 4, 5, 6], 2);
        assert_eq!(rows, vec![0, 1, 3, 4]);
        assert_eq!(targets, vec![2, 3, 5, 6]);
    }
}

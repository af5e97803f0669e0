//! Grouped-query self-attention with a causal (optionally sliding-window) mask and
//! rotary position embeddings.

use candle_core::{DType, Device, Result, Tensor};

use super::ops::{linear, softmax_last_dim};
use super::rope::RopeTables;
use crate::cpu::attention::causal_attention;

/// One layer's attention weights (Hugging Face layout, `[out, in]`).
pub struct Attention {
    pub q: Tensor,
    pub k: Tensor,
    pub v: Tensor,
    pub o: Tensor,
    pub q_bias: Option<Tensor>,
    pub k_bias: Option<Tensor>,
    pub v_bias: Option<Tensor>,
    pub o_bias: Option<Tensor>,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub head_dim: usize,
    /// `Some(w)`: a query sees only the `w` most recent positions, itself included.
    pub window: Option<usize>,
}

/// Additive mask `[seq, seq]`: 0 where query `i` may see key `j`, -inf elsewhere.
pub fn causal_mask(seq: usize, window: Option<usize>, dtype: DType, device: &Device) -> Result<Tensor> {
    let mut mask = vec![0f32; seq * seq];
    for i in 0..seq {
        for j in 0..seq {
            let visible = j <= i && window.is_none_or(|w| i - j < w);
            if !visible {
                mask[i * seq + j] = f32::NEG_INFINITY;
            }
        }
    }
    Tensor::from_vec(mask, (seq, seq), device)?.to_dtype(dtype)
}

impl Attention {
    /// `x`: `[batch * seq, hidden]` → `[batch * seq, hidden]`.
    pub fn forward(&self, x: &Tensor, batch: usize, seq: usize, rope: &RopeTables, mask: &Tensor) -> Result<Tensor> {
        let (h, kvh, hd) = (self.num_heads, self.num_kv_heads, self.head_dim);
        let heads = |t: Tensor, n: usize| -> Result<Tensor> { t.reshape((batch, seq, n, hd))?.transpose(1, 2)?.contiguous() };
        let q = rope.apply_to_heads(&linear(x, &self.q, self.q_bias.as_ref())?, batch, seq, h)?;
        let k = rope.apply_to_heads(&linear(x, &self.k, self.k_bias.as_ref())?, batch, seq, kvh)?;
        let v = heads(linear(x, &self.v, self.v_bias.as_ref())?, kvh)?;
        let out = match causal_attention(&q, &k, &v, self.window)? {
            Some(token_rows) => token_rows,
            None => {
                let (k, v) = (repeat_kv(&k, h / kvh)?, repeat_kv(&v, h / kvh)?);
                let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?.broadcast_add(mask)?;
                softmax_last_dim(&scores)?.matmul(&v)?.transpose(1, 2)?.reshape((batch * seq, h * hd))?
            }
        };
        linear(&out, &self.o, self.o_bias.as_ref())
    }
}

/// `[b, kv_heads, s, d]` → `[b, kv_heads * n, s, d]`, each kv head repeated `n` times in
/// place (the order Hugging Face's `repeat_kv` uses).
fn repeat_kv(x: &Tensor, n: usize) -> Result<Tensor> {
    if n == 1 {
        return Ok(x.clone());
    }
    let (b, kvh, s, d) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, kvh, n, s, d))?.contiguous()?.reshape((b, kvh * n, s, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sliding_window_mask_sees_w_positions() {
        let m = causal_mask(5, Some(2), DType::F32, &Device::Cpu).expect("mask").to_vec2::<f32>().expect("vec");
        let visible: Vec<Vec<usize>> = m.iter().map(|row| row.iter().enumerate().filter(|(_, v)| v.is_finite()).map(|(j, _)| j).collect()).collect();
        assert_eq!(visible, vec![vec![0], vec![0, 1], vec![1, 2], vec![2, 3], vec![3, 4]]);
    }

    #[test]
    fn repeat_kv_repeats_each_head_in_place() {
        let x = Tensor::arange(0f32, 2.0, &Device::Cpu).expect("x").reshape((1, 2, 1, 1)).expect("r");
        let y = repeat_kv(&x, 2).expect("rep").flatten_all().expect("f").to_vec1::<f32>().expect("v");
        assert_eq!(y, vec![0.0, 0.0, 1.0, 1.0]);
    }
}

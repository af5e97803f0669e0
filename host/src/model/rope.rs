//! Rotary position embeddings with the config's theta and long-context scaling,
//! computed as Hugging Face computes them (the half-split "rotate_half" layout).

use candle_core::{D, DType, Device, Result, Tensor};

use super::config::{RopeConfig, RopeScaling};

/// Cosine and sine tables for positions `0..len`, each `[len, head_dim]`.
pub struct RopeTables {
    cos: Tensor,
    sin: Tensor,
}

/// The inverse frequencies `1 / theta^(2i/dim)` after the configured scaling, for a
/// sequence of `seq_len` positions (dynamic scaling depends on it).
pub fn inverse_frequencies(rope: &RopeConfig, head_dim: usize, seq_len: usize) -> Vec<f64> {
    let ladder = |theta: f64| -> Vec<f64> { (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64)).collect() };
    match rope.scaling {
        RopeScaling::None => ladder(rope.theta),
        RopeScaling::Linear { factor } => ladder(rope.theta).into_iter().map(|f| f / factor).collect(),
        RopeScaling::Dynamic { factor, original_max_position_embeddings: original } => {
            let len = seq_len as f64;
            if len <= original {
                ladder(rope.theta)
            } else {
                let base = rope.theta * ((factor * len / original) - (factor - 1.0)).powf(head_dim as f64 / (head_dim as f64 - 2.0));
                ladder(base)
            }
        }
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings: original } => {
            let low_wavelen = original / low_freq_factor;
            let high_wavelen = original / high_freq_factor;
            ladder(rope.theta)
                .into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (original / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

impl RopeTables {
    /// Tables for `seq_len` positions in `dtype`.
    pub fn new(rope: &RopeConfig, head_dim: usize, seq_len: usize, dtype: DType, device: &Device) -> Result<Self> {
        let inv = inverse_frequencies(rope, head_dim, seq_len);
        let half = head_dim / 2;
        let mut cos = Vec::with_capacity(seq_len * head_dim);
        let mut sin = Vec::with_capacity(seq_len * head_dim);
        for p in 0..seq_len {
            // HF builds the angles in f32; do the same so long positions agree.
            let angles: Vec<f64> = inv.iter().map(|&f| ((p as f32) * (f as f32)) as f64).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        debug_assert_eq!(cos.len(), seq_len * 2 * half);
        let cos = Tensor::from_vec(cos, (seq_len, head_dim), device)?.to_dtype(dtype)?;
        let sin = Tensor::from_vec(sin, (seq_len, head_dim), device)?.to_dtype(dtype)?;
        Ok(Self { cos, sin })
    }

    /// Rotate `x` of shape `[batch, heads, seq, head_dim]` (one fused op in f32 on the CPU).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        match crate::cpu::rope::rope(x, &self.cos, &self.sin)? {
            Some(rotated) => Ok(rotated),
            None => self.apply_composed(x),
        }
    }

    /// Rotate a projection's output `x` `[batch · seq, heads · head_dim]` into heads
    /// `[batch, heads, seq, head_dim]` (one fused op in f32 on the CPU, which makes no
    /// transposed copy first).
    pub fn apply_to_heads(&self, x: &Tensor, batch: usize, seq: usize, heads: usize) -> Result<Tensor> {
        match crate::cpu::rope::rope_to_heads(x, (batch, seq, heads), &self.cos, &self.sin)? {
            Some(rotated) => Ok(rotated),
            None => {
                let d = x.dim(1)? / heads.max(1);
                self.apply(&x.reshape((batch, seq, heads, d))?.transpose(1, 2)?.contiguous()?)
            }
        }
    }

    /// [`RopeTables::apply`] as candle ops (any dtype or device).
    pub fn apply_composed(&self, x: &Tensor) -> Result<Tensor> {
        let seq = x.dim(2)?;
        let half = x.dim(D::Minus1)? / 2;
        let cos = self.cos.narrow(0, 0, seq)?;
        let sin = self.sin.narrow(0, 0, seq)?;
        let x1 = x.narrow(D::Minus1, 0, half)?;
        let x2 = x.narrow(D::Minus1, half, half)?;
        let rotated = Tensor::cat(&[&x2.neg()?, &x1], D::Minus1)?;
        x.broadcast_mul(&cos)?.add(&rotated.broadcast_mul(&sin)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_scaling_divides_frequencies() {
        let plain = RopeConfig { theta: 10_000.0, scaling: RopeScaling::None };
        let linear = RopeConfig { theta: 10_000.0, scaling: RopeScaling::Linear { factor: 4.0 } };
        let a = inverse_frequencies(&plain, 8, 16);
        let b = inverse_frequencies(&linear, 8, 16);
        assert_eq!(a[0], 1.0);
        for (x, y) in a.iter().zip(&b) {
            assert!((x / 4.0 - y).abs() < 1e-15);
        }
    }

    #[test]
    fn rotation_preserves_norm_per_pair() {
        let rope = RopeConfig { theta: 10_000.0, scaling: RopeScaling::None };
        let tables = RopeTables::new(&rope, 4, 3, DType::F64, &Device::Cpu).expect("tables");
        let x = Tensor::new(&[1.0f64, 2.0, 3.0, 4.0], &Device::Cpu).expect("x").reshape((1, 1, 1, 4)).expect("r").repeat((1, 1, 3, 1)).expect("rep");
        let y = tables.apply(&x).expect("apply").to_dtype(DType::F64).expect("dt").flatten_all().expect("f").to_vec1::<f64>().expect("v");
        for p in 0..3 {
            let r = &y[p * 4..p * 4 + 4];
            // Pairs (0, 2) and (1, 3) rotate together.
            assert!(((r[0] * r[0] + r[2] * r[2]) - 10.0).abs() < 1e-12);
            assert!(((r[1] * r[1] + r[3] * r[3]) - 20.0).abs() < 1e-12);
        }
    }
}

//! A vectorisable `exp` for the CPU kernels' activations (SwiGLU, the attention
//! softmax): libm's `expf` is a call per element and kept the loops scalar.

/// `e^x` to about one ulp, in branch-free arithmetic the compiler vectorises (libm's
/// `expf` is a call per element, and was a third of the gate's time): `e^x = 2ⁿ·e^r`
/// with `n = round(x / ln 2)`, `|r| ≤ ln 2 / 2`, and a degree-6 Taylor polynomial for
/// `e^r` (truncation error below 1e-7 relative).
#[inline(always)]
pub fn exp_approx(x: f32) -> f32 {
    // Adding 1.5·2²³ rounds to an integer held in the low mantissa bits.
    const ROUND: f32 = 12_582_912.0;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let underflows = x < -87.0;
    let x = x.clamp(-87.0, 88.0);
    let t = x * std::f32::consts::LOG2_E + ROUND;
    let n = t - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    let two_to_n = f32::from_bits(t.to_bits().wrapping_sub(ROUND.to_bits()).wrapping_add(127) << 23);
    // Below e^-87 (near the smallest normal f32): exactly 0, never a subnormal, which
    // would make every later product on it a hundred times slower.
    if underflows { 0.0 } else { p * two_to_n }
}

#[cfg(test)]
mod tests {
    /// The vectorisable exp against libm's over the range the gate sees and beyond.
    #[test]
    fn exp_approx_is_within_a_few_ulp_of_libm() {
        let mut worst = 0f64;
        for i in -2000..=2000 {
            let x = i as f32 * 0.043; // ±86: inside the clamp
            let (a, b) = (super::exp_approx(x) as f64, (x as f64).exp());
            worst = worst.max((a - b).abs() / b);
        }
        assert!(worst < 5e-7, "relative error {worst}");
        assert!(super::exp_approx(-200.0) == 0.0 && super::exp_approx(f32::NEG_INFINITY) == 0.0 && super::exp_approx(200.0).is_finite());
    }
}

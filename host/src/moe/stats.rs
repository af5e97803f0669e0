//! Per-layer routing statistics the plugins see after each step (`layer-stats`).

use super::selection::{Selection, top_k};
use super::spec::LayerStats;

/// Mean entropy (nats) and mean largest-over-second-largest ratio of the rows of
/// `probs` (`T x E`, row-major).
pub fn gate_sharpness(probs: &[f32], experts: usize) -> (f32, f32) {
    let tokens = probs.len() / experts.max(1);
    if tokens == 0 {
        return (0.0, 0.0);
    }
    let mut entropy = 0f64;
    let mut ratio = 0f64;
    let mut best = Vec::with_capacity(2);
    for row in probs.chunks_exact(experts) {
        entropy -= row.iter().filter(|&&p| p > 0.0).map(|&p| (p as f64) * (p as f64).ln()).sum::<f64>();
        if experts > 1 {
            best.clear();
            top_k(row, 2, &mut best);
            let (a, b) = (row[best[0] as usize] as f64, row[best[1] as usize] as f64);
            ratio += if b > 0.0 { a / b } else { f64::MAX.sqrt() };
        } else {
            ratio += 1.0;
        }
    }
    ((entropy / tokens as f64) as f32, (ratio / tokens as f64) as f32)
}

/// The statistics record for one layer and micro-batch; `losses` are the unweighted
/// load-balancing and z-loss values.
pub fn layer_stats(layer: usize, tokens: usize, top_k: usize, selection: &Selection, probs: &[f32], experts: usize, losses: (f32, f32)) -> LayerStats {
    let (load_balance, z_loss) = losses;
    let (gate_entropy, max1_over_max2) = gate_sharpness(probs, experts);
    let assignments = (tokens * top_k).max(1) as f32;
    LayerStats {
        layer: layer as u32,
        tokens: tokens as u32,
        top_k: top_k as u32,
        expert_load: selection.load.clone(),
        dropped: selection.dropped,
        overflow_rate: if top_k == 0 { 0.0 } else { selection.overflow_at_1_25 as f32 / assignments },
        gate_entropy,
        max1_over_max2,
        load_balance_loss: load_balance,
        z_loss,
    }
}

/// Merge the statistics of several micro-batches of one step into one record per layer.
pub fn merge(into: &mut LayerStats, other: &LayerStats) {
    let (a, b) = (into.tokens as f32, other.tokens as f32);
    let w = |x: f32, y: f32| if a + b > 0.0 { (x * a + y * b) / (a + b) } else { 0.0 };
    into.gate_entropy = w(into.gate_entropy, other.gate_entropy);
    into.max1_over_max2 = w(into.max1_over_max2, other.max1_over_max2);
    into.load_balance_loss = w(into.load_balance_loss, other.load_balance_loss);
    into.z_loss = w(into.z_loss, other.z_loss);
    into.overflow_rate = w(into.overflow_rate, other.overflow_rate);
    into.tokens += other.tokens;
    into.dropped += other.dropped;
    for (x, y) in into.expert_load.iter_mut().zip(&other.expert_load) {
        *x += y;
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uniform_rows_have_log_e_entropy_and_ratio_one() {
        let (h, r) = super::gate_sharpness(&[0.25; 8], 4);
        assert!((h - 4f32.ln()).abs() < 1e-6);
        assert!((r - 1.0).abs() < 1e-6);
        let (h, r) = super::gate_sharpness(&[0.5, 0.25, 0.25, 0.0], 4);
        assert!((h - (0.5f32 * 2f32.ln() + 0.5 * 4f32.ln())).abs() < 1e-6);
        assert!((r - 2.0).abs() < 1e-6);
    }
}

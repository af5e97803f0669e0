//! Learning rate per step: linear warm-up, then cosine, linear, constant or
//! warmup-stable-decay down to `min_lr_ratio · lr`.

use super::config::{ScheduleKind, ScheduleSection};

/// Learning rate for optimizer step `step` (0-based) of `total`.
pub fn learning_rate(peak: f64, schedule: &ScheduleSection, step: u64, total: u64) -> f64 {
    let warmup = schedule.warmup_steps;
    if step < warmup {
        return peak * (step + 1) as f64 / warmup as f64;
    }
    let floor = peak * schedule.min_lr_ratio;
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup) as f64 / span).clamp(0.0, 1.0);
    match schedule.kind {
        ScheduleKind::Constant => peak,
        ScheduleKind::Linear => peak - (peak - floor) * progress,
        ScheduleKind::Cosine => floor + (peak - floor) * 0.5 * (1.0 + (std::f64::consts::PI * progress).cos()),
        ScheduleKind::WarmupStableDecay => {
            let stable = 1.0 - schedule.decay_fraction.clamp(0.0, 1.0);
            if progress <= stable { peak } else { peak - (peak - floor) * (progress - stable) / (1.0 - stable) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_to_the_floor() {
        let s = ScheduleSection { kind: ScheduleKind::Cosine, warmup_steps: 10, min_lr_ratio: 0.1, decay_fraction: 0.2 };
        assert!((learning_rate(1.0, &s, 0, 110) - 0.1).abs() < 1e-12);
        assert!((learning_rate(1.0, &s, 9, 110) - 1.0).abs() < 1e-12);
        assert!((learning_rate(1.0, &s, 10, 110) - 1.0).abs() < 1e-12);
        assert!((learning_rate(1.0, &s, 60, 110) - 0.55).abs() < 1e-12);
        assert!((learning_rate(1.0, &s, 110, 110) - 0.1).abs() < 1e-12);
    }

    #[test]
    fn wsd_is_flat_then_decays() {
        let s = ScheduleSection { kind: ScheduleKind::WarmupStableDecay, warmup_steps: 0, min_lr_ratio: 0.0, decay_fraction: 0.5 };
        assert_eq!(learning_rate(2.0, &s, 40, 100), 2.0);
        assert!((learning_rate(2.0, &s, 75, 100) - 1.0).abs() < 1e-12);
    }
}

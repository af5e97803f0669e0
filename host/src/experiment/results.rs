//! The numbers an experiment compares, read from each arm's `metrics.jsonl`: the
//! held-out loss per domain at the end and over tokens, and routing statistics over the
//! last tenth of training (drop rate, gate sharpness Max1/Max2, load imbalance MaxVio).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

/// One training run of one arm and seed.
#[derive(Clone, Debug, Default)]
pub struct RunResult {
    /// Final held-out loss per domain.
    pub final_loss: BTreeMap<String, f64>,
    /// Held-out loss (mean over domains) after the first evaluation past step 0.
    pub early_loss: Option<f64>,
    /// `(tokens, mean held-out loss)` at every evaluation.
    pub curve: Vec<(f64, f64)>,
    /// Training tokens seen.
    pub tokens: u64,
    /// Wall time of the training steps, seconds.
    pub seconds: f64,
    /// Over the last tenth of the steps: dropped / routed assignments.
    pub drop_rate: Option<f64>,
    /// Over the last tenth of the steps: mean Max1/Max2 over MoE layers.
    pub max1_over_max2: Option<f64>,
    /// Over the last tenth of the steps: mean over layers of max load / mean load − 1.
    pub maxvio: Option<f64>,
}

impl RunResult {
    /// Read `run_dir/metrics.jsonl`.
    pub fn read(run_dir: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(run_dir.join("metrics.jsonl"))?;
        let records: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let steps: Vec<&Value> = records.iter().filter(|r| r.get("loss").is_some()).collect();
        let mut out = RunResult::default();
        let mut tokens_at = BTreeMap::new();
        let mut tokens = 0u64;
        for r in &steps {
            tokens += r["tokens"].as_u64().unwrap_or(0);
            out.seconds += r["step_ms"].as_f64().unwrap_or(0.0) / 1e3;
            tokens_at.insert(r["step"].as_u64().unwrap_or(0), tokens);
        }
        out.tokens = tokens;
        for r in records.iter().filter(|r| r.get("eval").is_some()) {
            let Some(losses) = r["eval"].as_object() else { continue };
            let step = r["step"].as_u64().unwrap_or(0);
            let mean = losses.values().filter_map(Value::as_f64).sum::<f64>() / losses.len().max(1) as f64;
            out.curve.push((tokens_at.get(&step).copied().unwrap_or(0) as f64, mean));
            if step > 0 && out.early_loss.is_none() {
                out.early_loss = Some(mean);
            }
            out.final_loss = losses.iter().filter_map(|(d, v)| v.as_f64().map(|v| (d.clone(), v))).collect();
        }
        let tail = &steps[steps.len() - steps.len().div_ceil(10).min(steps.len())..];
        let per_layer = |f: &dyn Fn(&Value) -> Option<f64>| -> Option<f64> {
            let values: Vec<f64> = tail.iter().flat_map(|r| r["layers"].as_array().into_iter().flatten()).filter_map(f).collect();
            (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
        };
        out.drop_rate = per_layer(&|l| {
            let routed = l["tokens"].as_f64()? * l["top_k"].as_f64()?;
            (routed > 0.0).then(|| l["dropped"].as_f64().unwrap_or(0.0) / routed)
        });
        out.max1_over_max2 = per_layer(&|l| l["max1_over_max2"].as_f64());
        out.maxvio = per_layer(&|l| {
            let load: Vec<f64> = l["expert_load"].as_array()?.iter().filter_map(Value::as_f64).collect();
            let mean = load.iter().sum::<f64>() / load.len().max(1) as f64;
            (mean > 0.0).then(|| load.iter().cloned().fold(0.0, f64::max) / mean - 1.0)
        });
        Ok(out)
    }

    /// Mean held-out loss over domains at the end.
    pub fn mean_final(&self) -> f64 {
        self.final_loss.values().sum::<f64>() / self.final_loss.len().max(1) as f64
    }

    /// The value of a criterion's metric: `final_loss`, `final_loss:DOMAIN`,
    /// `early_loss`, `drop_rate`, `max1_over_max2` or `maxvio`.
    pub fn metric(&self, name: &str) -> Option<f64> {
        match name.split_once(':') {
            Some(("final_loss", domain)) => self.final_loss.get(domain).copied(),
            _ => match name {
                "final_loss" => Some(self.mean_final()),
                "early_loss" => self.early_loss,
                "drop_rate" => self.drop_rate,
                "max1_over_max2" => self.max1_over_max2,
                "maxvio" => self.maxvio,
                _ => None,
            },
        }
    }
}

/// Mean and sample standard deviation (0 for one value).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

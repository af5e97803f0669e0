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
    /// Per domain, `(tokens, held-out loss)` at every evaluation.
    pub domain_curves: BTreeMap<String, Vec<(f64, f64)>>,
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
    /// Over the last tenth of the steps: mean over layers of min load / mean load (0 while
    /// an expert is starved, 1 when all are equal).
    pub min_load: Option<f64>,
    /// Held-out loss per domain at the evaluation before the first step.
    pub initial_loss: BTreeMap<String, f64>,
    /// At the last evaluation: per domain, per MoE layer, the mean gate weight of every
    /// expert.
    pub gates: BTreeMap<String, Vec<Vec<f64>>>,
    /// Routing statistics per step, means over MoE layers.
    pub routing_curve: Vec<RoutingPoint>,
    /// The run's folder.
    pub run_dir: std::path::PathBuf,
}

/// One step's routing statistics (means over MoE layers) and the tokens seen by then.
#[derive(Clone, Copy, Debug, Default)]
pub struct RoutingPoint {
    pub tokens: f64,
    pub drop_rate: Option<f64>,
    pub max1_over_max2: Option<f64>,
    pub maxvio: Option<f64>,
    pub min_load: Option<f64>,
}

/// Drop rate, Max1/Max2 and MaxVio of one step's record, means over its MoE layers.
fn routing_of(record: &Value, tokens: f64) -> RoutingPoint {
    let layers: Vec<&Value> = record["layers"].as_array().map(|l| l.iter().collect()).unwrap_or_default();
    let mean = |f: &dyn Fn(&Value) -> Option<f64>| -> Option<f64> {
        let values: Vec<f64> = layers.iter().filter_map(|l| f(l)).collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    let drop = mean(&|l| {
        let routed = l["tokens"].as_f64()? * l["top_k"].as_f64()?;
        (routed > 0.0).then(|| l["dropped"].as_f64().unwrap_or(0.0) / routed)
    });
    let sharpness = mean(&|l| l["max1_over_max2"].as_f64());
    let maxvio = mean(&|l| {
        let load: Vec<f64> = l["expert_load"].as_array()?.iter().filter_map(Value::as_f64).collect();
        let mean = load.iter().sum::<f64>() / load.len().max(1) as f64;
        (mean > 0.0).then(|| load.iter().cloned().fold(0.0, f64::max) / mean - 1.0)
    });
    let min_load = mean(&|l| {
        let load: Vec<f64> = l["expert_load"].as_array()?.iter().filter_map(Value::as_f64).collect();
        let mean = load.iter().sum::<f64>() / load.len().max(1) as f64;
        (mean > 0.0).then(|| load.iter().cloned().fold(f64::INFINITY, f64::min) / mean)
    });
    RoutingPoint { tokens, drop_rate: drop, max1_over_max2: sharpness, maxvio, min_load }
}

impl RunResult {
    /// Read `run_dir/metrics.jsonl`.
    pub fn read(run_dir: &Path) -> std::io::Result<Self> {
        let text = std::fs::read_to_string(run_dir.join("metrics.jsonl"))?;
        let records: Vec<Value> = text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
        let steps: Vec<&Value> = records.iter().filter(|r| r.get("loss").is_some()).collect();
        let mut out = RunResult { run_dir: run_dir.to_path_buf(), ..RunResult::default() };
        let mut tokens_at = BTreeMap::new();
        let mut tokens = 0u64;
        for r in &steps {
            tokens += r["tokens"].as_u64().unwrap_or(0);
            out.seconds += r["step_ms"].as_f64().unwrap_or(0.0) / 1e3;
            tokens_at.insert(r["step"].as_u64().unwrap_or(0), tokens);
            let point = routing_of(r, tokens as f64);
            if point.drop_rate.is_some() || point.max1_over_max2.is_some() || point.maxvio.is_some() {
                out.routing_curve.push(point);
            }
        }
        out.tokens = tokens;
        for r in records.iter().filter(|r| r.get("eval").is_some()) {
            let Some(losses) = r["eval"].as_object() else {
                continue;
            };
            let step = r["step"].as_u64().unwrap_or(0);
            let mean = losses.values().filter_map(Value::as_f64).sum::<f64>() / losses.len().max(1) as f64;
            let at = tokens_at.get(&step).copied().unwrap_or(0) as f64;
            out.curve.push((at, mean));
            for (domain, loss) in losses.iter().filter_map(|(d, v)| v.as_f64().map(|v| (d, v))) {
                out.domain_curves.entry(domain.clone()).or_default().push((at, loss));
            }
            out.final_loss = losses.iter().filter_map(|(d, v)| v.as_f64().map(|v| (d.clone(), v))).collect();
            if step == 0 {
                out.initial_loss = out.final_loss.clone();
            } else if out.early_loss.is_none() {
                out.early_loss = Some(mean);
            }
        }
        if let Some(gates) = records.iter().rev().find(|r| r.get("eval").is_some()).and_then(|r| r["eval_gates"].as_object()) {
            out.gates = gates.iter().filter_map(|(d, v)| serde_json::from_value::<Vec<Vec<f64>>>(v.clone()).ok().map(|m| (d.clone(), m))).collect();
        }
        let curve = &out.routing_curve;
        let tail = &curve[curve.len() - curve.len().div_ceil(10)..];
        let tail_mean = |pick: fn(&RoutingPoint) -> Option<f64>| -> Option<f64> {
            let values: Vec<f64> = tail.iter().filter_map(pick).collect();
            (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
        };
        out.drop_rate = tail_mean(|r| r.drop_rate);
        out.max1_over_max2 = tail_mean(|r| r.max1_over_max2);
        out.maxvio = tail_mean(|r| r.maxvio);
        out.min_load = tail_mean(|r| r.min_load);
        Ok(out)
    }

    /// Mean held-out loss over domains at the end.
    pub fn mean_final(&self) -> f64 {
        self.final_loss.values().sum::<f64>() / self.final_loss.len().max(1) as f64
    }

    /// Mean held-out loss over domains before the first step.
    pub fn mean_initial(&self) -> Option<f64> {
        (!self.initial_loss.is_empty()).then(|| self.initial_loss.values().sum::<f64>() / self.initial_loss.len() as f64)
    }
}

/// Mean and sample standard deviation (0 for one value).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len().max(1) as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

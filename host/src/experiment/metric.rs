//! The metrics a criterion can name, `NAME[:DOMAIN][@STEP]`, and their value for one
//! arm and seed: losses at the start, early on and at the end of a step, routing
//! statistics, how fast a step gets back to a reference loss, and whether gates favour
//! each domain's own expert.

use std::collections::BTreeMap;

use super::results::RunResult;

/// Every training step's results for one arm and seed, by step name.
pub type StepResults = BTreeMap<String, RunResult>;

/// A parsed metric reference.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricRef {
    /// `final_loss`, `initial_loss`, `early_loss`, `drop_rate`, `max1_over_max2`,
    /// `maxvio`, `min_load`, `recovery`, `gate_own` or `gate_peak`.
    pub name: String,
    /// For the losses: one domain instead of the mean over domains.
    pub domain: Option<String>,
    /// The step it is read from; the experiment's `evaluate` step when absent.
    pub step: Option<String>,
}

/// The metric names a criterion may use.
pub const NAMES: [&str; 10] = ["final_loss", "initial_loss", "early_loss", "drop_rate", "max1_over_max2", "maxvio", "min_load", "recovery", "gate_own", "gate_peak"];

/// What some metrics need beyond one run: the loss `recovery` counts tokens up to,
/// and the expert each domain should favour for `gate_own` / `gate_peak`.
#[derive(Clone, Debug)]
pub struct MetricContext<'a> {
    pub reference: Option<&'a MetricRef>,
    pub own_expert: &'a BTreeMap<String, usize>,
}

impl MetricRef {
    /// Parse `NAME[:DOMAIN][@STEP]`, refusing unknown names.
    pub fn parse(text: &str) -> Result<Self, String> {
        let (head, step) = match text.split_once('@') {
            Some((h, s)) => (h, Some(s.to_string())),
            None => (text, None),
        };
        let (name, domain) = match head.split_once(':') {
            Some((n, d)) => (n, Some(d.to_string())),
            None => (head, None),
        };
        if !NAMES.contains(&name) {
            return Err(format!("unknown metric {name:?} in {text:?}; known: {}", NAMES.join(", ")));
        }
        if domain.is_some() && !name.ends_with("_loss") {
            return Err(format!("{text:?}: only the losses take a :DOMAIN"));
        }
        Ok(MetricRef { name: name.into(), domain, step: step.filter(|s| !s.is_empty()) })
    }

    /// Where in the run the metric is read, for the verdict table: a verdict read in
    /// another window may differ.
    pub fn window(&self) -> &'static str {
        match self.name.as_str() {
            "final_loss" => "held-out loss at the step's last evaluation",
            "initial_loss" => "held-out loss before the step's first update",
            "early_loss" => "held-out loss at the step's first evaluation after step 0",
            "drop_rate" | "max1_over_max2" | "maxvio" | "min_load" => "mean over the last 10 % of the step's training steps and its MoE layers",
            "recovery" => "tokens until the held-out loss is back at the reference, after its highest point",
            "gate_own" | "gate_peak" => "mean gates on each domain's held-out text at the last evaluation",
            _ => "",
        }
    }

    /// The step this metric reads.
    pub fn step_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.step.as_deref().unwrap_or(default)
    }

    /// The value for one arm and seed; `None` when the run lacks it (for instance
    /// routing statistics of a dense step). `recovery` is the step's tokens until its
    /// held-out loss is back at the reference after its highest point (the
    /// post-surgery bump), as a fraction of the reference
    /// step's tokens; infinite when it never is. `gate_own` is the mean gate weight on
    /// each domain's own expert; `gate_peak` the share of domains whose mean gate
    /// (over layers) is highest on their own expert.
    pub fn value(&self, runs: &StepResults, default_step: &str, context: &MetricContext<'_>) -> Option<f64> {
        let run = runs.get(self.step_or(default_step))?;
        let loss = |per_domain: &BTreeMap<String, f64>, mean: Option<f64>| match &self.domain {
            Some(d) => per_domain.get(d).copied(),
            None => mean,
        };
        match self.name.as_str() {
            "final_loss" => loss(&run.final_loss, (!run.final_loss.is_empty()).then(|| run.mean_final())),
            "initial_loss" => loss(&run.initial_loss, run.mean_initial()),
            "early_loss" => run.early_loss,
            "drop_rate" => run.drop_rate,
            "max1_over_max2" => run.max1_over_max2,
            "maxvio" => run.maxvio,
            "min_load" => run.min_load,
            "recovery" => {
                let reference = context.reference?;
                let target = reference.value(runs, default_step, &MetricContext { reference: None, own_expert: context.own_expert })?;
                let budget = runs.get(reference.step_or(default_step))?.tokens as f64;
                // Back after the bump: the first evaluation at or below the target
                // from the curve's highest point on (the post-surgery peak; the start
                // when there is no bump).
                let peak = run.curve.iter().enumerate().fold(0, |best, (i, p)| if p.1 > run.curve[best].1 { i } else { best });
                let reached = run.curve.get(peak..).into_iter().flatten().find(|(_, loss)| *loss <= target).map(|(tokens, _)| *tokens);
                Some(reached.map_or(f64::INFINITY, |t| t / budget.max(1.0)))
            }
            "gate_own" | "gate_peak" => {
                let mut values = Vec::new();
                for (domain, &expert) in context.own_expert {
                    let layers = run.gates.get(domain)?;
                    let experts = layers.first()?.len();
                    let mean: Vec<f64> = (0..experts).map(|e| layers.iter().filter_map(|l| l.get(e)).sum::<f64>() / layers.len() as f64).collect();
                    let own = *mean.get(expert)?;
                    values.push(if self.name == "gate_own" { own } else { f64::from(u8::from(mean.iter().all(|&g| g <= own))) });
                }
                (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
            }
            _ => None,
        }
    }
}

impl std::fmt::Display for MetricRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)?;
        if let Some(d) = &self.domain {
            write!(f, ":{d}")?;
        }
        if let Some(s) = &self.step {
            write!(f, "@{s}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(curve: &[(f64, f64)], tokens: u64) -> RunResult {
        let last = curve.last().map(|p| p.1).unwrap_or_default();
        RunResult { curve: curve.to_vec(), tokens, final_loss: [("a".to_string(), last)].into(), ..Default::default() }
    }

    #[test]
    fn parses_names_domains_and_steps() {
        assert_eq!(MetricRef::parse("final_loss:code@dense").unwrap(), MetricRef { name: "final_loss".into(), domain: Some("code".into()), step: Some("dense".into()) });
        assert!(MetricRef::parse("loss").is_err());
        assert!(MetricRef::parse("maxvio:code").is_err());
        assert_eq!(MetricRef::parse("initial_loss@x").unwrap().to_string(), "initial_loss@x");
    }

    #[test]
    fn recovery_is_the_fraction_of_the_reference_budget() {
        let runs: StepResults = [("dense".to_string(), run(&[(0.0, 3.0), (1000.0, 2.0)], 1000)), ("moe".to_string(), run(&[(0.0, 1.9), (50.0, 2.2), (100.0, 1.9), (200.0, 1.5)], 200))].into();
        let reference = MetricRef::parse("final_loss@dense").unwrap();
        let own = BTreeMap::new();
        let context = MetricContext { reference: Some(&reference), own_expert: &own };
        let recovery = MetricRef::parse("recovery").unwrap().value(&runs, "moe", &context).unwrap();
        assert!((recovery - 0.1).abs() < 1e-12);
        let never = MetricRef::parse("recovery@dense").unwrap();
        let lower = MetricRef::parse("final_loss@moe").unwrap();
        assert_eq!(never.value(&runs, "moe", &MetricContext { reference: Some(&lower), own_expert: &own }), Some(f64::INFINITY));
    }

    #[test]
    fn gates_count_domains_whose_own_expert_leads() {
        let mut r = RunResult::default();
        r.gates.insert("a".into(), vec![vec![0.6, 0.4], vec![0.3, 0.7]]);
        r.gates.insert("b".into(), vec![vec![0.2, 0.8], vec![0.1, 0.9]]);
        let runs: StepResults = [("s".to_string(), r)].into();
        let own: BTreeMap<String, usize> = [("a".to_string(), 0), ("b".to_string(), 1)].into();
        let context = MetricContext { reference: None, own_expert: &own };
        // a: mean gates (0.45, 0.55) peak on expert 1, not its own; b peaks on its own.
        assert!((MetricRef::parse("gate_peak").unwrap().value(&runs, "s", &context).unwrap() - 0.5).abs() < 1e-12);
        assert!((MetricRef::parse("gate_own").unwrap().value(&runs, "s", &context).unwrap() - (0.45 + 0.85) / 2.0).abs() < 1e-12);
    }
}

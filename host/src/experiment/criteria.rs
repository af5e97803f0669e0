//! Pass criteria, evaluated from the numbers: an arm has the lowest (or highest) value
//! of a metric among others, one arm's value is below another's, a metric rises along a
//! list of arms, or every arm's value lies under, over or within a bound. Each verdict
//! says "holds" or "does not hold" with the figures.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::metric::{MetricContext, MetricRef, StepResults};
use super::results::mean_std;

/// One criterion. Exactly one of `lowest`, `highest`, `below`, `increasing`,
/// `at_most`, `at_least`, `within` is given.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Criterion {
    /// What it says, in words.
    pub says: String,
    /// `NAME[:DOMAIN][@STEP]` (see [`MetricRef`]).
    pub metric: String,
    /// Subtracted from the metric, per arm and seed (`NAME[:DOMAIN][@STEP]`): turns a
    /// loss into a rise or a gap between steps.
    pub minus: Option<String>,
    /// For `recovery`: the loss to get back to (`NAME[:DOMAIN]@STEP`); its step's
    /// tokens are the budget recovery is a fraction of.
    pub reference: Option<String>,
    /// For `gate_own` / `gate_peak`: the expert index each domain should favour.
    #[serde(default)]
    pub own_expert: BTreeMap<String, usize>,
    /// This arm's value is the lowest among `among` (default: all arms).
    pub lowest: Option<String>,
    /// This arm's value is the highest among `among`.
    pub highest: Option<String>,
    /// The arms `lowest`, `highest`, `at_most`, `at_least` and `within` look at.
    #[serde(default)]
    pub among: Vec<String>,
    /// `[a, b]`: a's value is below b's by more than `margin` (a negative margin lets a
    /// be up to that much above b: "comparable or better").
    pub below: Option<[String; 2]>,
    /// The value rises along these arms.
    pub increasing: Option<Vec<String>>,
    /// Every arm's value is at most this.
    pub at_most: Option<f64>,
    /// Every arm's value is at least this.
    pub at_least: Option<f64>,
    /// Every arm's value is within ± this of 0.
    pub within: Option<f64>,
    /// Required gap for `below` and `lowest`/`highest` (absolute, default 0).
    #[serde(default)]
    pub margin: f64,
}

/// A criterion's outcome.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub says: String,
    pub holds: bool,
    /// The figures it was decided on.
    pub figures: String,
}

impl Criterion {
    /// Refuse a criterion naming an arm the experiment does not have, an unknown
    /// metric, or not exactly one kind of test.
    pub fn check(&self, arms: &[&str]) -> Result<(), String> {
        let named = self.lowest.iter().chain(&self.highest).chain(&self.among).chain(self.below.iter().flatten()).chain(self.increasing.iter().flatten());
        for arm in named {
            if !arms.contains(&arm.as_str()) {
                return Err(format!("criterion {:?} names arm {arm:?}, which is not among {}", self.says, arms.join(", ")));
            }
        }
        let kinds = [self.lowest.is_some(), self.highest.is_some(), self.below.is_some(), self.increasing.is_some(), self.at_most.is_some(), self.at_least.is_some(), self.within.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(format!("criterion {:?} needs exactly one of `lowest`, `highest`, `below`, `increasing`, `at_most`, `at_least`, `within`", self.says));
        }
        let metric = MetricRef::parse(&self.metric).map_err(|e| format!("criterion {:?}: {e}", self.says))?;
        for other in self.minus.iter().chain(&self.reference) {
            MetricRef::parse(other).map_err(|e| format!("criterion {:?}: {e}", self.says))?;
        }
        if (metric.name == "recovery") != self.reference.is_some() {
            return Err(format!("criterion {:?}: `reference` goes with the metric `recovery`, and `recovery` needs one", self.says));
        }
        if metric.name.starts_with("gate_") && self.own_expert.is_empty() {
            return Err(format!("criterion {:?}: {} needs `own_expert` (domain = expert index)", self.says, metric.name));
        }
        Ok(())
    }

    /// This criterion's value for one arm and seed.
    pub fn value(&self, runs: &StepResults, default_step: &str) -> Option<f64> {
        let parse = |text: &str| MetricRef::parse(text).ok();
        let metric = parse(&self.metric)?;
        let reference = self.reference.as_deref().and_then(parse);
        let context = MetricContext { reference: reference.as_ref(), own_expert: &self.own_expert };
        let value = metric.value(runs, default_step, &context)?;
        match self.minus.as_deref().and_then(parse) {
            Some(minus) => Some(value - minus.value(runs, default_step, &context)?),
            None => Some(value),
        }
    }

    /// Decide from `runs` (arm → one [`StepResults`] per seed); values are means over
    /// seeds, arms in display order.
    pub fn evaluate(&self, runs: &BTreeMap<String, Vec<&StepResults>>, order: &[String], default_step: &str) -> Verdict {
        let values: BTreeMap<&str, f64> = runs
            .iter()
            .map(|(arm, seeds)| {
                let per_seed: Vec<f64> = seeds.iter().filter_map(|r| self.value(r, default_step)).collect();
                (arm.as_str(), if per_seed.len() == seeds.len() && !per_seed.is_empty() { mean_std(&per_seed).0 } else { f64::NAN })
            })
            .collect();
        let v = |arm: &str| values.get(arm).copied().unwrap_or(f64::NAN);
        let show = |arms: &[String]| arms.iter().map(|a| format!("{a} {}", figure(v(a)))).collect::<Vec<_>>().join(", ");
        let among: Vec<String> = if self.among.is_empty() { order.to_vec() } else { self.among.clone() };
        let (holds, arms) = if let Some(arm) = self.lowest.as_ref().or(self.highest.as_ref()) {
            let lowest = self.lowest.is_some();
            let others: Vec<&String> = among.iter().filter(|a| *a != arm).collect();
            let holds = others.iter().all(|o| if lowest { v(arm) + self.margin < v(o) } else { v(arm) > v(o) + self.margin });
            let mut arms = vec![arm.clone()];
            arms.extend(others.into_iter().cloned());
            (holds, arms)
        } else if let Some([a, b]) = &self.below {
            (v(a) + self.margin < v(b), vec![a.clone(), b.clone()])
        } else if let Some(arms) = &self.increasing {
            (arms.windows(2).all(|w| v(&w[0]) < v(&w[1])), arms.clone())
        } else {
            let test = |x: f64| match (self.at_most, self.at_least, self.within) {
                (Some(m), _, _) => x <= m,
                (_, Some(m), _) => x >= m,
                (_, _, Some(m)) => x.abs() <= m,
                _ => false,
            };
            (among.iter().all(|a| test(v(a))), among.clone())
        };
        let mut name = self.metric.clone();
        if let Some(m) = &self.minus {
            name = format!("{name} − {m}");
        }
        if let Some(r) = &self.reference {
            name = format!("{name} (to {r})");
        }
        let bound = match (self.at_most, self.at_least, self.within) {
            (Some(m), _, _) => format!("; bound ≤ {m}"),
            (_, Some(m), _) => format!("; bound ≥ {m}"),
            (_, _, Some(m)) => format!("; bound ±{m}"),
            _ if self.margin != 0.0 => format!("; margin {}", figure(self.margin)),
            _ => String::new(),
        };
        Verdict { says: self.says.clone(), holds, figures: format!("{name}: {}{bound}", show(&arms)) }
    }
}

/// A value as the verdicts print it.
pub fn figure(x: f64) -> String {
    if x.is_infinite() {
        "never".into()
    } else if x.is_nan() {
        "n/a".into()
    } else if x != 0.0 && x.abs() < 1e-3 {
        format!("{x:.2e}")
    } else {
        format!("{x:.4}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::results::RunResult;

    fn runs(values: &[(&str, f64)]) -> BTreeMap<String, StepResults> {
        values
            .iter()
            .map(|(arm, v)| {
                (arm.to_string(), [("s".to_string(), RunResult { final_loss: [("d".to_string(), *v)].into(), initial_loss: [("d".to_string(), 1.0)].into(), ..Default::default() })].into())
            })
            .collect()
    }

    #[test]
    fn verdicts_follow_the_numbers() {
        let data = runs(&[("a", 1.0), ("b", 2.0), ("c", 3.0)]);
        let by_arm: BTreeMap<String, Vec<&StepResults>> = data.iter().map(|(k, v)| (k.clone(), vec![v])).collect();
        let order: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let c = |text: &str| -> Criterion {
            let c: Criterion = toml::from_str(&format!("says = \"x\"\nmetric = \"final_loss\"\n{text}")).unwrap();
            c.check(&["a", "b", "c"]).unwrap();
            c
        };
        let holds = |text: &str| c(text).evaluate(&by_arm, &order, "s").holds;
        assert!(holds("lowest = \"a\""));
        assert!(!holds("lowest = \"b\""));
        assert!(holds("highest = \"c\""));
        assert!(holds("below = [\"a\", \"b\"]"));
        assert!(!holds("below = [\"a\", \"b\"]\nmargin = 1.5"));
        assert!(holds("below = [\"b\", \"a\"]\nmargin = -1.5"));
        assert!(holds("increasing = [\"a\", \"b\", \"c\"]"));
        assert!(!holds("increasing = [\"c\", \"a\"]"));
        assert!(holds("at_most = 3.0"));
        assert!(!holds("at_most = 2.5"));
        assert!(holds("at_least = 2.0\namong = [\"b\", \"c\"]"));
        assert!(holds("within = 0.5\nminus = \"initial_loss\"\namong = [\"a\"]"));
        assert!(!holds("within = 0.5\nminus = \"initial_loss\""));
        let bad: Criterion = toml::from_str("says = \"x\"\nmetric = \"final_loss\"\nlowest = \"a\"\nbelow = [\"a\", \"b\"]").unwrap();
        assert!(bad.check(&["a", "b"]).is_err());
        let recovery: Criterion = toml::from_str("says = \"x\"\nmetric = \"recovery\"\nat_most = 0.1").unwrap();
        assert!(recovery.check(&["a"]).is_err(), "recovery without a reference");
    }
}

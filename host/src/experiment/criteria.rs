//! Pass criteria, evaluated from the numbers: an arm has the lowest (or highest) value
//! of a metric among others, one arm's value is below another's, a metric rises along a
//! list of arms, or every arm's value lies under, over or within a bound. Comparisons
//! are paired by seed: a verdict **holds** when the effect exceeds two standard errors
//! of the paired differences, **does not hold** when the opposite effect does, and is
//! **inconclusive** otherwise (within the seeds' noise, or one seed: no noise estimate).

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

/// What the numbers say about a criterion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The effect exceeds two standard errors of its paired differences.
    Holds,
    /// The opposite effect does.
    DoesNotHold,
    /// Neither: the effect is within the seeds' noise (or there is one seed).
    Inconclusive,
}

impl Outcome {
    /// How results and the terminal say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Holds => "holds",
            Outcome::DoesNotHold => "does not hold",
            Outcome::Inconclusive => "inconclusive",
        }
    }

    /// Every part holds → holds; any part does not → does not; else inconclusive.
    fn all(parts: impl IntoIterator<Item = Outcome>) -> Outcome {
        let mut all_hold = true;
        for part in parts {
            match part {
                Outcome::DoesNotHold => return Outcome::DoesNotHold,
                Outcome::Inconclusive => all_hold = false,
                Outcome::Holds => {}
            }
        }
        if all_hold { Outcome::Holds } else { Outcome::Inconclusive }
    }
}

/// The test of one claimed effect: per seed `d = effect`, positive when the claim is
/// true; holds when `mean(d) > 2 · sd(d) / √n`, does not hold when `mean(d) < −2 · se`.
pub fn paired_test(effects: &[f64]) -> (Outcome, f64, f64) {
    paired_test_with_ties(effects, false)
}

/// [`paired_test`] for a claim that a tie satisfies (a bound: `≥`, `≤`, within): when
/// every seed meets it exactly or better with no spread at all (a value pinned at the
/// bound, such as a gate that peaks on its own expert for every domain), it holds.
pub fn paired_test_with_ties(effects: &[f64], ties_hold: bool) -> (Outcome, f64, f64) {
    if ties_hold && effects.len() >= 2 && effects.iter().all(|&d| d >= 0.0) && effects.windows(2).all(|w| w[0] == w[1]) {
        return (Outcome::Holds, effects[0], 0.0);
    }
    paired_test_strict(effects)
}

fn paired_test_strict(effects: &[f64]) -> (Outcome, f64, f64) {
    let n = effects.len();
    if n == 0 || effects.iter().any(|d| d.is_nan()) {
        return (Outcome::Inconclusive, f64::NAN, f64::NAN);
    }
    let (mean, sd) = mean_std(effects);
    if n < 2 {
        return (Outcome::Inconclusive, mean, f64::NAN);
    }
    let se = sd / (n as f64).sqrt();
    let outcome = if mean > 2.0 * se {
        Outcome::Holds
    } else if mean < -2.0 * se {
        Outcome::DoesNotHold
    } else {
        Outcome::Inconclusive
    };
    (outcome, mean, se)
}

/// A criterion's outcome.
#[derive(Clone, Debug)]
pub struct Verdict {
    pub says: String,
    pub outcome: Outcome,
    /// The figures it was decided on: each arm's mean ± standard deviation over seeds
    /// and the paired effect ± its standard error.
    pub figures: String,
    /// Where in the runs the metric is read (e.g. "mean over the last 10 % of steps").
    pub window: String,
}

impl Verdict {
    /// Whether the criterion holds (beyond the seeds' noise).
    pub fn holds(&self) -> bool {
        self.outcome == Outcome::Holds
    }
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

    /// Decide from `runs` (arm → one [`StepResults`] per seed, in the same seed order
    /// for every arm), comparisons paired by seed, arms in display order.
    pub fn evaluate(&self, runs: &BTreeMap<String, Vec<&StepResults>>, order: &[String], default_step: &str) -> Verdict {
        let per_seed: BTreeMap<&str, Vec<f64>> = runs.iter().map(|(arm, seeds)| (arm.as_str(), seeds.iter().map(|r| self.value(r, default_step).unwrap_or(f64::NAN)).collect())).collect();
        let seeds = |arm: &str| per_seed.get(arm).cloned().unwrap_or_default();
        let summary = |arm: &str| {
            let values = seeds(arm);
            if values.is_empty() || values.iter().any(|v| v.is_nan()) {
                return format!("{arm} n/a");
            }
            let (mean, sd) = mean_std(&values);
            if values.len() > 1 { format!("{arm} {} ± {}", figure(mean), figure(sd)) } else { format!("{arm} {}", figure(mean)) }
        };
        // "a + margin < b", per seed: b − a − margin.
        let below = |a: &str, b: &str, margin: f64| -> Vec<f64> { seeds(a).iter().zip(seeds(b)).map(|(x, y)| y - x - margin).collect() };
        let among: Vec<String> = if self.among.is_empty() { order.to_vec() } else { self.among.clone() };
        let mut tests: Vec<(String, Vec<f64>)> = Vec::new();
        let arms: Vec<String> = if let Some(arm) = self.lowest.as_ref().or(self.highest.as_ref()) {
            let others: Vec<String> = among.iter().filter(|a| *a != arm).cloned().collect();
            for o in &others {
                let effect = if self.lowest.is_some() { below(arm, o, self.margin) } else { below(o, arm, self.margin) };
                tests.push((format!("{arm} vs {o}"), effect));
            }
            std::iter::once(arm.clone()).chain(others).collect()
        } else if let Some([a, b]) = &self.below {
            tests.push((format!("{b} − {a}"), below(a, b, self.margin)));
            vec![a.clone(), b.clone()]
        } else if let Some(arms) = &self.increasing {
            for w in arms.windows(2) {
                tests.push((format!("{} − {}", w[1], w[0]), below(&w[0], &w[1], 0.0)));
            }
            arms.clone()
        } else {
            for a in &among {
                let x = seeds(a);
                match (self.at_most, self.at_least, self.within) {
                    (Some(m), _, _) => tests.push((format!("{m} − {a}"), x.iter().map(|v| m - v).collect())),
                    (_, Some(m), _) => tests.push((format!("{a} − {m}"), x.iter().map(|v| v - m).collect())),
                    (_, _, Some(m)) => {
                        tests.push((format!("{m} − {a}"), x.iter().map(|v| m - v).collect()));
                        tests.push((format!("{a} + {m}"), x.iter().map(|v| v + m).collect()));
                    }
                    _ => {}
                }
            }
            among.clone()
        };
        let bound = self.at_most.is_some() || self.at_least.is_some() || self.within.is_some();
        let results: Vec<(String, (Outcome, f64, f64))> = tests
            .iter()
            .map(|(label, d)| (label.clone(), paired_test_with_ties(d, bound && self.lowest.is_none() && self.highest.is_none() && self.below.is_none() && self.increasing.is_none())))
            .collect();
        let outcome = Outcome::all(results.iter().map(|(_, r)| r.0));
        let n = per_seed.values().map(Vec::len).min().unwrap_or(0);
        let effects: Vec<String> =
            results.iter().map(|(label, (_, mean, se))| if se.is_nan() { format!("{label} = {}", figure(*mean)) } else { format!("{label} = {} ± {}", figure(*mean), figure(*se)) }).collect();
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
        let arms_shown = arms.iter().map(|a| summary(a)).collect::<Vec<_>>().join(", ");
        let seeds_note = if n < 2 { "one seed: no noise estimate".to_string() } else { format!("{n} seeds, effect ± standard error") };
        let window = MetricRef::parse(&self.metric).map(|m| m.window().to_string()).unwrap_or_default();
        Verdict { says: self.says.clone(), outcome, figures: format!("{name}: {arms_shown}{bound}; paired by seed: {} ({seeds_note})", effects.join(", ")), window }
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

    /// One arm's results over seeds: `final_loss` per seed.
    fn arm(values: &[f64]) -> Vec<StepResults> {
        values.iter().map(|v| [("s".to_string(), RunResult { final_loss: [("d".to_string(), *v)].into(), initial_loss: [("d".to_string(), 1.0)].into(), ..Default::default() })].into()).collect()
    }

    fn criterion(text: &str, arms: &[&str]) -> Criterion {
        let c: Criterion = toml::from_str(&format!("says = \"x\"\nmetric = \"final_loss\"\n{text}")).unwrap();
        c.check(arms).unwrap();
        c
    }

    fn outcome(data: &BTreeMap<String, Vec<StepResults>>, text: &str) -> Outcome {
        let by_arm: BTreeMap<String, Vec<&StepResults>> = data.iter().map(|(k, v)| (k.clone(), v.iter().collect())).collect();
        let order: Vec<String> = data.keys().cloned().collect();
        let names: Vec<&str> = order.iter().map(String::as_str).collect();
        criterion(text, &names).evaluate(&by_arm, &order, "s").outcome
    }

    /// Three seeds whose paired differences have standard error `se` around `effect`.
    fn pair(effect: f64, se: f64) -> BTreeMap<String, Vec<StepResults>> {
        // Differences effect + {−s, 0, +s} have sd s and standard error s/√3.
        let s = se * 3f64.sqrt();
        let base = [2.0, 2.5, 1.7];
        let b: Vec<f64> = base.iter().zip([-s, 0.0, s]).map(|(x, e)| x + effect + e).collect();
        [("a".to_string(), arm(&base)), ("b".to_string(), arm(&b))].into()
    }

    /// A claimed effect of 5 standard errors holds, 0.5 is inconclusive, −5 does not
    /// hold; one seed is never enough to decide.
    #[test]
    fn verdicts_weigh_the_effect_against_the_seeds_noise() {
        assert_eq!(outcome(&pair(0.05, 0.01), "below = [\"a\", \"b\"]"), Outcome::Holds);
        assert_eq!(outcome(&pair(0.005, 0.01), "below = [\"a\", \"b\"]"), Outcome::Inconclusive);
        assert_eq!(outcome(&pair(-0.05, 0.01), "below = [\"a\", \"b\"]"), Outcome::DoesNotHold);
        let one: BTreeMap<String, Vec<StepResults>> = [("a".to_string(), arm(&[1.0])), ("b".to_string(), arm(&[2.0]))].into();
        assert_eq!(outcome(&one, "below = [\"a\", \"b\"]"), Outcome::Inconclusive);
        assert_eq!(paired_test_with_ties(&[0.0, 0.0, 0.0], true).0, Outcome::Holds, "a bound met exactly by every seed");
        assert_eq!(paired_test_with_ties(&[0.0, 0.0, 0.0], false).0, Outcome::Inconclusive, "a strict comparison of equal arms");
        assert_eq!(paired_test_with_ties(&[0.0, -0.01, 0.0], true).0, Outcome::Inconclusive);
        let (o, mean, se) = paired_test(&[0.04, 0.05, 0.06]);
        assert_eq!(o, Outcome::Holds);
        assert!((mean - 0.05).abs() < 1e-12 && (se - 0.01 / 3f64.sqrt()).abs() < 1e-12);
    }

    #[test]
    fn every_kind_of_criterion_is_tested_on_paired_seeds() {
        // a < b < c on every seed, with a little noise.
        let data: BTreeMap<String, Vec<StepResults>> = [("a", [1.0, 1.1, 0.9]), ("b", [2.0, 2.05, 1.9]), ("c", [3.0, 3.1, 2.95])].into_iter().map(|(k, v)| (k.to_string(), arm(&v))).collect();
        let o = |text: &str| outcome(&data, text);
        assert_eq!(o("lowest = \"a\""), Outcome::Holds);
        assert_eq!(o("lowest = \"b\""), Outcome::DoesNotHold);
        assert_eq!(o("highest = \"c\""), Outcome::Holds);
        assert_eq!(o("below = [\"a\", \"b\"]\nmargin = 1.5"), Outcome::DoesNotHold);
        assert_eq!(o("below = [\"b\", \"a\"]\nmargin = -1.5"), Outcome::Holds);
        assert_eq!(o("increasing = [\"a\", \"b\", \"c\"]"), Outcome::Holds);
        assert_eq!(o("increasing = [\"c\", \"a\"]"), Outcome::DoesNotHold);
        assert_eq!(o("at_most = 3.5"), Outcome::Holds);
        assert_eq!(o("at_most = 2.5"), Outcome::DoesNotHold);
        assert_eq!(o("at_least = 1.5\namong = [\"b\", \"c\"]"), Outcome::Holds);
        assert_eq!(o("within = 0.5\nminus = \"initial_loss\"\namong = [\"a\"]"), Outcome::Holds);
        assert_eq!(o("within = 0.5\nminus = \"initial_loss\""), Outcome::DoesNotHold);
        let bad: Criterion = toml::from_str("says = \"x\"\nmetric = \"final_loss\"\nlowest = \"a\"\nbelow = [\"a\", \"b\"]").unwrap();
        assert!(bad.check(&["a", "b"]).is_err());
        let recovery: Criterion = toml::from_str("says = \"x\"\nmetric = \"recovery\"\nat_most = 0.1").unwrap();
        assert!(recovery.check(&["a"]).is_err(), "recovery without a reference");
    }
}

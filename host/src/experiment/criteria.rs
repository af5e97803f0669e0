//! Pass criteria, evaluated from the numbers: an arm has the lowest (or highest) value
//! of a metric among others, one arm's value is below another's, or a metric rises
//! along a list of arms. Each verdict says "holds" or "does not hold" with the figures.

use std::collections::BTreeMap;

use serde::Deserialize;

/// One criterion. Exactly one of `lowest`, `highest`, `below`, `increasing` is given.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Criterion {
    /// What it says, in words.
    pub says: String,
    /// `final_loss`, `final_loss:DOMAIN`, `early_loss`, `drop_rate`, `max1_over_max2`, `maxvio`.
    pub metric: String,
    /// This arm's value is the lowest among `among` (default: all arms).
    pub lowest: Option<String>,
    /// This arm's value is the highest among `among`.
    pub highest: Option<String>,
    #[serde(default)]
    pub among: Vec<String>,
    /// `[a, b]`: a's value is below b's (by more than `margin`).
    pub below: Option<[String; 2]>,
    /// The value rises along these arms.
    pub increasing: Option<Vec<String>>,
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
    /// Refuse a criterion naming an arm the experiment does not have.
    pub fn check_arms(&self, arms: &[&str]) -> Result<(), String> {
        let named = self.lowest.iter().chain(&self.highest).chain(&self.among).chain(self.below.iter().flatten()).chain(self.increasing.iter().flatten());
        for arm in named {
            if !arms.contains(&arm.as_str()) {
                return Err(format!("criterion {:?} names arm {arm:?}, which is not among {}", self.says, arms.join(", ")));
            }
        }
        let kinds = [self.lowest.is_some(), self.highest.is_some(), self.below.is_some(), self.increasing.is_some()];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err(format!("criterion {:?} needs exactly one of `lowest`, `highest`, `below`, `increasing`", self.says));
        }
        Ok(())
    }

    /// Decide from `values` (arm → metric value, mean over seeds; arms in display order).
    pub fn evaluate(&self, values: &BTreeMap<String, f64>, order: &[String]) -> Verdict {
        let v = |arm: &str| values.get(arm).copied().unwrap_or(f64::NAN);
        let show = |arms: &[String]| arms.iter().map(|a| format!("{a} {:.4}", v(a))).collect::<Vec<_>>().join(", ");
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
        } else {
            let arms = self.increasing.clone().unwrap_or_default();
            (arms.windows(2).all(|w| v(&w[0]) < v(&w[1])), arms)
        };
        Verdict { says: self.says.clone(), holds, figures: format!("{}: {}", self.metric, show(&arms)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values() -> BTreeMap<String, f64> {
        [("a", 1.0), ("b", 2.0), ("c", 3.0)].into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    #[test]
    fn verdicts_follow_the_numbers() {
        let order: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let c = |text: &str| -> Criterion { toml::from_str(&format!("says = \"x\"\nmetric = \"final_loss\"\n{text}")).unwrap() };
        assert!(c("lowest = \"a\"").evaluate(&values(), &order).holds);
        assert!(!c("lowest = \"b\"").evaluate(&values(), &order).holds);
        assert!(c("highest = \"c\"").evaluate(&values(), &order).holds);
        assert!(c("below = [\"a\", \"b\"]").evaluate(&values(), &order).holds);
        assert!(!c("below = [\"a\", \"b\"]\nmargin = 1.5").evaluate(&values(), &order).holds);
        assert!(c("increasing = [\"a\", \"b\", \"c\"]").evaluate(&values(), &order).holds);
        assert!(!c("increasing = [\"c\", \"a\"]").evaluate(&values(), &order).holds);
        assert!(c("lowest = \"a\"\nbelow = [\"a\", \"b\"]").check_arms(&["a", "b"]).is_err());
    }
}

//! An experiment file: the claim, a recipe's steps, the arms (each a set of overrides
//! of those steps), the seeds, the step whose training is compared, the overrides that
//! make a seconds-long `--smoke` version, and the pass criteria.

use crate::train::config::overrides::set_in_steps;
use std::path::Path;

use serde::Deserialize;

use super::criteria::Criterion;
use super::metric::MetricRef;

/// An experiment file (`experiments/*.toml`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExperimentSpec {
    /// The claim, as METHODS.md §5 states it.
    pub claim: String,
    /// Setup and caveats, for the results page.
    #[serde(default)]
    pub description: String,
    /// Every arm runs once per seed; the seed is added to every step's own seed. Three
    /// unless the file says otherwise: the fewest that give a paired verdict a noise
    /// estimate worth the name.
    #[serde(default = "default_seeds")]
    pub seeds: Vec<u64>,
    /// The training step whose held-out loss and routing the arms are compared on.
    pub evaluate: String,
    /// The base recipe: `[[steps]]` as in `recast recipe`.
    pub steps: Vec<toml::Value>,
    /// The arms, in the order tables and plots show them.
    pub arms: Vec<Arm>,
    /// Overrides for `--smoke` (`STEP.path = value`, `*` for every step that has the path).
    #[serde(default)]
    pub smoke: toml::Table,
    /// What must hold for the claim to be reproduced.
    #[serde(default)]
    pub criteria: Vec<Criterion>,
}

/// The seeds of an experiment file that names none.
fn default_seeds() -> Vec<u64> {
    vec![0, 1, 2]
}

/// One arm: a name and overrides of the base steps.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Arm {
    pub name: String,
    /// `"STEP.path.to.key" = value`; a value of `"-"` removes the key.
    #[serde(default)]
    pub set: toml::Table,
}

/// An experiment file that cannot be used, with the reason.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {reason}")]
pub struct SpecError {
    pub path: String,
    pub reason: String,
}

impl ExperimentSpec {
    /// Parse `text` from `path`, checking names and references.
    pub fn parse(text: &str, path: &Path) -> Result<Self, SpecError> {
        let err = |reason: String| SpecError { path: path.display().to_string(), reason };
        let spec: ExperimentSpec = toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_string()))?;
        if spec.seeds.is_empty() || spec.arms.is_empty() {
            return Err(err("needs at least one seed and one arm".into()));
        }
        let names: Vec<&str> = spec.steps.iter().filter_map(|s| s.get("name").and_then(|n| n.as_str())).collect();
        if !names.contains(&spec.evaluate.as_str()) {
            return Err(err(format!("evaluate = {:?} names no step (steps: {})", spec.evaluate, names.join(", "))));
        }
        for arm in &spec.arms {
            for key in arm.set.keys() {
                let step = key.split('.').next().unwrap_or_default();
                if step != "*" && !names.contains(&step) {
                    return Err(err(format!("arm {:?} sets {key:?}, but there is no step {step:?}", arm.name)));
                }
            }
        }
        for c in &spec.criteria {
            c.check(spec.arms.iter().map(|a| a.name.as_str()).collect::<Vec<_>>().as_slice()).map_err(err)?;
            for metric in std::iter::once(&c.metric).chain(&c.minus).chain(&c.reference) {
                if let Ok(MetricRef { step: Some(step), .. }) = MetricRef::parse(metric)
                    && !names.contains(&step.as_str())
                {
                    return Err(err(format!("criterion {:?} reads {metric:?}, but there is no step {step:?}", c.says)));
                }
            }
        }
        Ok(spec)
    }

    /// Train every step on the prepared shards in `dir` for the domain `name` instead
    /// of what the file gives it (a built-in generator or other shards), so that an
    /// experiment runs on real text. Refused when no step has a domain of that name.
    pub fn use_shards(&mut self, name: &str, dir: &Path) -> Result<(), String> {
        let mut found = false;
        let mut known = std::collections::BTreeSet::new();
        for step in &mut self.steps {
            let domains = step.get_mut("train").and_then(|t| t.get_mut("data")).and_then(|d| d.get_mut("domains")).and_then(|d| d.as_array_mut());
            for domain in domains.into_iter().flatten().filter_map(|d| d.as_table_mut()) {
                let this = domain.get("name").and_then(|n| n.as_str()).unwrap_or_default().to_string();
                if this == name {
                    domain.remove("builtin");
                    domain.insert("shards".into(), toml::Value::String(dir.display().to_string()));
                    found = true;
                }
                known.insert(this);
            }
        }
        if found { Ok(()) } else { Err(format!("no step has a domain named {name:?} (domains: {})", known.into_iter().collect::<Vec<_>>().join(", "))) }
    }

    /// Apply a `--set STEP.PATH=VALUE` to every arm (`*` as STEP: every step that has
    /// the path).
    pub fn set(&mut self, arg: &str) -> Result<(), String> {
        let (key, value) = crate::train::config::overrides::parse_step_set(arg).map_err(|e| e.to_string())?;
        set_in_steps(&mut self.steps, &key, &value).map_err(|e| format!("--set {e}"))
    }

    /// The steps of `arm` for `seed`, with the smoke overrides when `smoke`.
    pub fn steps_for(&self, arm: &Arm, seed: u64, smoke: bool) -> Result<Vec<toml::Value>, String> {
        let mut steps = self.steps.clone();
        for (key, value) in &arm.set {
            set_in_steps(&mut steps, key, value)?;
        }
        if smoke {
            for (key, value) in &self.smoke {
                set_in_steps(&mut steps, key, value)?;
            }
        }
        for step in &mut steps {
            for kind in ["train", "upcycle"] {
                if let Some(table) = step.get_mut(kind).and_then(|t| t.as_table_mut()) {
                    let base = table.get("seed").and_then(|s| s.as_integer()).unwrap_or(0);
                    table.insert("seed".into(), toml::Value::Integer(base + seed as i64));
                }
            }
        }
        Ok(steps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_reach_named_and_starred_steps() {
        let mut steps: Vec<toml::Value> = vec![toml::from_str("name = \"a\"\n[train.train]\nsteps = 100\n").unwrap(), toml::from_str("name = \"b\"\n[upcycle]\nscheme = \"x\"\n").unwrap()];
        set_in_steps(&mut steps, "*.train.train.steps", &toml::Value::Integer(3)).unwrap();
        set_in_steps(&mut steps, "b.upcycle.params.ratio", &toml::Value::Float(0.5)).unwrap();
        set_in_steps(&mut steps, "b.upcycle.scheme", &toml::Value::String("-".into())).unwrap();
        assert_eq!(steps[0]["train"]["train"]["steps"].as_integer(), Some(3));
        assert!(steps[1].get("train").is_none(), "* created a path that did not exist");
        assert_eq!(steps[1]["upcycle"]["params"]["ratio"].as_float(), Some(0.5));
        assert!(steps[1]["upcycle"].get("scheme").is_none());
        assert!(set_in_steps(&mut steps, "c.x.y", &toml::Value::Integer(1)).is_err());
    }

    #[test]
    fn prepared_shards_replace_a_domain_in_every_step() {
        let text = "claim = \"c\"\nseeds = [0]\nevaluate = \"b\"\n[[arms]]\nname = \"x\"\n[[steps]]\nname = \"a\"\n[[steps.train.data.domains]]\nname = \"code\"\nbuiltin = \"code\"\n[[steps.train.data.domains]]\nname = \"prose\"\nbuiltin = \"prose\"\n[[steps]]\nname = \"b\"\n[[steps.train.data.domains]]\nname = \"code\"\nbuiltin = \"code\"\n";
        let mut spec = ExperimentSpec::parse(text, Path::new("e.toml")).unwrap();
        spec.use_shards("code", Path::new("/data/code")).unwrap();
        for step in &spec.steps {
            let code = &step["train"]["data"]["domains"][0];
            assert_eq!(code["shards"].as_str(), Some("/data/code"));
            assert!(code.get("builtin").is_none());
        }
        assert_eq!(spec.steps[0]["train"]["data"]["domains"][1]["builtin"].as_str(), Some("prose"));
        let err = spec.use_shards("math", Path::new("/data/math")).unwrap_err();
        assert!(err.contains("code, prose"), "{err}");
    }

    #[test]
    fn a_file_without_seeds_runs_three() {
        let text = "claim = \"c\"\nevaluate = \"a\"\n[[arms]]\nname = \"x\"\n[[steps]]\nname = \"a\"\n";
        assert_eq!(ExperimentSpec::parse(text, Path::new("e.toml")).unwrap().seeds, [0, 1, 2]);
    }
}

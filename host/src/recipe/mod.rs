//! Recipes: a paper's recipe end to end — pretrain, upcycle, continue, in stages — from
//! one file, runnable from Rust as `recast recipe` runs it. Each step writes
//! `OUT/<step>/`; a later step names an earlier one's product as `@<step>` (a training
//! run's final model, an upcycle's output). A rerun skips finished steps and resumes
//! an interrupted training run.
//!
//! ```no_run
//! use recast::recipe::Recipe;
//!
//! let file = std::path::Path::new("examples/drop-upcycling.toml");
//! let recipe = Recipe::read(file)?;
//! // At most 10 steps per training run; `()` shows nothing.
//! let dirs = recipe.run(file, "runs/drop-upcycling".as_ref(), Some(10), &mut ())?;
//! for (step, dir) in dirs {
//!     println!("{step}: {}", dir.display());
//! }
//! # Ok::<(), anyhow::Error>(())
//! ```

mod runner;

use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

pub use runner::{RecipeObserver, run_steps};

use crate::train::config::RunConfig;
use crate::upcycle::Format;

/// A recipe file: its steps, run in order.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// What the recipe reproduces (shown when it starts).
    #[serde(default)]
    pub description: String,
    /// The steps, in order; a step may use the products of those before it.
    pub steps: Vec<Step>,
}

impl Recipe {
    /// Read and parse the recipe at `file`; errors name the file (and the line, for
    /// TOML errors), since recipes are written by hand.
    pub fn read(file: &Path) -> anyhow::Result<Self> {
        Self::read_with(file, &[])
    }

    /// [`Self::read`] with `--set STEP.PATH=VALUE` overrides applied to its steps (`*`
    /// as STEP: every step that has the path).
    pub fn read_with(file: &Path, sets: &[String]) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(file).with_context(|| format!("cannot read the recipe {}", file.display()))?;
        let mut doc: toml::Table = text.parse().map_err(|e: toml::de::Error| anyhow::anyhow!("{}: {}", file.display(), e.to_string().trim_end()))?;
        if let Some(steps) = doc.get_mut("steps").and_then(toml::Value::as_array_mut) {
            for arg in sets {
                let (key, value) = crate::train::config::overrides::parse_step_set(arg)?;
                crate::train::config::overrides::set_in_steps(steps, &key, &value).map_err(|e| anyhow::anyhow!("{}: --set {e}", file.display()))?;
            }
        }
        doc.try_into().map_err(|e: toml::de::Error| anyhow::anyhow!("{}: {}", file.display(), e.to_string().trim_end()))
    }
}

/// One step: a training run or an upcycling (exactly one of the two).
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// The step's name: its folder under the output, and `@<name>` for later steps.
    pub name: String,
    /// A run config (as in `recast train`); `model.path` may be `@<step>`.
    pub train: Option<Box<RunConfig>>,
    /// An upcycling of earlier products or checkpoints.
    pub upcycle: Option<UpcycleStep>,
}

impl Step {
    /// `train` or `upcycle`, for progress lines.
    pub fn kind(&self) -> &'static str {
        if self.train.is_some() { "train" } else { "upcycle" }
    }
}

/// A recipe's upcycle step: `recast upcycle`'s arguments, with `@<step>` sources.
#[derive(Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UpcycleStep {
    /// Source checkpoints: paths (relative to the recipe file) or `@<step>`.
    pub sources: Vec<String>,
    /// A reference scheme's name, or a plugin `.wasm` or crate folder.
    pub scheme: String,
    /// The scheme's parameters.
    #[serde(default)]
    pub params: toml::Table,
    /// The output format (default: Recast's own).
    #[serde(default = "recast_format")]
    pub format: Format,
    /// Seed handed to the scheme.
    #[serde(default)]
    pub seed: u64,
    /// Calibration text per expert or expert group for routers initialised from
    /// centroids (`recast upcycle --calibration`): `builtin:NAME`, or a text file or
    /// prepared domain folder relative to the recipe file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub calibration: Vec<String>,
    /// Tokens of each calibration text used (default 8192).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration_tokens: Option<usize>,
}

fn recast_format() -> Format {
    Format::Recast
}

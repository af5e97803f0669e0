//! `recast recipe RECIPE.toml --out OUT`: run a [`Recipe`] and show it on the terminal.

use std::path::Path;

use super::console::Console;
use crate::recipe::Recipe;

pub(super) fn run(file: &Path, out: &Path, max_steps: Option<u64>, sets: &[String]) -> anyhow::Result<()> {
    let recipe = Recipe::read_with(file, sets)?;
    if !recipe.description.is_empty() {
        println!("{}", recipe.description.trim());
    }
    recipe.run(file, out, max_steps, &mut Console::default())?;
    Ok(())
}

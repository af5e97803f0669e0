//! `recast plugin build PATH`: build a plugin (any language, or a workspace of plugins)
//! with [`crate::plugin_build`] and say what came out.

use std::path::Path;

use crate::plugin_build::build_plugins;

pub(super) fn run(path: &Path) -> anyhow::Result<()> {
    let built = build_plugins(path)?;
    for p in &built {
        match (&p.kind, &p.refused) {
            (Some(kind), _) => eprintln!("built {kind} plugin `{}` ({} KiB)", p.name, p.size_bytes.div_ceil(1024)),
            (None, Some(why)) => eprintln!("warning: built `{}`, but this host will refuse it: {why}", p.name),
            (None, None) => {}
        }
    }
    for p in &built {
        println!("{}", p.path.display());
    }
    Ok(())
}

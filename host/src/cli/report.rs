//! `recast report RUN_DIR`: write a run's plots and summary and print their paths.

use std::path::Path;

pub(super) fn run(run_dir: &Path) -> anyhow::Result<()> {
    let report = crate::report::write(run_dir)?;
    println!("{}", report.loss_png.display());
    if let Some(p) = report.expert_load_png {
        println!("{}", p.display());
    }
    println!("{}", report.summary_md.display());
    Ok(())
}

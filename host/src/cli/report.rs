//! `recast report RUN_DIR` and `recast compare RUN... --out DIR`: write the charts and
//! tables and print their paths.

use std::path::{Path, PathBuf};

use crate::report::ChartOptions;

pub(super) fn run(run_dir: &Path, log_y: bool) -> anyhow::Result<()> {
    let report = crate::report::write(run_dir, ChartOptions { log_y })?;
    for file in report.files {
        println!("{}", file.display());
    }
    Ok(())
}

pub(super) fn compare(runs: &[PathBuf], out: &Path, log_y: bool) -> anyhow::Result<()> {
    for file in crate::report::compare(runs, out, ChartOptions { log_y })? {
        println!("{}", file.display());
    }
    Ok(())
}

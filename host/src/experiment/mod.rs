//! Experiments: arms that differ in one policy, run with the same data, token budget and
//! seeds, then compared on held-out loss and routing statistics against a claim's pass
//! criteria (METHODS.md §5). The spec and its overrides live in [`spec`], the numbers
//! a finished run yields in [`results`], what a criterion can measure in [`metric`],
//! the verdicts in [`criteria`]; [`run`] runs one from Rust as `recast experiment`
//! does.
//!
//! ```no_run
//! use std::path::Path;
//!
//! let file = Path::new("experiments/sparse-upcycling.toml");
//! let spec = recast::experiment::read(file)?;
//! // The seconds-long smoke version; `()` shows nothing.
//! for verdict in recast::experiment::run(&spec, file, &recast::experiment::default_out(file), true, &mut ())? {
//!     println!("{}: {}", verdict.outcome.as_str(), verdict.says);
//! }
//! # Ok::<(), anyhow::Error>(())
//! ```

pub mod criteria;
pub mod metric;
pub mod results;
mod runner;
pub mod spec;
mod summary;

pub use runner::{ExperimentObserver, default_out, read, run};

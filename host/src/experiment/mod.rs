//! Experiments: arms that differ in one policy, run with the same data, token budget and
//! seeds, then compared on held-out loss and routing statistics against a claim's pass
//! criteria (METHODS.md §5). The spec and its overrides live in [`spec`], the numbers
//! a finished run yields in [`results`], what a criterion can measure in [`metric`],
//! the verdicts in [`criteria`].

pub mod criteria;
pub mod metric;
pub mod results;
pub mod spec;

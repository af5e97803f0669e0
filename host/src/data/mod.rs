//! Training data: tokenizers, built-in generated domains, token shards on disk,
//! preparation of user text, and the deterministic batch filler.

pub mod batch;
pub mod builtin;
pub mod documents;
pub mod domain;
pub mod error;
pub mod prepare;
pub mod shards;
pub mod tokenizer;

//! Parity with Hugging Face `transformers`: tests/parity/hf_parity.py makes random tiny
//! Llama, Qwen2, Mistral, Mixtral and Qwen2-MoE models, and compares their logits with
//! `recast forward` (max |Δ| ≤ 1e-4, f32) and checkpoints written by `recast convert`
//! loaded back into transformers. Needs the `.venv` that scripts/python-env.sh makes
//! (scripts/test.sh runs it first).

mod support;

use std::process::Command;

use support::{repo, text};

#[test]
fn transformers_and_recast_agree_on_all_five_architectures() {
    let python = repo().join(".venv/bin/python");
    assert!(python.exists(), "{} is missing: run scripts/python-env.sh (scripts/test.sh does it before the tests)", python.display());
    let out = Command::new(&python).arg("tests/parity/hf_parity.py").arg("--recast").arg(env!("CARGO_BIN_EXE_recast")).current_dir(repo()).output().expect("run the parity script");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "parity script failed\n{}", text(&out));
}

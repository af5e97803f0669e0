//! Parsing, defaults and path resolution of run configs.

use std::path::Path;

const MINIMAL: &str = r#"
[model.init]
architecture = "mixtral"
hidden_size = 32
num_layers = 2
num_heads = 4
intermediate_size = 64
num_experts = 4

[[data.domains]]
name = "math"
builtin = "arithmetic"

[train]
steps = 10
batch_size = 2
seq_len = 16
"#;

#[test]
fn a_minimal_config_parses_with_defaults() {
    let c = super::RunConfig::parse(MINIMAL, Path::new("/runs/x.toml")).expect("valid");
    assert_eq!(c.tokenizer, "byte");
    assert_eq!(c.optimizer.lr, 3e-3);
    assert_eq!(c.train.grad_accum, 1);
}

/// `eval_tokens` defaults to 65,536; an older config's `eval_sequences` is read as
/// that many sequences of `seq_len`, and is not written back.
#[test]
fn eval_tokens_replaces_eval_sequences() {
    let c = super::RunConfig::parse(MINIMAL, Path::new("/runs/x.toml")).expect("valid");
    assert_eq!(c.train.eval_tokens(), 65_536);
    let legacy = MINIMAL.replace("[train]\n", "[train]\neval_sequences = 16\n");
    let c = super::RunConfig::parse(&legacy, Path::new("/runs/x.toml")).expect("valid");
    assert_eq!(c.train.eval_tokens(), 16 * c.train.seq_len);
    let written = toml::to_string(&c).expect("serialise");
    assert!(written.contains(&format!("eval_tokens = {}", 16 * c.train.seq_len)) && !written.contains("eval_sequences"), "{written}");
    let zero = MINIMAL.replace("[train]\n", "[train]\neval_tokens = 0\n");
    assert!(super::RunConfig::parse(&zero, Path::new("/runs/x.toml")).is_err());
}

/// With `[model] path` and no `tokenizer`, the run uses the checkpoint's
/// `tokenizer.json`; without one there, the byte tokenizer.
#[test]
fn a_checkpoint_brings_its_tokenizer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let text = MINIMAL.replace(
        "[model.init]\narchitecture = \"mixtral\"\nhidden_size = 32\nnum_layers = 2\nnum_heads = 4\nintermediate_size = 64\nnum_experts = 4\n",
        &format!("[model]\npath = {:?}\n", dir.path().display().to_string()),
    );
    assert!(text.contains("[model]\npath"), "{text}");
    let c = super::RunConfig::parse(&text, Path::new("/runs/x.toml")).expect("valid");
    assert_eq!(c.tokenizer, "byte");
    std::fs::write(dir.path().join("tokenizer.json"), "{}").expect("write");
    let c = super::RunConfig::parse(&text, Path::new("/runs/x.toml")).expect("valid");
    assert_eq!(c.tokenizer, dir.path().join("tokenizer.json").display().to_string());
    let explicit = format!("tokenizer = \"byte\"\n{text}");
    assert_eq!(super::RunConfig::parse(&explicit, Path::new("/runs/x.toml")).expect("valid").tokenizer, "byte");
}

#[test]
fn stages_must_add_up_and_groups_match_names() {
    let text = format!("{MINIMAL}\n[[stages]]\nname = \"warmup\"\nsteps = 4\ntrain = [\"router\"]\n\n[[stages]]\nname = \"all\"\nsteps = 5\n");
    let err = super::RunConfig::parse(&text, Path::new("x.toml")).unwrap_err().to_string();
    assert!(err.contains("9 steps in all") && err.contains("train.steps = 10"), "{err}");
    let ok = super::RunConfig::parse(&text.replace("steps = 5", "steps = 6"), Path::new("x.toml")).expect("valid");
    assert_eq!(ok.stages[0].train, vec![super::ParamGroup::Router]);
    use super::ParamGroup::*;
    assert!(Router.contains("model.layers.3.mlp.gate.weight") && !Router.contains("model.layers.3.mlp.gate_proj.weight"));
    assert!(Mlp.contains("model.layers.3.mlp.gate_proj.weight") && !Mlp.contains("model.layers.3.mlp.experts.1.gate_proj.weight"));
    assert!(Experts.contains("model.layers.3.mlp.experts.1.gate_proj.weight"));
}

#[test]
fn every_numeric_value_out_of_its_range_is_named_with_its_key_and_line() {
    let cases = [
        ("[optimizer]\nlr = -1", "optimizer.lr"),
        ("[optimizer]\nlr = 11", "optimizer.lr"),
        ("[optimizer]\nbeta1 = 1.5", "optimizer.beta1"),
        ("[optimizer]\nbeta2 = 1.0", "optimizer.beta2"),
        ("[optimizer]\neps = 0", "optimizer.eps"),
        ("[optimizer]\nweight_decay = -0.1", "optimizer.weight_decay"),
        ("[optimizer]\nlr = 1\nweight_decay = 2", "optimizer.weight_decay"),
        ("[optimizer]\nclip_grad_norm = -1", "optimizer.clip_grad_norm"),
        ("[optimizer]\nclip_grad_norm = inf", "optimizer.clip_grad_norm"),
        ("[schedule]\nmin_lr_ratio = -2", "schedule.min_lr_ratio"),
        ("[schedule]\ndecay_fraction = 1.5", "schedule.decay_fraction"),
        ("[bundle_limits]\nmax_entry_mib = 0", "bundle_limits.max_entry_mib"),
    ];
    for (extra, key) in cases {
        let text = format!("{MINIMAL}\n{extra}\n");
        let err = super::RunConfig::parse(&text, Path::new("x.toml")).expect_err(key).to_string();
        let line = text.lines().position(|l| l.starts_with(key.rsplit('.').next().unwrap_or(key))).map_or(0, |i| i + 1);
        assert!(err.contains(&format!("line {line}: `{key}`")), "{extra}: {err}");
    }
    let replaced = [
        ("hidden_size = 32", "hidden_size = 4294967296", "model.init.hidden_size"),
        ("hidden_size = 32", "hidden_size = 30", "model.init.num_heads"),
        ("num_experts = 4", "num_experts = 100000000", "model.init.num_experts"),
        ("num_experts = 4", "num_experts = 4\ntop_k = 5", "model.init.top_k"),
        ("architecture = \"mixtral\"", "architecture = \"llama\"", "model.init.num_experts"),
        ("intermediate_size = 64", "intermediate_size = 0", "model.init.intermediate_size"),
        ("seq_len = 16", "seq_len = 100000", "train.seq_len"),
        ("batch_size = 2", "batch_size = 0", "train.batch_size"),
        ("name = \"math\"", "name = \"\"", "data.domains[0].name"),
    ];
    for (find, replace, key) in replaced {
        let err = super::RunConfig::parse(&MINIMAL.replace(find, replace), Path::new("x.toml")).expect_err(key).to_string();
        assert!(err.contains(&format!("`{key}`")) && err.contains("line "), "{replace}: {err}");
    }
    let twice = format!("{MINIMAL}\n[[data.domains]]\nname = \"math\"\nbuiltin = \"prose\"\n");
    let err = super::RunConfig::parse(&twice, Path::new("x.toml")).expect_err("duplicate domain").to_string();
    assert!(err.contains("`data.domains[1].name`") && err.contains("names two domains"), "{err}");
}

#[test]
fn a_misspelt_key_is_named_with_its_line() {
    let text = MINIMAL.replace("batch_size = 2", "bacth_size = 2");
    let err = super::RunConfig::parse(&text, Path::new("x.toml")).unwrap_err().to_string();
    assert!(err.contains("bacth_size") && err.contains("line 16"), "{err}");
}

//! Every value of a run config checked against its stated range before anything is
//! built or allocated: a negative learning rate, a `beta1` of 1.5 or a hundred million
//! experts is an error naming the key (and, from a file, its line), not a run that
//! trains backwards, diverges or allocates for a minute. The ranges are listed in the
//! README's run-config table.

use std::collections::BTreeSet;

use super::{RunConfig, lines};
use crate::model::config::size_limits as max;
use crate::train::role::Role;

/// Most optimizer steps, sequences or tokens a run config may ask for in one place: far
/// beyond any run, small enough that products of them cannot overflow.
const MAX_COUNT: u64 = 1 << 40;
/// Longest training or evaluation sequence, and most sequences in a micro-batch.
const MAX_SEQUENCE: usize = 1 << 20;

/// A config value outside its range, or values that do not fit together.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    /// The value's key path, e.g. `optimizer.beta1` or `data.domains[1].name`.
    pub key: String,
    pub reason: String,
}

impl Invalid {
    fn new(key: impl Into<String>, reason: impl Into<String>) -> Self {
        Invalid { key: key.into(), reason: reason.into() }
    }

    /// The message, with the key's line when the config's `text` is at hand.
    pub fn describe(&self, text: Option<&str>) -> String {
        match text.and_then(|t| lines::line_of(t, &self.key)) {
            Some(line) => format!("line {line}: `{}`: {}", self.key, self.reason),
            None => format!("`{}`: {}", self.key, self.reason),
        }
    }
}

/// `Ok` when `ok`, else "`value` is out of range (`allowed`)" for `key`.
fn ensure(ok: bool, key: &str, value: impl std::fmt::Display, allowed: &str) -> Result<(), Invalid> {
    if ok { Ok(()) } else { Err(Invalid::new(key, format!("{value} is out of range ({allowed})"))) }
}

/// A count in `lo ..= hi`.
fn count(key: &str, value: usize, lo: usize, hi: usize) -> Result<(), Invalid> {
    ensure((lo..=hi).contains(&value), key, value, &format!("{lo} ..= {hi}"))
}

/// A finite float in `[lo, hi]`, with either end open.
fn real(key: &str, value: f64, lo: (f64, bool), hi: (f64, bool)) -> Result<(), Invalid> {
    let ((l, l_open), (h, h_open)) = (lo, hi);
    let above = if l_open { value > l } else { value >= l };
    let below = if h_open { value < h } else { value <= h };
    let low = if l_open { format!("{l} < ") } else { format!("{l} <= ") };
    let high = if h == f64::MAX {
        String::new()
    } else if h_open {
        format!(" < {h}")
    } else {
        format!(" <= {h}")
    };
    let allowed = format!("{low}{}{high}, finite", key.rsplit('.').next().unwrap_or(key));
    ensure(value.is_finite() && above && below, key, value, &allowed)
}

const OPEN: bool = true;
const CLOSED: bool = false;

impl RunConfig {
    /// Check every value's range and that the values fit together.
    pub(super) fn check(&self) -> Result<(), Invalid> {
        self.check_model()?;
        self.check_data()?;
        self.check_plugins()?;
        self.check_optimizer()?;
        self.check_train()?;
        self.check_stages()
    }

    fn check_model(&self) -> Result<(), Invalid> {
        let init = match (&self.model.path, &self.model.init) {
            (Some(_), Some(_)) => return Err(Invalid::new("model", "has both `path` and `init`; give one")),
            (None, None) => return Err(Invalid::new("model", "needs `path` (a checkpoint directory) or `init` (a shape)")),
            (Some(_), None) => return Ok(()),
            (None, Some(init)) => init,
        };
        let key = |name: &str| format!("model.init.{name}");
        count(&key("hidden_size"), init.hidden_size, 1, max::HIDDEN)?;
        count(&key("num_layers"), init.num_layers, 1, max::LAYERS)?;
        if let Some(vocab) = init.vocab_size {
            count(&key("vocab_size"), vocab, 1, max::VOCAB)?;
        }
        count(&key("num_heads"), init.num_heads, 1, max::HEADS)?;
        count(&key("intermediate_size"), init.intermediate_size, 1, max::INTERMEDIATE)?;
        if !init.hidden_size.is_multiple_of(init.num_heads) || !(init.hidden_size / init.num_heads).is_multiple_of(2) {
            return Err(Invalid::new(key("num_heads"), format!("{} heads do not split hidden_size {} into heads of an even width (rotary embeddings)", init.num_heads, init.hidden_size)));
        }
        if let Some(kv) = init.num_kv_heads {
            count(&key("num_kv_heads"), kv, 1, init.num_heads)?;
            if !init.num_heads.is_multiple_of(kv) {
                return Err(Invalid::new(key("num_kv_heads"), format!("{kv} does not divide num_heads = {}", init.num_heads)));
            }
        }
        real(&key("rope_theta"), init.rope_theta, (0.0, OPEN), (1e12, CLOSED))?;
        real(&key("std"), init.std, (0.0, OPEN), (1.0, CLOSED))?;
        let moe_keys = [
            ("num_experts", init.num_experts.is_some()),
            ("top_k", init.top_k.is_some()),
            ("expert_intermediate_size", init.expert_intermediate_size.is_some()),
            ("shared_expert_intermediate_size", init.shared_expert_intermediate_size.is_some()),
        ];
        if !init.architecture.is_moe() {
            if let Some((name, _)) = moe_keys.iter().find(|(_, given)| *given) {
                return Err(Invalid::new(key(name), format!("is an MoE key, but architecture {:?} is dense; use \"mixtral\" or \"qwen2-moe\" for an MoE model", init.architecture.hf_model_type())));
            }
            return Ok(());
        }
        let experts = init.num_experts.ok_or_else(|| Invalid::new(key("num_experts"), format!("is required for architecture {:?}", init.architecture.hf_model_type())))?;
        count(&key("num_experts"), experts, 1, max::EXPERTS)?;
        if let Some(k) = init.top_k {
            count(&key("top_k"), k, 1, experts)?;
        }
        if let Some(w) = init.expert_intermediate_size {
            count(&key("expert_intermediate_size"), w, 1, max::INTERMEDIATE)?;
        }
        if let Some(w) = init.shared_expert_intermediate_size {
            count(&key("shared_expert_intermediate_size"), w, 0, max::INTERMEDIATE)?;
        }
        Ok(())
    }

    fn check_data(&self) -> Result<(), Invalid> {
        if self.data.domains.is_empty() {
            return Err(Invalid::new("data", "lists no domains"));
        }
        let mut names = BTreeSet::new();
        for (i, d) in self.data.domains.iter().enumerate() {
            if d.builtin.is_some() == d.shards.is_some() {
                return Err(Invalid::new(format!("data.domains[{i}]"), format!("domain {:?} needs exactly one of `builtin` and `shards`", d.name)));
            }
            if d.name.trim().is_empty() {
                return Err(Invalid::new(format!("data.domains[{i}].name"), "is empty"));
            }
            if !names.insert(d.name.as_str()) {
                return Err(Invalid::new(format!("data.domains[{i}].name"), format!("{:?} names two domains; their metrics would overwrite each other", d.name)));
            }
        }
        Ok(())
    }

    fn check_plugins(&self) -> Result<(), Invalid> {
        let shadows = self.plugins.shadow_router.iter().enumerate().map(|(i, p)| (format!("shadow_router[{i}]"), p));
        for (name, p) in Role::all().filter_map(|role| self.plugins.get(role).map(|p| (role.as_str().to_string(), p))).chain(shadows) {
            if [p.builtin.is_some(), p.file.is_some(), p.bundle.is_some()].iter().filter(|&&x| x).count() != 1 {
                return Err(Invalid::new(format!("plugins.{name}"), "needs exactly one of `builtin`, `file` and `bundle`"));
            }
            if p.plugin.is_some() && p.bundle.is_none() {
                return Err(Invalid::new(format!("plugins.{name}.plugin"), "picks a plugin from a `bundle`; there is none"));
            }
        }
        count("plugins.shadow_router (entries)", self.plugins.shadow_router.len(), 0, super::MAX_SHADOW_ROUTERS)?;
        if let Some(routing) = &self.trace.routing {
            ensure(routing.every >= 1, "trace.routing.every", routing.every, ">= 1")?;
        }
        let b = &self.bundle_limits;
        ensure(b.max_entry_mib >= 1, "bundle_limits.max_entry_mib", b.max_entry_mib, ">= 1")?;
        ensure(b.max_bundle_mib >= b.max_entry_mib, "bundle_limits.max_bundle_mib", b.max_bundle_mib, ">= max_entry_mib")?;
        ensure(b.max_entries >= 3, "bundle_limits.max_entries", b.max_entries, ">= 3 (manifest, checksum, a plugin)")
    }

    fn check_optimizer(&self) -> Result<(), Invalid> {
        let o = &self.optimizer;
        real("optimizer.lr", o.lr, (0.0, OPEN), (10.0, CLOSED))?;
        real("optimizer.beta1", o.beta1, (0.0, CLOSED), (1.0, OPEN))?;
        real("optimizer.beta2", o.beta2, (0.0, CLOSED), (1.0, OPEN))?;
        real("optimizer.eps", o.eps, (0.0, OPEN), (1.0, CLOSED))?;
        real("optimizer.weight_decay", o.weight_decay, (0.0, CLOSED), (10.0, CLOSED))?;
        if o.lr * o.weight_decay >= 1.0 {
            return Err(Invalid::new("optimizer.weight_decay", format!("lr × weight_decay = {} would flip every weight's sign each step (must be < 1)", o.lr * o.weight_decay)));
        }
        real("optimizer.clip_grad_norm", o.clip_grad_norm, (0.0, CLOSED), (f64::MAX, CLOSED))?;
        let s = &self.schedule;
        real("schedule.min_lr_ratio", s.min_lr_ratio, (0.0, CLOSED), (1.0, CLOSED))?;
        real("schedule.decay_fraction", s.decay_fraction, (0.0, CLOSED), (1.0, CLOSED))?;
        ensure(s.warmup_steps <= MAX_COUNT, "schedule.warmup_steps", s.warmup_steps, &format!("<= {MAX_COUNT}"))
    }

    fn check_train(&self) -> Result<(), Invalid> {
        let t = &self.train;
        ensure((1..=MAX_COUNT).contains(&t.steps), "train.steps", t.steps, &format!("1 ..= {MAX_COUNT}"))?;
        count("train.batch_size", t.batch_size, 1, MAX_SEQUENCE)?;
        let longest = if self.model.init.is_some() { crate::train::config::INIT_MAX_POSITIONS } else { MAX_SEQUENCE };
        count("train.seq_len", t.seq_len, 2, longest)?;
        count("train.grad_accum", t.grad_accum, 1, MAX_SEQUENCE)?;
        if let Some(tokens) = t.eval_tokens {
            ensure((1..=MAX_COUNT).contains(&(tokens as u64)), "train.eval_tokens", tokens, &format!("1 ..= {MAX_COUNT}"))?;
        }
        let tokens = t.batch_size as u64 * t.seq_len as u64 * t.grad_accum as u64;
        ensure(tokens <= MAX_COUNT, "train.batch_size", t.batch_size, &format!("batch_size × seq_len × grad_accum = {tokens} tokens per step; at most {MAX_COUNT}"))?;
        ensure(t.eval_every <= MAX_COUNT, "train.eval_every", t.eval_every, &format!("<= {MAX_COUNT}"))?;
        ensure(t.checkpoint_every <= MAX_COUNT, "train.checkpoint_every", t.checkpoint_every, &format!("<= {MAX_COUNT}"))?;
        count("train.keep_checkpoints", t.keep_checkpoints, 0, 1 << 20)
    }

    fn check_stages(&self) -> Result<(), Invalid> {
        if self.stages.is_empty() {
            return Ok(());
        }
        let total: u64 = self.stages.iter().map(|s| s.steps).fold(0, u64::saturating_add);
        if total != self.train.steps {
            return Err(Invalid::new("stages", format!("the stages last {total} steps in all, but train.steps = {}", self.train.steps)));
        }
        for (i, s) in self.stages.iter().enumerate() {
            if s.steps == 0 {
                return Err(Invalid::new(format!("stages[{i}].steps"), format!("stage {:?} has no steps", s.name)));
            }
            if let Some(m) = &s.mixture
                && (m.len() != self.data.domains.len() || m.iter().any(|w| !(w.is_finite() && *w >= 0.0)) || m.iter().all(|&w| w == 0.0))
            {
                return Err(Invalid::new(format!("stages[{i}].mixture"), format!("stage {:?}: needs {} finite weights >= 0, not all 0", s.name, self.data.domains.len())));
            }
            if let Some(lr) = s.lr {
                real(&format!("stages[{i}].lr"), lr, (0.0, OPEN), (10.0, CLOSED))?;
            }
        }
        Ok(())
    }
}

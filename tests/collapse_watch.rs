//! The collapse-watch router (plugins/router/collapse-watch): its nudges on hand-made
//! loads equal the rule computed here, and in a real run an expert starved on purpose
//! gets tokens again, with every nudge journaled exactly where the rule, replayed here
//! from the run's own per-step loads, says it belongs.

mod support;

use std::collections::BTreeMap;

use recast::plugins::aux_schedule::LayerStats;
use recast::plugins::router::LayerInfo;
use recast::plugins::{PluginEngine, PluginLimits, RouterPlugin};
use support::{TINY_MOE, plugin, text, train};

fn layer(l: u32) -> LayerInfo {
    LayerInfo { layer: l, num_layers: 2, hidden: 16, num_experts: 4, expert_intermediate: vec![32; 4], shared_experts: 0, tokens_per_batch: 64 }
}

fn stats(l: u32, load: Vec<u32>) -> LayerStats {
    LayerStats { layer: l, tokens: 64, top_k: 2, expert_load: load, dropped: 0, overflow_rate: 0.0, gate_entropy: 1.0, max1_over_max2: 1.5, load_balance_loss: 1.0, z_loss: 0.0 }
}

/// The watch's rule, written again: per expert, steps in a row under `threshold` × the
/// mean load; from `patience` such steps on, `nudge` each step.
struct Rule {
    threshold: f64,
    patience: u32,
    nudge: f32,
    starved_for: BTreeMap<(u32, usize), u32>,
}

impl Rule {
    fn deltas(&mut self, layer: u32, load: &[u32]) -> Vec<f32> {
        let mean = load.iter().sum::<u32>() as f64 / load.len() as f64;
        load.iter()
            .enumerate()
            .map(|(e, &c)| {
                let n = self.starved_for.entry((layer, e)).or_default();
                *n = if (c as f64) < self.threshold * mean { *n + 1 } else { 0 };
                if *n >= self.patience { self.nudge } else { 0.0 }
            })
            .collect()
    }
}

#[test]
fn nudges_follow_the_rule_and_starving_happens_once() {
    let e = PluginEngine::new().unwrap();
    let params = "top_k = 2\nthreshold = 0.25\npatience = 2\nnudge = 0.1\nstarve = { expert = 3, bias = -2.0 }";
    let mut r = RouterPlugin::new(&e, &e.load_file(plugin("collapse-watch")).unwrap(), params, 0, PluginLimits::default()).unwrap();
    let mut rule = Rule { threshold: 0.25, patience: 2, nudge: 0.1, starved_for: BTreeMap::new() };
    let loads = [vec![40, 40, 48, 0], vec![50, 50, 28, 0], vec![60, 60, 8, 0], vec![60, 50, 10, 8], vec![40, 40, 24, 24]];
    for (step, load) in loads.iter().enumerate() {
        let updates = r.on_step(step as u64, &[stats(0, load.clone())], &[layer(0)]).unwrap();
        let mut want = rule.deltas(0, load);
        if step == 0 {
            want[3] += -2.0;
        }
        assert_eq!(updates[0].bias_delta.as_deref(), Some(&want[..]), "step {step}, loads {load:?}");
    }
    // The state carries the counts: a new instance continues where the old one stopped.
    let state = r.instance().save_state().unwrap();
    let mut again = RouterPlugin::new(&e, &e.load_file(plugin("collapse-watch")).unwrap(), params, 0, PluginLimits::default()).unwrap();
    again.instance().load_state(&state).unwrap();
    let load = vec![60, 60, 8, 0];
    assert_eq!(again.on_step(5, &[stats(0, load.clone())], &[layer(0)]).unwrap()[0].bias_delta.as_deref(), Some(&rule.deltas(0, &load)[..]));
    assert!(RouterPlugin::new(&e, &e.load_file(plugin("collapse-watch")).unwrap(), "threshold = 1.5", 0, PluginLimits::default()).is_err());
}

/// Per step (0-based), per MoE layer: the expert loads `metrics.jsonl` recorded.
fn loads_by_step(run: &std::path::Path) -> Vec<Vec<(u32, Vec<u32>)>> {
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    metrics
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r.get("loss").is_some())
        .map(|r| {
            r["layers"].as_array().unwrap().iter().map(|l| (l["layer"].as_u64().unwrap() as u32, l["expert_load"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap() as u32).collect())).collect()
        })
        .collect()
}

#[test]
fn a_starved_expert_gets_tokens_again_and_every_nudge_is_journaled() {
    let dir = tempfile::tempdir().unwrap();
    let run = |nudge: f32| {
        let out = dir.path().join(format!("run-{nudge}"));
        let config = dir.path().join(format!("run-{nudge}.toml"));
        let body = format!(
            "seed = 3\n{TINY_MOE}\n[[data.domains]]\nname = \"arithmetic\"\nbuiltin = \"arithmetic\"\n[[data.domains]]\nname = \"prose\"\nbuiltin = \"prose\"\n\
             [plugins.router]\nfile = \"{}\"\nparams = {{ top_k = 2, threshold = 0.25, patience = 3, nudge = {nudge}, starve = {{ expert = 0, bias = -1.0 }} }}\n\
             [optimizer]\nlr = 5e-3\n[train]\nsteps = 40\nbatch_size = 4\nseq_len = 32\neval_every = 0\n",
            plugin("collapse-watch").display()
        );
        std::fs::write(&config, body).unwrap();
        let o = train(&[config.to_str().unwrap(), "--out", out.to_str().unwrap()]);
        assert!(o.status.success(), "{}", text(&o));
        out
    };

    // Left alone, the starved expert never gets a token again.
    let alone = loads_by_step(&run(0.0));
    assert!(alone[1..].iter().all(|layers| layers.iter().all(|(_, load)| load[0] == 0)), "{alone:?}");

    let watched_run = run(0.2);
    let watched = loads_by_step(&watched_run);
    assert!(watched[1..4].iter().all(|layers| layers.iter().all(|(_, load)| load[0] == 0)), "starved from step 1: {watched:?}");
    for layer in 0..2 {
        let last = watched.iter().rev().take(5).map(|layers| layers[layer].1[0]).sum::<u32>();
        assert!(last > 0, "layer {layer}: expert 0 got no tokens in the last 5 steps: {watched:?}");
    }

    // Every nudge the journal holds is one the rule gives on the recorded loads, and
    // the other way round.
    let mut rule = Rule { threshold: 0.25, patience: 3, nudge: 0.2, starved_for: BTreeMap::new() };
    let mut want = Vec::new();
    for (step, layers) in watched.iter().enumerate() {
        for (layer, load) in layers {
            for (e, d) in rule.deltas(*layer, load).iter().enumerate() {
                if *d > 0.0 {
                    want.push(format!("step {step}: layer {layer} expert {e}: "));
                }
            }
        }
    }
    let journal = std::fs::read_to_string(watched_run.join("journal.jsonl")).unwrap();
    let got: Vec<String> = journal
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|r| r["event"] == "plugin-log" && r["role"] == "router")
        .map(|r| r["message"].as_str().unwrap().to_string())
        .filter(|m| m.contains("selection bias +"))
        .map(|m| m.split_inclusive(": ").take(2).collect())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want);
    let metrics = std::fs::read_to_string(watched_run.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("\"plugin_metrics\":{\"router\":{\"collapsed_experts\""), "{metrics}");
}

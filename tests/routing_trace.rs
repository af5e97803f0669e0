//! Routing traces, replay and shadow routers.
//!
//! - A run traced every step, stopped and resumed, writes the same trace files byte for
//!   byte as the run done in one go.
//! - `recast replay` of a traced step reproduces that step's training loss (from
//!   metrics.jsonl, written by training) with the recorded routing and finds no token
//!   routed differently; after two tokens' experts are swapped in the trace, it reports
//!   exactly those two tokens in that layer, with the recorded and live experts.
//! - A shadow router with the live router's plugin and params agrees on every token and
//!   reports the live loads; a top-1 shadow of a top-2 router reports agreement ½ and the
//!   loads of each token's best recorded expert, counted here from the trace; `recast
//!   report` plots live against shadow loads.

mod support;

use std::path::{Path, PathBuf};

use recast::train::routing_trace;
use serde_json::Value;
use support::{config, plugin, run, text, train};

/// The test config for `name`, with 12 steps, `extra` appended, in `dir/name/`.
fn traced_config(dir: &Path, name: &str, extra_train: &str, edit: &dyn Fn(String) -> String, extra: &str) -> PathBuf {
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).unwrap();
    let cfg = config(&sub, extra_train);
    let body = edit(std::fs::read_to_string(&cfg).unwrap().replace("steps = 20", "steps = 12")) + extra;
    std::fs::write(&cfg, body).unwrap();
    cfg
}

fn records(run_dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap().lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).filter(|v| v.get("loss").is_some()).collect()
}

const TRACE: &str = "\n[trace]\nrouting = { every = 1 }\n";

#[test]
fn a_resumed_run_traces_the_same_bytes_and_replay_reproduces_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = traced_config(dir.path(), "cfg", "grad_accum = 2\ncheckpoint_every = 4", &|b| b, TRACE);
    let whole = dir.path().join("whole");
    let o = train(&[cfg.to_str().unwrap(), "--out", whole.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let pieces = dir.path().join("pieces");
    let o = train(&[cfg.to_str().unwrap(), "--out", pieces.to_str().unwrap(), "--max-steps", "6"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = train(&["--resume", pieces.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(routing_trace::steps(&whole), (1..=12).collect::<Vec<_>>());
    for step in 1..=12 {
        let (a, b) = (std::fs::read(routing_trace::path(&whole, step, None)).unwrap(), std::fs::read(routing_trace::path(&pieces, step, None)).unwrap());
        assert!(a == b, "step {step}: the resumed run traced other bytes");
    }
    let trace = routing_trace::read(&routing_trace::path(&whole, 7, None)).unwrap();
    assert_eq!(trace.micro_batches.len(), 2);
    assert_eq!(trace.micro_batches[0].layers.iter().map(|r| r.layer).collect::<Vec<_>>(), vec![0, 1]);

    // Step 7 ran on the weights after step 6: checkpoint 4, then steps 5 and 6 again.
    let replay = |run_dir: &Path| -> Value {
        let o = run(&["replay", run_dir.to_str().unwrap(), "--step", "7", "--json", "--threads", "2"]);
        assert!(o.status.success(), "{}", text(&o));
        serde_json::from_slice(&o.stdout).unwrap()
    };
    let report = replay(&whole);
    let trained = records(&whole)[6]["loss"].as_f64().unwrap();
    assert_eq!(report["loss"].as_f64().unwrap() as f32, trained as f32, "the replayed loss is not the step's training loss");
    assert_eq!(report["differences"].as_array().unwrap().len(), 0, "{report}");
    assert!(report["layers"].as_array().unwrap().iter().all(|l| l["tokens"] == 2 * 4 * 32 && l["differing"] == 0), "{report}");
    let files_before: Vec<_> = walk(&whole);

    // Move token a from expert 0 to expert 1 and token b the other way, in layer 0 of
    // the first micro-batch.
    let mut tampered = trace.clone();
    let record = &mut tampered.micro_batches[0].layers[0];
    let by_token = record.experts_by_token();
    let group = |e: usize| -> std::ops::Range<usize> {
        let start: u32 = record.counts[..e].iter().sum();
        start as usize..(start + record.counts[e]) as usize
    };
    let (g0, g1) = (group(0), group(1));
    let i = g0.clone().find(|&i| !by_token[record.assigned[i] as usize].contains(&1)).expect("a token on expert 0 but not 1");
    let j = g1.clone().find(|&j| !by_token[record.assigned[j] as usize].contains(&0)).expect("a token on expert 1 but not 0");
    let (a, b) = (record.assigned[i], record.assigned[j]);
    record.assigned.swap(i, j);
    routing_trace::write(&routing_trace::path(&whole, 7, None), &tampered).unwrap();
    let report = replay(&whole);
    let layer0: Vec<&Value> = report["differences"].as_array().unwrap().iter().filter(|d| d["micro_batch"] == 0 && d["layer"] == 0).collect();
    let moved = |t: u32, from: u32, to: u32| -> (Vec<u32>, Vec<u32>) {
        let live = by_token[t as usize].clone();
        let mut recorded: Vec<u32> = live.iter().map(|&e| if e == from { to } else { e }).collect();
        recorded.sort_unstable();
        (recorded, live)
    };
    let got: Vec<(u64, Vec<u32>, Vec<u32>)> = layer0
        .iter()
        .map(|d| {
            let ints = |v: &Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect::<Vec<u32>>();
            (d["sequence"].as_u64().unwrap() * 32 + d["position"].as_u64().unwrap(), ints(&d["recorded"]), ints(&d["live"]))
        })
        .collect();
    let mut want = vec![(a as u64, moved(a, 0, 1).0, moved(a, 0, 1).1), (b as u64, moved(b, 1, 0).0, moved(b, 1, 0).1)];
    want.sort();
    assert_eq!(got, want, "replay did not report exactly the two moved tokens");
    assert_eq!(walk(&whole).len(), files_before.len(), "replay wrote into the run folder");

    // A damaged trace, a step that was not traced, a layer that is not an MoE layer.
    let damaged = routing_trace::path(&whole, 8, None);
    std::fs::write(&damaged, b"not safetensors").unwrap();
    let o = run(&["replay", whole.to_str().unwrap(), "--step", "8"]);
    assert!(!o.status.success() && text(&o).contains(&damaged.display().to_string()) && text(&o).contains("not a routing trace"), "{}", text(&o));
    let o = run(&["replay", whole.to_str().unwrap(), "--step", "99"]);
    assert!(!o.status.success() && text(&o).contains("no trace of step 99") && text(&o).contains("traced steps: 1, 2"), "{}", text(&o));
    let bad = traced_config(dir.path(), "bad", "", &|b| b, "\n[trace]\nrouting = { layers = [5] }\n");
    let o = train(&[bad.to_str().unwrap(), "--out", dir.path().join("bad-run").to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("layer 5 is not an MoE layer"), "{}", text(&o));
}

/// Every file under `dir` with its size.
fn walk(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push((path.clone(), entry.metadata().unwrap().len()));
        }
    }
    out.sort();
    out
}

#[test]
fn shadow_routers_report_what_they_would_have_done() {
    let dir = tempfile::tempdir().unwrap();
    let router = plugin("topk-softmax").display().to_string();
    let shadows = format!("{TRACE}\n[[plugins.shadow_router]]\nfile = \"{router}\"\nparams = {{ top_k = 2 }}\n\n[[plugins.shadow_router]]\nfile = \"{router}\"\nparams = {{ top_k = 1 }}\n");
    let dropless = |b: String| b.replace("params = { top_k = 2, capacity_factor = 1.5 }", "params = { top_k = 2 }");
    let cfg = traced_config(dir.path(), "cfg", "", &dropless, &shadows);
    let out = dir.path().join("run");
    let o = train(&[cfg.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let mut shares = Vec::new();
    for (s, record) in records(&out).iter().enumerate() {
        let step = s as u64 + 1;
        let same = &record["shadow_routers"]["shadow_router.0"]["layers"];
        let top1 = &record["shadow_routers"]["shadow_router.1"]["layers"];
        let trace = routing_trace::read(&routing_trace::path(&out, step, None)).unwrap();
        for (l, live) in record["layers"].as_array().unwrap().iter().enumerate() {
            assert_eq!(same[l]["agreement"].as_f64(), Some(1.0), "step {step}: {record}");
            assert_eq!(same[l]["expert_load"], live["expert_load"], "step {step}");
            assert_eq!(top1[l]["agreement"].as_f64(), Some(0.5), "step {step}: {record}");
            // Each token's best recorded expert (highest gate), counted from the trace.
            let mut want = vec![0u64; 4];
            for mb in &trace.micro_batches {
                let r = &mb.layers[l];
                let mut best = vec![(f32::NEG_INFINITY, 0usize); r.tokens];
                let mut at = 0;
                for (e, &count) in r.counts.iter().enumerate() {
                    for k in at..at + count as usize {
                        let t = r.assigned[k] as usize;
                        if r.gates[k] > best[t].0 || (r.gates[k] == best[t].0 && e < best[t].1) {
                            best[t] = (r.gates[k], e);
                        }
                    }
                    at += count as usize;
                }
                best.iter().for_each(|&(_, e)| want[e] += 1);
            }
            let got: Vec<u64> = top1[l]["expert_load"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
            assert_eq!(got, want, "step {step} layer {l}: the top-1 shadow's loads");
            let mean = want.iter().sum::<u64>() as f64 / 4.0;
            let max_vio = *want.iter().max().unwrap() as f64 / mean - 1.0;
            assert!((top1[l]["max_vio"].as_f64().unwrap() - max_vio).abs() < 1e-12, "step {step}");
        }
        shares.push(record["shadow_ms"].as_f64().unwrap() / record["step_ms"].as_f64().unwrap());
    }
    let o = run(&["report", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(out.join("report/shadow_load.png").is_file() && out.join("report/shadow_load.svg").is_file(), "{}", text(&o));
    eprintln!("shadow routers' share of step time (two shadows, tiny MoE): median {:.3}", median(&mut shares));
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

//! The fault matrix: every misbehaving fixture gives its own typed error, the host never
//! panics, loops are stopped by fuel and spinning by the deadline (never before it), and the
//! next call to a good plugin in the same process works.

#![allow(clippy::result_large_err, clippy::type_complexity)]

mod support;

use std::time::{Duration, Instant};

use recast::plugins::router::{LayerInfo, TokenLogits};
use recast::plugins::{AuxSchedulePlugin, FaultCause, OutputViolation, PluginEngine, PluginError, PluginLimits, RouterPlugin};

fn layer() -> LayerInfo {
    LayerInfo { layer: 3, num_layers: 4, hidden: 64, num_experts: 8, expert_intermediate: vec![128; 8], shared_experts: 0, tokens_per_batch: 16 }
}

fn logits() -> TokenLogits {
    TokenLogits { tokens: 16, experts: 8, values: (0..128).map(|i| (i % 7) as f32).collect() }
}

/// The faulty-router fixture, configured with `fault`.
fn faulty(engine: &PluginEngine, fault: &str, limits: PluginLimits) -> Result<RouterPlugin, PluginError> {
    let component = engine.load_file(support::plugin("faulty-router")).expect("load fixture");
    RouterPlugin::new(engine, &component, &format!("fault = \"{fault}\""), 0, limits)
}

/// Load the faulty router with `fault`, call spec (and route where the spec asks), and
/// return the first error.
fn fault(engine: &PluginEngine, fault: &str, limits: PluginLimits) -> (PluginError, Duration) {
    let start = Instant::now();
    let result = faulty(engine, fault, limits).and_then(|mut router| {
        router.instance().set_step(Some(41));
        let spec = router.spec(&layer())?;
        assert!(spec.per_token_route, "fixture {fault} should have failed in spec");
        router.route(&layer(), &logits()).map(|_| ())
    });
    let elapsed = start.elapsed();
    (result.expect_err(&format!("fixture {fault} must fail")), elapsed)
}

/// After any fault, a good plugin in the same engine still works.
fn good_plugin_still_works(engine: &PluginEngine) {
    let component = engine.load_file(support::plugin("topk-softmax")).unwrap();
    let mut router = RouterPlugin::new(engine, &component, "top_k = 2", 0, PluginLimits::default()).unwrap();
    assert_eq!(router.spec(&layer()).unwrap().top_k, 2);
    let mut healthy = faulty(engine, "none", PluginLimits::default()).unwrap();
    assert_eq!(healthy.spec(&layer()).unwrap().top_k, 2);
}

#[test]
fn trap_is_a_typed_trap_with_the_panic_message() {
    let engine = PluginEngine::new().unwrap();
    let (err, _) = fault(&engine, "trap", PluginLimits::default());
    match &err.cause {
        FaultCause::Trap { panic: Some(msg), .. } => assert!(msg.contains("deliberate trap in spec for layer 3"), "{msg}"),
        other => panic!("expected a trap with the panic message, got {other:?}"),
    }
    assert_eq!((err.plugin.as_str(), err.call.as_str(), err.step), ("faulty-router", "spec", Some(41)));
    let shown = err.to_string();
    assert!(shown.contains("faulty-router") && shown.contains("sha256:") && shown.contains("`spec`") && shown.contains("step 41"), "{shown}");
    good_plugin_still_works(&engine);
}

#[test]
fn endless_loop_is_stopped_by_fuel_quickly() {
    let engine = PluginEngine::new().unwrap();
    let limits = PluginLimits { deadline: Duration::from_secs(30), ..PluginLimits::default() };
    let (err, elapsed) = fault(&engine, "loop", limits);
    // Fuel is counted, not timed: whatever the machine's load, it ends the loop first
    // (the deadline is far away). Speed is not asserted here.
    assert!(matches!(err.cause, FaultCause::OutOfFuel { budget: PluginLimits::DEFAULT_FUEL }), "{err} after {elapsed:?}");
    good_plugin_still_works(&engine);
}

#[test]
fn spinning_with_unlimited_fuel_is_stopped_by_the_deadline() {
    let engine = PluginEngine::new().unwrap();
    let limits = PluginLimits { fuel_per_call: None, deadline: Duration::from_millis(500), ..PluginLimits::default() };
    let (err, elapsed) = fault(&engine, "spin", limits);
    assert!(matches!(err.cause, FaultCause::Deadline { .. }), "{err}");
    // A loaded machine may fire the deadline late, never early.
    assert!(elapsed >= Duration::from_millis(450), "deadline fired after {elapsed:?}");
    good_plugin_still_works(&engine);
}

#[test]
fn endless_allocation_hits_the_memory_cap() {
    let engine = PluginEngine::new().unwrap();
    let limits = PluginLimits { memory_bytes: 32 << 20, ..PluginLimits::default() };
    let (err, _) = fault(&engine, "alloc", limits);
    match err.cause {
        FaultCause::MemoryLimit { requested, cap } => assert!(cap == 32 << 20 && requested > cap),
        other => panic!("expected a memory fault, got {other:?}"),
    }
    good_plugin_still_works(&engine);
}

#[test]
fn invalid_outputs_are_each_their_own_violation() {
    let engine = PluginEngine::new().unwrap();
    let cases: [(&str, fn(&OutputViolation) -> bool); 4] = [
        ("nan", |v| matches!(v, OutputViolation::NotFinite { field, .. } if field == "spec.scaling")),
        ("too-many-experts", |v| matches!(v, OutputViolation::OutOfRange { field, value, .. } if field == "spec.top-k" && *value == 9.0)),
        ("expert-out-of-range", |v| matches!(v, OutputViolation::IndexOutOfRange { index: 8, bound: 8, .. })),
        ("wrong-length", |v| matches!(v, OutputViolation::WrongLength { expected: 32, got: 31, .. })),
    ];
    for (name, expected) in cases {
        let (err, _) = fault(&engine, name, PluginLimits::default());
        match &err.cause {
            FaultCause::InvalidOutput(v) => assert!(expected(v), "{name}: unexpected violation {v:?}"),
            other => panic!("{name}: expected invalid output, got {other:?}"),
        }
        assert_eq!(err.code(), "invalid-output");
    }
    good_plugin_still_works(&engine);
}

#[test]
fn rejected_config_carries_the_plugins_message() {
    let engine = PluginEngine::new().unwrap();
    let (err, _) = fault(&engine, "reject-config", PluginLimits::default());
    match &err.cause {
        FaultCause::ConfigRejected { message } => assert!(message.contains("rejected on purpose")),
        other => panic!("expected a config rejection, got {other:?}"),
    }
    assert_eq!(err.call, "configure");
    let component = engine.load_file(support::plugin("constant")).unwrap();
    let err = AuxSchedulePlugin::new(&engine, &component, "load_balanc = 0.1", 0, PluginLimits::default()).err().unwrap();
    assert!(matches!(&err.cause, FaultCause::ConfigRejected { message } if message.contains("load_balanc")), "{err}");
    good_plugin_still_works(&engine);
}

#[test]
fn a_faulted_instance_is_poisoned_not_reentered() {
    let engine = PluginEngine::new().unwrap();
    let mut router = faulty(&engine, "trap", PluginLimits::default()).unwrap();
    assert_eq!(router.spec(&layer()).unwrap_err().code(), "trap");
    assert!(router.instance().is_poisoned());
    assert_eq!(router.spec(&layer()).unwrap_err().code(), "poisoned");
}

#[test]
fn wrong_version_wrong_kind_and_forbidden_imports_are_refused_at_load() {
    let engine = PluginEngine::new().unwrap();
    let err = engine.load_file(support::plugin("future-router")).err().expect("a 1.0.0 component must be refused");
    match &err.cause {
        FaultCause::WrongVersion { found, supported } => assert_eq!((found.as_str(), *supported), ("1.0.0", "0.1.0")),
        other => panic!("expected a version error, got {other:?}"),
    }
    let component = engine.load_file(support::plugin("constant")).unwrap();
    let err = RouterPlugin::new(&engine, &component, "", 0, PluginLimits::default()).err().expect("an aux schedule is no router");
    assert!(matches!(err.cause, FaultCause::WrongKind { .. }), "{err}");
    let err = engine.load_file(support::plugin("sneaky-router")).err().expect("a component importing wasi:random must be refused");
    match &err.cause {
        FaultCause::ForbiddenImport { import } => assert_eq!(import, "wasi:random/random@0.2.0"),
        other => panic!("expected a forbidden import, got {other:?}"),
    }
    let err = engine.load_bytes("garbage.wasm", b"\0asm\x01\0\0\0").err().expect("a core module is no component");
    assert_eq!(err.code(), "not-a-component");
    good_plugin_still_works(&engine);
}

#[test]
fn logs_and_metrics_reach_the_host_bounded() {
    let engine = PluginEngine::new().unwrap();
    let mut router = faulty(&engine, "none", PluginLimits::default()).unwrap();
    router.spec(&layer()).unwrap();
    router.spec(&layer()).unwrap();
    assert_eq!(router.instance().drain_metrics(), vec![("spec-calls".to_string(), 1.0), ("spec-calls".to_string(), 2.0)]);
    let logs = router.instance().drain_logs();
    assert_eq!(logs.len(), 2);
    assert_eq!(logs[0].message, "spec for layer 3");
    assert!(router.instance().drain_metrics().is_empty(), "draining empties the buffer");

    let mut flood = faulty(&engine, "log-flood", PluginLimits::default()).unwrap();
    flood.spec(&layer()).expect("a chatty plugin still works");
    let logs = flood.instance().drain_logs();
    assert!(logs.len() <= 256, "{} lines kept", logs.len());
    assert!(logs.iter().all(|l| l.message.len() <= 4096 + 4), "long lines are cut");
}

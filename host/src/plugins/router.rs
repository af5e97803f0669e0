//! The router adapter: typed, validated calls into a routing-policy plugin.

use super::conformance::{self, Log, describe_spec};
use super::error::{OutputViolation, PluginError};
use super::host_api::PluginState;
use super::kind::{Kind, Plugin, PluginKind, ScaffoldTemplates, lifecycle_calls};
use super::wit::router;
pub use super::wit::router_types::{Capacity, DropPolicy, LayerInfo, LogitNorm, RouteAssignment, RouterSpec, RouterUpdate, RoutingMode, ScoreFunction, SelectionBias, TokenLogits, TopkOrder};
pub use super::wit::types::LayerStats;
use super::wit::types::PluginKind as WitKind;
use wasmtime::Store;
use wasmtime::component::{Instance, InstancePre};

/// Largest `scaling` of the gates and largest Skywork λ a spec may give: beyond these the
/// softmax saturates to one-hot and the router's gradient vanishes (a scaling of 1e38
/// pins the loss at ln(vocabulary)).
pub const MAX_SCALING: f64 = 100.0;
/// Largest capacity factor: more than every token on every expert means nothing more.
pub const MAX_CAPACITY_FACTOR: f64 = 1024.0;
/// Largest change of one selection-bias entry in one `on-step` (aux-loss-free balancing
/// moves a bias by about 1e-3 per step).
pub const MAX_BIAS_DELTA: f64 = 100.0;
/// Largest magnitude a selection-bias entry may reach by adding up deltas; it keeps the
/// host's running sums, and so every checkpoint, finite.
pub const MAX_SELECTION_BIAS: f64 = 1e4;

/// The router kind: routing policies for MoE layers.
pub struct RouterKind;

impl Kind for RouterKind {
    const KIND: PluginKind = PluginKind::Router;
    const NAME: &'static str = "router";
    const RUN_ROLE: Option<&'static str> = Some("router");
    const WIT: WitKind = WitKind::Router;
    const TEMPLATES: ScaffoldTemplates =
        ScaffoldTemplates { rust: include_str!("templates/router.rs.tmpl"), python: include_str!("templates/router.py.tmpl"), javascript: include_str!("templates/router.js.tmpl") };
    lifecycle_calls!(router::Guest);

    fn load(pre: &InstancePre<PluginState>, store: &mut Store<PluginState>, instance: &Instance) -> wasmtime::Result<Self::Guest> {
        router::GuestIndices::new(pre)?.load(store, instance)
    }

    /// Specs for two synthetic layers, `on-step` with balanced then skewed loads, and
    /// `route` wherever a spec asks for per-token routing.
    fn conformance(p: &mut RouterPlugin, log: &mut Log<'_>) -> Result<(), PluginError> {
        let layers = conformance::synthetic_layers();
        let mut specs = Vec::new();
        for layer in &layers {
            let spec = p.spec(layer)?;
            log(p.instance(), format!("spec(layer {}, {} experts)", layer.layer, layer.num_experts), describe_spec(&spec));
            specs.push(spec);
        }
        let ids: Vec<u32> = layers.iter().map(|l| l.layer).collect();
        for (step, skewed) in [(1, false), (2, true)] {
            let mut stats = conformance::synthetic_stats(&ids, 0, skewed);
            for (s, l) in stats.iter_mut().zip(&layers) {
                s.expert_load = conformance::loads(l.num_experts, s.tokens * 2, skewed);
            }
            let updates = p.on_step(step, &stats, &layers)?;
            log(p.instance(), format!("on-step(step {step}, {} loads)", if skewed { "skewed" } else { "balanced" }), format!("{} updates", updates.len()));
        }
        p.instance().set_step(None);
        for (layer, spec) in layers.iter().zip(&specs) {
            if spec.per_token_route {
                let logits = conformance::synthetic_logits(64, layer.num_experts);
                let a = p.route(layer, &logits)?;
                log(p.instance(), format!("route(layer {}, 64 tokens)", layer.layer), format!("top-{} assignment", a.top_k));
            }
        }
        Ok(())
    }

    /// The spec again after the state round trip: a restored router still answers.
    fn after_state_round_trip(p: &mut RouterPlugin, log: &mut Log<'_>) -> Result<(), PluginError> {
        let spec = p.spec(&conformance::synthetic_layers()[0])?;
        log(p.instance(), "spec(layer 0) after load-state".into(), describe_spec(&spec));
        Ok(())
    }
}

/// A routing-policy plugin. Every output is validated against the layer it is for.
pub type RouterPlugin = Plugin<RouterKind>;

impl RouterPlugin {
    /// The routing spec for `layer`, validated.
    pub fn spec(&mut self, layer: &LayerInfo) -> Result<RouterSpec, PluginError> {
        let guest = &self.guest;
        let sandbox = &mut self.instance.sandbox;
        let spec = sandbox.call_fallible("spec", |store| guest.call_spec(store, layer))?;
        validate_spec(&spec, layer, "spec").map_err(|v| sandbox.invalid("spec", v))?;
        Ok(spec)
    }

    /// Updates after `step`, validated against `layers` (the MoE layers' infos).
    pub fn on_step(&mut self, step: u64, stats: &[LayerStats], layers: &[LayerInfo]) -> Result<Vec<RouterUpdate>, PluginError> {
        self.instance.set_step(Some(step));
        let guest = &self.guest;
        let sandbox = &mut self.instance.sandbox;
        let updates = sandbox.call_fallible("on-step", |store| guest.call_on_step(store, step, stats))?;
        validate_updates(&updates, layers).map_err(|v| sandbox.invalid("on-step", v))?;
        Ok(updates)
    }

    /// The fault for an `on-step` output that passed [`validate_updates`] but does not fit
    /// the host's state (e.g. a selection bias summed out of range).
    pub fn invalid_update(&self, violation: OutputViolation) -> PluginError {
        self.instance.sandbox.invalid("on-step", violation)
    }

    /// Per-token routing of one micro-batch, validated.
    pub fn route(&mut self, layer: &LayerInfo, logits: &TokenLogits) -> Result<RouteAssignment, PluginError> {
        let guest = &self.guest;
        let sandbox = &mut self.instance.sandbox;
        let assignment = sandbox.call_fallible("route", |store| guest.call_route(store, layer, logits))?;
        validate_assignment(&assignment, logits).map_err(|v| sandbox.invalid("route", v))?;
        Ok(assignment)
    }
}

/// Check a spec against the layer it will drive.
pub fn validate_spec(spec: &RouterSpec, layer: &LayerInfo, field: &str) -> Result<(), OutputViolation> {
    let f = |name: &'static str| {
        let field = field.to_string();
        move || format!("{field}.{name}")
    };
    if spec.mode == RoutingMode::TokenChoice {
        OutputViolation::within(f("top-k"), spec.top_k as f64, 1.0, layer.num_experts as f64, &format!("1 ..= {} experts of layer {}", layer.num_experts, layer.layer))?;
    }
    OutputViolation::within(f("scaling"), spec.scaling as f64, f64::MIN_POSITIVE, MAX_SCALING, &format!("0 < scaling <= {MAX_SCALING}"))?;
    if let LogitNorm::Skywork(lambda) = spec.logit_norm {
        OutputViolation::within(f("logit-norm.skywork"), lambda as f64, f64::MIN_POSITIVE, MAX_SCALING, &format!("0 < lambda <= {MAX_SCALING}"))?;
    }
    if let Some(capacity) = &spec.capacity {
        OutputViolation::within(f("capacity.factor"), capacity.factor as f64, f64::MIN_POSITIVE, MAX_CAPACITY_FACTOR, &format!("0 < factor <= {MAX_CAPACITY_FACTOR}"))?;
    }
    if spec.mode == RoutingMode::ExpertChoice {
        if spec.capacity.is_none() {
            return Err(OutputViolation::Inconsistent { field: f("capacity")(), reason: "expert-choice routing needs a capacity factor".into() });
        }
        if spec.per_token_route {
            return Err(OutputViolation::Inconsistent { field: f("per-token-route")(), reason: "per-token routing is token choice; it cannot be combined with expert-choice".into() });
        }
    }
    if spec.shared_experts > layer.shared_experts {
        return Err(OutputViolation::OutOfRange {
            field: f("shared-experts")(),
            value: spec.shared_experts as f64,
            allowed: format!("<= {} shared experts in layer {}", layer.shared_experts, layer.layer),
        });
    }
    if spec.shared_expert_gate && spec.shared_experts == 0 {
        return Err(OutputViolation::Inconsistent { field: f("shared-expert-gate")(), reason: "a gate for shared experts, but no shared experts are used".into() });
    }
    Ok(())
}

/// Check `on-step` updates: known layers, one bias delta per expert within
/// ±[`MAX_BIAS_DELTA`], valid specs.
pub fn validate_updates(updates: &[RouterUpdate], layers: &[LayerInfo]) -> Result<(), OutputViolation> {
    for (i, update) in updates.iter().enumerate() {
        let field = format!("updates[{i}]");
        let layer = layers.iter().find(|l| l.layer == update.layer).ok_or_else(|| OutputViolation::Unknown { field: format!("{field}.layer"), what: "MoE layer", name: update.layer.to_string() })?;
        if let Some(delta) = &update.bias_delta {
            OutputViolation::length(|| format!("{field}.bias-delta"), layer.num_experts as usize, delta.len())?;
            for (e, &d) in delta.iter().enumerate() {
                OutputViolation::within(|| format!("{field}.bias-delta[{e}]"), d as f64, -MAX_BIAS_DELTA, MAX_BIAS_DELTA, &format!("|delta| <= {MAX_BIAS_DELTA}"))?;
            }
        }
        if let Some(spec) = &update.spec {
            validate_spec(spec, layer, &format!("{field}.spec"))?;
        }
    }
    Ok(())
}

/// Check that applying `updates` keeps every running selection bias within
/// ±[`MAX_SELECTION_BIAS`]; `bias_of(layer)` gives a layer's current biases. Each delta
/// may be in range while their sum over many steps is not.
pub fn validate_bias_sums<'a>(updates: &[RouterUpdate], bias_of: impl Fn(u32) -> Option<&'a [f32]>) -> Result<(), OutputViolation> {
    for (i, update) in updates.iter().enumerate() {
        let (Some(delta), Some(bias)) = (&update.bias_delta, bias_of(update.layer)) else { continue };
        for (e, (b, d)) in bias.iter().zip(delta).enumerate() {
            let field = || format!("updates[{i}].bias-delta[{e}] (layer {} selection bias {b} + {d})", update.layer);
            OutputViolation::within(field, *b as f64 + *d as f64, -MAX_SELECTION_BIAS, MAX_SELECTION_BIAS, &format!("a running selection bias stays within ±{MAX_SELECTION_BIAS}"))?;
        }
    }
    Ok(())
}

/// Check a per-token assignment: lengths, expert indices in range and distinct per
/// token, finite weights.
pub fn validate_assignment(a: &RouteAssignment, logits: &TokenLogits) -> Result<(), OutputViolation> {
    OutputViolation::within(|| "route.top-k".into(), a.top_k as f64, 1.0, logits.experts as f64, &format!("1 ..= {} experts", logits.experts))?;
    let slots = logits.tokens as usize * a.top_k as usize;
    OutputViolation::length(|| "route.experts".into(), slots, a.experts.len())?;
    OutputViolation::length(|| "route.weights".into(), slots, a.weights.len())?;
    for (t, chosen) in a.experts.chunks_exact(a.top_k as usize).enumerate() {
        for (j, &e) in chosen.iter().enumerate() {
            let slot = t * a.top_k as usize + j;
            OutputViolation::index(|| format!("route.experts[{slot}] (token {t})"), e as u64, logits.experts as u64)?;
            if chosen[..j].contains(&e) {
                return Err(OutputViolation::Duplicate { field: format!("route.experts of token {t}"), index: e as u64 });
            }
        }
    }
    for (slot, &w) in a.weights.iter().enumerate() {
        OutputViolation::finite(|| format!("route.weights[{slot}]"), w as f64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer() -> LayerInfo {
        LayerInfo { layer: 1, num_layers: 2, hidden: 8, num_experts: 4, expert_intermediate: vec![16; 4], shared_experts: 1, tokens_per_batch: 8 }
    }

    fn spec() -> RouterSpec {
        RouterSpec::softmax_topk(2)
    }

    #[test]
    fn specs_are_checked_against_the_layer() {
        assert!(validate_spec(&spec(), &layer(), "spec").is_ok());
        let bad = [
            RouterSpec { top_k: 0, ..spec() },
            RouterSpec { top_k: 5, ..spec() },
            RouterSpec { scaling: f32::INFINITY, ..spec() },
            RouterSpec { scaling: 1e38, ..spec() },
            RouterSpec { logit_norm: LogitNorm::Skywork(1e30), ..spec() },
            RouterSpec { logit_norm: LogitNorm::Skywork(0.0), ..spec() },
            RouterSpec { mode: RoutingMode::ExpertChoice, ..spec() },
            RouterSpec { shared_experts: 2, ..spec() },
            RouterSpec { shared_expert_gate: true, ..spec() },
        ];
        for s in bad {
            assert!(validate_spec(&s, &layer(), "spec").is_err(), "{s:?} accepted");
        }
    }

    #[test]
    fn updates_need_known_layers_and_one_finite_delta_per_expert() {
        let ok = RouterUpdate { layer: 1, bias_delta: Some(vec![0.001, -0.001, 0.0, 0.0]), spec: None };
        assert!(validate_updates(&[ok], &[layer()]).is_ok());
        let unknown = RouterUpdate { layer: 0, bias_delta: None, spec: None };
        assert!(matches!(validate_updates(&[unknown], &[layer()]), Err(OutputViolation::Unknown { .. })));
        let short = RouterUpdate { layer: 1, bias_delta: Some(vec![0.0; 3]), spec: None };
        assert!(matches!(validate_updates(&[short], &[layer()]), Err(OutputViolation::WrongLength { expected: 4, got: 3, .. })));
        let nan = RouterUpdate { layer: 1, bias_delta: Some(vec![0.0, f32::NAN, 0.0, 0.0]), spec: None };
        assert!(matches!(validate_updates(&[nan], &[layer()]), Err(OutputViolation::NotFinite { .. })));
        let huge = RouterUpdate { layer: 1, bias_delta: Some(vec![0.0, 3e38, 0.0, 0.0]), spec: None };
        assert!(matches!(validate_updates(&[huge], &[layer()]), Err(OutputViolation::OutOfRange { .. })));
    }

    #[test]
    fn running_biases_stay_in_range_even_when_each_delta_is() {
        let update = |d: f32| RouterUpdate { layer: 1, bias_delta: Some(vec![d, 0.0, 0.0, 0.0]), spec: None };
        let mut bias = vec![0f32; 4];
        let mut steps = 0;
        // 99 per step is a valid delta; the 102nd would take the sum past 1e4.
        while validate_bias_sums(&[update(99.0)], |l| (l == 1).then_some(bias.as_slice())).is_ok() {
            assert!(validate_updates(&[update(99.0)], &[layer()]).is_ok());
            bias[0] += 99.0;
            steps += 1;
        }
        assert_eq!(steps, 101);
        let err = validate_bias_sums(&[update(99.0)], |_| Some(bias.as_slice())).unwrap_err().to_string();
        assert!(err.contains("updates[0].bias-delta[0] (layer 1 selection bias 9999") && err.contains("within ±10000"), "{err}");
        assert!(validate_bias_sums(&[update(-99.0)], |_| Some(bias.as_slice())).is_ok());
    }

    #[test]
    fn assignments_need_distinct_in_range_experts() {
        let logits = TokenLogits { tokens: 2, experts: 4, values: vec![0.0; 8] };
        let ok = RouteAssignment { top_k: 2, experts: vec![0, 3, 2, 1], weights: vec![0.5; 4] };
        assert!(validate_assignment(&ok, &logits).is_ok());
        let dup = RouteAssignment { top_k: 2, experts: vec![0, 0, 2, 1], weights: vec![0.5; 4] };
        assert!(matches!(validate_assignment(&dup, &logits), Err(OutputViolation::Duplicate { .. })));
    }
}

//! Plugin-output cases for the echo fixtures: what each case asks the echo to return
//! (valid, then pushed to edges), the params that ask for it, and the contract every
//! accepted output must keep, as the WIT comments state it.

use std::collections::BTreeMap;

use recast::plugins::aux_schedule::LayerCoefficients;
use recast::plugins::router::{Capacity, DropPolicy, LayerInfo, LayerStats, LogitNorm, RouteAssignment, RouterSpec, RouterUpdate, RoutingMode, ScoreFunction, SelectionBias, TokenLogits, TopkOrder};
use recast::plugins::sampler::{DomainStats, Mixture, SampleRequest};
use recast::plugins::{AuxSchedulePlugin, PluginComponent, PluginEngine, PluginError, PluginInstance, PluginLimits, RouterPlugin, SamplerPlugin};

use crate::harness::Rng;
use crate::mutate::{Case, shorten};

/// A list as the echo fixtures take it: `values`, repeated to `len` entries when given.
#[derive(Clone, Debug)]
struct Compact<T> {
    values: Vec<T>,
    len: Option<u32>,
}

impl<T: Clone + Default> Compact<T> {
    pub fn exact(values: Vec<T>) -> Self {
        Compact { values, len: None }
    }

    /// What the fixture expands it to (the same rule as tests/fixtures/echo-common).
    pub fn expand(&self) -> Vec<T> {
        match self.len {
            None => self.values.clone(),
            Some(n) if self.values.is_empty() => vec![T::default(); n as usize],
            Some(n) => self.values.iter().cycle().take(n as usize).cloned().collect(),
        }
    }
}

/// A float as TOML spells it (`nan`, `inf`, always with a `.` or an exponent).
fn toml_f32(x: f32) -> String {
    if x.is_nan() {
        "nan".into()
    } else if x.is_infinite() {
        if x > 0.0 { "inf".into() } else { "-inf".into() }
    } else {
        format!("{:?}", x as f64)
    }
}

fn toml_list<T: Clone + Default>(list: &Compact<T>, item: impl Fn(&T) -> String) -> String {
    let values: Vec<String> = list.values.iter().map(item).collect();
    match list.len {
        Some(n) => format!("{{ values = [{}], len = {n} }}", values.join(", ")),
        None => format!("{{ values = [{}] }}", values.join(", ")),
    }
}

/// A spec as the echo router's params spell it (the WIT names of its enums).
fn toml_spec(s: &RouterSpec) -> String {
    let mut t = format!(
        "{{ score = \"{}\", top_k = {}, order = \"{}\", renormalize = {}, scaling = {}, mode = \"{}\", shared_experts = {}, shared_expert_gate = {}, selection_bias = \"{}\", per_token_route = {}",
        match s.score {
            ScoreFunction::Softmax => "softmax",
            ScoreFunction::Sigmoid => "sigmoid",
        },
        s.top_k,
        match s.order {
            TopkOrder::SoftmaxThenTopk => "softmax-then-topk",
            TopkOrder::TopkThenSoftmax => "topk-then-softmax",
        },
        s.renormalize,
        toml_f32(s.scaling),
        match s.mode {
            RoutingMode::TokenChoice => "token-choice",
            RoutingMode::ExpertChoice => "expert-choice",
        },
        s.shared_experts,
        s.shared_expert_gate,
        match s.selection_bias {
            SelectionBias::None => "none",
            SelectionBias::Learned => "learned",
            SelectionBias::Plugin => "plugin",
        },
        s.per_token_route,
    );
    if let LogitNorm::Skywork(lambda) = s.logit_norm {
        t.push_str(&format!(", skywork = {}", toml_f32(lambda)));
    }
    if let Some(c) = &s.capacity {
        let policy = match c.drop_policy {
            DropPolicy::Probs => "probs",
            DropPolicy::Position => "position",
        };
        t.push_str(&format!(", capacity_factor = {}, drop_policy = \"{policy}\"", toml_f32(c.factor)));
    }
    t + " }"
}

/// Host calls an echo makes besides answering, and whether it fails on purpose.
#[derive(Clone, Debug, Default)]
struct Noise {
    fail: bool,
    log_lines: u32,
    log_bytes: u32,
    metrics: Vec<f32>,
    metric_name_len: u32,
}

impl Noise {
    pub fn generate(case: &mut Case) -> Self {
        if !case.rng.chance(0.1) {
            return Noise::default();
        }
        let noise = Noise {
            fail: case.rng.chance(0.2),
            log_lines: *case.rng.pick(&[0, 1, 300, 2000]),
            log_bytes: *case.rng.pick(&[0, 10, 4097, 65536]),
            metrics: (0..*case.rng.pick(&[0, 3, 5000])).map(|_| case.edge_f32()).collect(),
            metric_name_len: *case.rng.pick(&[0, 8, 10_000]),
        };
        case.note(format!("noise {noise:?}").chars().take(200).collect::<String>());
        noise
    }

    pub fn toml(&self) -> String {
        let fail = if self.fail { "fail = \"asked to fail\"\n" } else { "" };
        let metrics: Vec<String> = self.metrics.iter().map(|&m| toml_f32(m)).collect();
        format!("[noise]\n{fail}log_lines = {}\nlog_bytes = {}\nmetrics = [{}]\nmetric_name = \"{}\"\n", self.log_lines, self.log_bytes, metrics.join(", "), "m".repeat(self.metric_name_len as usize))
    }
}

/// Log lines and metrics the host kept stay within its documented caps.
fn check_host_imports(instance: &mut PluginInstance) -> Result<(), Broken> {
    let logs = instance.drain_logs();
    if logs.len() > 256 {
        return Err(("host-import-caps", format!("kept {} log lines, over the cap of 256", logs.len())));
    }
    if let Some(long) = logs.iter().find(|l| l.message.len() > 4096 + 8) {
        return Err(("host-import-caps", format!("kept a {}-byte log line, over the cap of 4 KiB", long.message.len())));
    }
    let metrics = instance.drain_metrics();
    if metrics.len() > 4096 || metrics.iter().any(|(name, _)| name.len() > 4096 + 8) {
        return Err(("host-import-caps", format!("kept {} metrics (cap 4096) or an overlong name", metrics.len())));
    }
    Ok(())
}

/// What a router case asks the echo router to return, and the layers it asks about.
pub struct RouterCase {
    layers: Vec<LayerInfo>,
    spec: RouterSpec,
    updates: Vec<(u32, Option<Compact<f32>>, Option<RouterSpec>)>,
    logits: TokenLogits,
    route: (u32, Compact<u32>, Compact<f32>),
    noise: Noise,
}

pub struct AuxCase {
    moe_layers: Vec<u32>,
    /// Entries returned: (layer, or the asked layer at that position; load balance; z-loss).
    coefficients: Compact<(Option<u32>, f32, f32)>,
    noise: Noise,
}

pub struct SamplerCase {
    request: SampleRequest,
    weights: Option<Compact<f32>>,
    counts: Option<Compact<u32>>,
    noise: Noise,
}

pub enum OutputCase {
    Router(RouterCase),
    Aux(AuxCase),
    Sampler(SamplerCase),
}

/// A valid spec for layers with at least `experts` experts and `shared` shared ones,
/// then 0 to 2 fields set to edges (k = 0, k > E, NaN or infinite factors, expert choice
/// without a capacity, a gate without shared experts, ...).
fn router_spec(case: &mut Case, experts: u32, shared: u32) -> RouterSpec {
    let capacity = case.rng.chance(0.3).then(|| Capacity { factor: 0.5 + case.rng.unit() * 2.0, drop_policy: if case.rng.chance(0.5) { DropPolicy::Probs } else { DropPolicy::Position } });
    let expert_choice = capacity.is_some() && case.rng.chance(0.3);
    let shared_experts = case.rng.range(0, shared as u64) as u32;
    let mut spec = RouterSpec {
        score: if case.rng.chance(0.5) { ScoreFunction::Softmax } else { ScoreFunction::Sigmoid },
        logit_norm: if case.rng.chance(0.2) { LogitNorm::Skywork(0.5 + case.rng.unit()) } else { LogitNorm::None },
        top_k: case.rng.range(1, experts as u64) as u32,
        order: if case.rng.chance(0.5) { TopkOrder::SoftmaxThenTopk } else { TopkOrder::TopkThenSoftmax },
        renormalize: case.rng.chance(0.5),
        scaling: 0.5 + case.rng.unit() * 2.0,
        mode: if expert_choice { RoutingMode::ExpertChoice } else { RoutingMode::TokenChoice },
        capacity,
        shared_experts,
        shared_expert_gate: shared_experts > 0 && case.rng.chance(0.5),
        selection_bias: *case.rng.pick(&[SelectionBias::None, SelectionBias::Learned, SelectionBias::Plugin]),
        per_token_route: !expert_choice && case.rng.chance(0.2),
    };
    for _ in 0..case.rng.below(3) {
        match case.rng.below(8) {
            0 => spec.top_k = case.u32_near(experts),
            1 => spec.scaling = case.edge_f32(),
            2 => spec.logit_norm = LogitNorm::Skywork(case.edge_f32()),
            3 => spec.capacity = Some(Capacity { factor: case.edge_f32(), drop_policy: DropPolicy::Probs }),
            4 => (spec.mode, spec.capacity) = (RoutingMode::ExpertChoice, None),
            5 => (spec.mode, spec.per_token_route) = (RoutingMode::ExpertChoice, true),
            6 => spec.shared_experts = case.u32_near(shared),
            _ => (spec.shared_experts, spec.shared_expert_gate) = (0, true),
        }
        case.note(format!("spec {}", toml_spec(&spec)));
    }
    spec
}

/// A list of `n` values from `valid`, then maybe one value set to an edge and maybe
/// its length changed (0, ±1, 100k or 1M entries through `len`).
fn compact_list<T: Clone + Default + std::fmt::Debug>(case: &mut Case, what: &str, n: usize, mut valid: impl FnMut(&mut Rng) -> T, edge: impl FnOnce(&mut Case) -> T) -> Compact<T> {
    let mut values: Vec<T> = (0..n).map(|_| valid(&mut case.rng)).collect();
    if !values.is_empty() && case.rng.chance(0.25) {
        let i = case.rng.index(values.len());
        values[i] = edge(case);
        case.note(format!("{what}[{i}] = {:?}", values[i]));
    }
    if case.rng.chance(0.2) {
        let huge = *case.rng.pick(&[100_000, 100_000, 1_000_000]);
        let len = case.len_near(n, huge) as u32;
        case.note(format!("{what}: {len} entries for {n}"));
        if values.is_empty() {
            values.push(valid(&mut case.rng));
        }
        return Compact { values, len: Some(len) };
    }
    Compact::exact(values)
}

fn router_case(case: &mut Case) -> RouterCase {
    let layers: Vec<LayerInfo> = (0..case.rng.range(1, 3))
        .map(|i| {
            let experts = *case.rng.pick(&[1u32, 2, 4, 8, 64]);
            LayerInfo {
                layer: 2 * i as u32 + 1,
                num_layers: 8,
                hidden: 16,
                num_experts: experts,
                expert_intermediate: vec![32; experts as usize],
                shared_experts: *case.rng.pick(&[0, 0, 1, 2]),
                tokens_per_batch: 64,
            }
        })
        .collect();
    let min_experts = layers.iter().map(|l| l.num_experts).min().unwrap_or(1);
    let min_shared = layers.iter().map(|l| l.shared_experts).min().unwrap_or(0);
    let spec = router_spec(case, min_experts, min_shared);
    let n_updates = *case.rng.pick(&[0usize, 1, layers.len(), layers.len(), 1000]);
    let updates = (0..n_updates)
        .map(|i| {
            let layer = &layers[i % layers.len()];
            let id = if case.rng.chance(0.05) { case.u32_near(layer.layer) } else { layer.layer };
            let bias = (n_updates < 1000 && case.rng.chance(0.7)).then(|| compact_list(case, "bias", layer.num_experts as usize, |r| (r.unit() - 0.5) * 1e-2, Case::edge_f32));
            let spec = (n_updates < 1000 && case.rng.chance(0.2)).then(|| router_spec(case, layer.num_experts, layer.shared_experts));
            (id, bias, spec)
        })
        .collect();
    // Per-token routing of the first layer's logits: k distinct experts per token.
    let experts = layers[0].num_experts;
    let tokens = *case.rng.pick(&[0u32, 1, 5, 32]);
    let logits = TokenLogits { tokens, experts, values: (0..tokens * experts).map(|_| case.rng.unit()).collect() };
    let k = case.rng.range(1, experts as u64) as u32;
    let mut chosen = Vec::new();
    for _ in 0..tokens {
        let mut all: Vec<u32> = (0..experts).collect();
        for j in 0..k as usize {
            let pick = j + case.rng.index(all.len() - j);
            all.swap(j, pick);
        }
        chosen.extend_from_slice(&all[..k as usize]);
    }
    let mut it = chosen.into_iter();
    let picks = compact_list(case, "route.experts", (tokens * k) as usize, |_| it.next().unwrap_or(0), |c| c.u32_near(experts));
    let weights = compact_list(case, "route.weights", (tokens * k) as usize, |r| r.unit(), Case::edge_f32);
    let route_k = if case.rng.chance(0.1) { case.u32_near(k) } else { k };
    RouterCase { layers, spec, updates, logits, route: (route_k, picks, weights), noise: Noise::generate(case) }
}

fn aux_case(case: &mut Case) -> AuxCase {
    let n = *case.rng.pick(&[0usize, 1, 3, 64]);
    let moe_layers: Vec<u32> = (0..n as u32).map(|i| 2 * i + 1).collect();
    let mut coefficients = compact_list(case, "coefficients", n, |r| (None, r.unit() * 1e-2, r.unit() * 1e-3), |c| (None, c.edge_f32(), c.edge_f32()));
    if !coefficients.values.is_empty() && case.rng.chance(0.1) {
        let i = case.rng.index(coefficients.values.len());
        let layer = case.u32_near(moe_layers.get(i).copied().unwrap_or(0));
        case.note(format!("coefficients[{i}].layer = {layer}"));
        coefficients.values[i].0 = Some(layer);
    }
    AuxCase { moe_layers, coefficients, noise: Noise::generate(case) }
}

fn sampler_case(case: &mut Case) -> SamplerCase {
    let n = *case.rng.pick(&[0usize, 1, 3, 10]);
    let batch = *case.rng.pick(&[0u32, 1, 8, 64, u32::MAX]);
    let domains = (0..n)
        .map(|i| DomainStats {
            domain: i as u32,
            name: format!("d{i}"),
            tokens_available: case.rng.below(1 << 20),
            tokens_seen: 0,
            train_loss: Some(case.rng.unit()),
            valid_loss: None,
            reference_loss: None,
        })
        .collect();
    let request = SampleRequest { step: case.rng.below(1000), batch_sequences: batch, domains };
    if case.rng.chance(0.5) {
        let weights = compact_list(case, "weights", n, |r| r.unit(), Case::edge_f32);
        SamplerCase { request, weights: Some(weights), counts: None, noise: Noise::generate(case) }
    } else {
        // Counts that sum to the batch, then maybe an edge.
        let mut left = batch;
        let mut counts: Vec<u32> = (0..n)
            .map(|i| {
                let c = if i + 1 == n { left } else { case.rng.below(left as u64 + 1) as u32 };
                left -= c;
                c
            })
            .collect();
        if !counts.is_empty() && case.rng.chance(0.3) {
            let i = case.rng.index(n);
            counts[i] = case.u32_near(counts[i]);
            case.note(format!("counts[{i}] = {}", counts[i]));
        }
        let counts = if case.rng.chance(0.1) { Compact { values: counts, len: Some(case.len_near(n, 100_000) as u32) } } else { Compact::exact(counts) };
        SamplerCase { request, weights: None, counts: Some(counts), noise: Noise::generate(case) }
    }
}

impl OutputCase {
    /// A router, aux-schedule or sampler case, equally often.
    pub fn generate(case: &mut Case) -> Self {
        match case.rng.below(3) {
            0 => OutputCase::Router(router_case(case)),
            1 => OutputCase::Aux(aux_case(case)),
            _ => OutputCase::Sampler(sampler_case(case)),
        }
    }

    /// The echo's params: exactly the outputs this case wants returned.
    pub fn params(&self) -> String {
        match self {
            OutputCase::Router(r) => {
                let mut t = format!("spec = {}\n", toml_spec(&r.spec));
                let (k, experts, weights) = &r.route;
                t.push_str(&format!("route = {{ top_k = {k}, experts = {}, weights = {} }}\n", toml_list(experts, u32::to_string), toml_list(weights, |&w| toml_f32(w))));
                for (layer, bias, spec) in &r.updates {
                    t.push_str(&format!("[[updates]]\nlayer = {layer}\n"));
                    if let Some(bias) = bias {
                        t.push_str(&format!("bias = {}\n", toml_list(bias, |&b| toml_f32(b))));
                    }
                    if let Some(spec) = spec {
                        t.push_str(&format!("spec = {}\n", toml_spec(spec)));
                    }
                }
                t + &r.noise.toml()
            }
            OutputCase::Aux(a) => {
                let item = |(layer, lb, z): &(Option<u32>, f32, f32)| match layer {
                    Some(layer) => format!("{{ layer = {layer}, load_balance = {}, z_loss = {} }}", toml_f32(*lb), toml_f32(*z)),
                    None => format!("{{ load_balance = {}, z_loss = {} }}", toml_f32(*lb), toml_f32(*z)),
                };
                format!("coefficients = {}\n{}", toml_list(&a.coefficients, item), a.noise.toml())
            }
            OutputCase::Sampler(s) => {
                let mixture = match (&s.weights, &s.counts) {
                    (Some(w), _) => format!("weights = {}\n", toml_list(w, |&w| toml_f32(w))),
                    (None, Some(c)) => format!("counts = {}\n", toml_list(c, u32::to_string)),
                    (None, None) => String::new(),
                };
                mixture + &s.noise.toml()
            }
        }
    }

    fn noise(&self) -> &Noise {
        match self {
            OutputCase::Router(r) => &r.noise,
            OutputCase::Aux(a) => &a.noise,
            OutputCase::Sampler(s) => &s.noise,
        }
    }
}

/// The contract of a routing spec for `layer`, as the WIT comments state it.
fn spec_contract(s: &RouterSpec, layer: &LayerInfo) -> Result<(), String> {
    let positive = |what: &str, x: f32| if x.is_finite() && x > 0.0 { Ok(()) } else { Err(format!("{what} = {x} is not finite and > 0")) };
    if s.mode == RoutingMode::TokenChoice && !(1..=layer.num_experts).contains(&s.top_k) {
        return Err(format!("top-k {} outside 1..={} experts", s.top_k, layer.num_experts));
    }
    positive("scaling", s.scaling)?;
    if let LogitNorm::Skywork(lambda) = s.logit_norm {
        positive("skywork lambda", lambda)?;
    }
    if let Some(c) = &s.capacity {
        positive("capacity factor", c.factor)?;
    }
    if s.mode == RoutingMode::ExpertChoice && (s.capacity.is_none() || s.per_token_route) {
        return Err("expert choice without a capacity, or with per-token routing".into());
    }
    if s.shared_experts > layer.shared_experts || (s.shared_expert_gate && s.shared_experts == 0) {
        return Err(format!("{} shared experts (gate {}) for a layer with {}", s.shared_experts, s.shared_expert_gate, layer.shared_experts));
    }
    Ok(())
}

fn updates_contract(updates: &[RouterUpdate], layers: &[LayerInfo]) -> Result<(), String> {
    for u in updates {
        let layer = layers.iter().find(|l| l.layer == u.layer).ok_or_else(|| format!("an update for layer {}, which is not an MoE layer", u.layer))?;
        if let Some(delta) = &u.bias_delta {
            if delta.len() != layer.num_experts as usize {
                return Err(format!("{} bias deltas for {} experts", delta.len(), layer.num_experts));
            }
            if let Some(d) = delta.iter().find(|d| !d.is_finite()) {
                return Err(format!("bias delta {d}"));
            }
        }
        if let Some(spec) = &u.spec {
            spec_contract(spec, layer)?;
        }
    }
    Ok(())
}

fn route_contract(a: &RouteAssignment, logits: &TokenLogits) -> Result<(), String> {
    if !(1..=logits.experts).contains(&a.top_k) {
        return Err(format!("route top-k {} outside 1..={}", a.top_k, logits.experts));
    }
    let slots = logits.tokens as usize * a.top_k as usize;
    if a.experts.len() != slots || a.weights.len() != slots {
        return Err(format!("{} experts and {} weights for {slots} slots", a.experts.len(), a.weights.len()));
    }
    for (t, chosen) in a.experts.chunks(a.top_k as usize).enumerate() {
        if let Some(e) = chosen.iter().find(|&&e| e >= logits.experts) {
            return Err(format!("token {t} routed to expert {e} of {}", logits.experts));
        }
        if (1..chosen.len()).any(|j| chosen[..j].contains(&chosen[j])) {
            return Err(format!("token {t} routed to the same expert twice"));
        }
    }
    match a.weights.iter().find(|w| !w.is_finite()) {
        Some(w) => Err(format!("route weight {w}")),
        None => Ok(()),
    }
}

fn coefficients_contract(c: &[LayerCoefficients], moe_layers: &[u32]) -> Result<(), String> {
    if c.len() != moe_layers.len() {
        return Err(format!("{} coefficients for {} layers", c.len(), moe_layers.len()));
    }
    for (c, &layer) in c.iter().zip(moe_layers) {
        if c.layer != layer {
            return Err(format!("coefficients for layer {} where layer {layer} was asked", c.layer));
        }
        if !(c.load_balance.is_finite() && c.load_balance >= 0.0 && c.z_loss.is_finite() && c.z_loss >= 0.0) {
            return Err(format!("coefficients {} / {} are not finite and >= 0", c.load_balance, c.z_loss));
        }
    }
    Ok(())
}

fn mixture_contract(m: &Mixture, request: &SampleRequest) -> Result<(), String> {
    let n = request.domains.len();
    match m {
        Mixture::Weights(w) if w.len() != n => Err(format!("{} weights for {n} domains", w.len())),
        Mixture::Weights(w) if w.iter().any(|w| !(w.is_finite() && *w >= 0.0)) => Err(format!("weights {:?} are not all finite and >= 0", shorten(&format!("{w:?}"), 80))),
        Mixture::Weights(w) if w.iter().all(|&w| w == 0.0) => Err("all weights are 0".into()),
        Mixture::Counts(c) if c.len() != n => Err(format!("{} counts for {n} domains", c.len())),
        Mixture::Counts(c) if c.iter().map(|&c| c as u64).sum::<u64>() != request.batch_sequences as u64 => Err(format!("counts do not sum to the batch of {}", request.batch_sequences)),
        _ => Ok(()),
    }
}

/// A broken contract: the rule (findings are grouped by it) and the details.
pub type Broken = (&'static str, String);

/// Judge one adapter call: an accepted output must keep its contract; a refusal must
/// be `invalid-output`, or `refused` when the case asked the echo to fail. `wanted` is
/// the contract verdict on what the echo was asked to return, counted when the host
/// refuses an output the contract allows (stricter than the WIT says: reported, not a
/// failure).
fn judge<T>(call: &str, result: Result<T, PluginError>, contract: impl Fn(&T) -> Result<(), String>, wanted: Result<(), String>, noise: &Noise, stricter: &mut u64) -> Result<(), Broken> {
    match result {
        Ok(output) => contract(&output).map_err(|why| ("accepted-invalid-output", format!("{call}: accepted an output that breaks the contract: {why}"))),
        Err(e) if e.code() == "refused" && noise.fail => Ok(()),
        Err(e) if e.code() == "invalid-output" => {
            if wanted.is_ok() {
                *stricter += 1;
            }
            Ok(())
        }
        Err(e) => Err(("wrong-error-kind", format!("{call}: refused with `{}`, not invalid-output: {e}", e.code()))),
    }
}

/// Run one case through the host's adapters: `Ok(true)` when every call was accepted,
/// `Err` on a broken contract.
pub fn run_output_case(engine: &PluginEngine, components: &BTreeMap<&str, PluginComponent>, input: &OutputCase, stricter: &mut u64) -> Result<bool, Broken> {
    let params = input.params();
    // Fuel is counted, the deadline timed: with the deadline far away, the outcome is the
    // same on a loaded machine (a 1 s deadline fired under load in a long run).
    let limits = PluginLimits { deadline: std::time::Duration::from_secs(600), ..PluginLimits::default() };
    let noise = input.noise();
    let new_error = |e: PluginError| ("echo-configure", format!("the echo refused its own params ({}): {e}", e.code()));
    let mut all_ok = true;
    let mut judged = |verdict: Result<(), Broken>, accepted: bool| -> Result<(), Broken> {
        all_ok &= accepted;
        verdict
    };
    match input {
        OutputCase::Router(r) => {
            let mut router = RouterPlugin::new(engine, &components["echo-router"], &params, 0, limits).map_err(new_error)?;
            for layer in &r.layers {
                let result = router.spec(layer);
                let accepted = result.is_ok();
                judged(judge("spec", result, |s| spec_contract(s, layer), spec_contract(&r.spec, layer), noise, stricter), accepted)?;
            }
            let stats: Vec<LayerStats> = r
                .layers
                .iter()
                .map(|l| LayerStats {
                    layer: l.layer,
                    tokens: 64,
                    top_k: 2,
                    expert_load: vec![1; l.num_experts as usize],
                    dropped: 0,
                    overflow_rate: 0.0,
                    gate_entropy: 1.0,
                    max1_over_max2: 1.5,
                    load_balance_loss: 1.0,
                    z_loss: 0.1,
                })
                .collect();
            let wanted: Vec<RouterUpdate> = r.updates.iter().map(|(layer, bias, spec)| RouterUpdate { layer: *layer, bias_delta: bias.as_ref().map(Compact::expand), spec: *spec }).collect();
            let result = router.on_step(7, &stats, &r.layers);
            let accepted = result.is_ok();
            judged(judge("on-step", result, |u| updates_contract(u, &r.layers), updates_contract(&wanted, &r.layers), noise, stricter), accepted)?;
            let (k, experts, weights) = &r.route;
            let wanted = RouteAssignment { top_k: *k, experts: experts.expand(), weights: weights.expand() };
            let result = router.route(&r.layers[0], &r.logits);
            let accepted = result.is_ok();
            judged(judge("route", result, |a| route_contract(a, &r.logits), route_contract(&wanted, &r.logits), noise, stricter), accepted)?;
            check_host_imports(router.instance())?;
        }
        OutputCase::Aux(a) => {
            let mut schedule = AuxSchedulePlugin::new(engine, &components["echo-aux-schedule"], &params, 0, limits).map_err(new_error)?;
            let wanted: Vec<LayerCoefficients> = a
                .coefficients
                .expand()
                .iter()
                .enumerate()
                .map(|(i, &(layer, load_balance, z_loss))| LayerCoefficients { layer: layer.unwrap_or_else(|| a.moe_layers.get(i).copied().unwrap_or(0)), load_balance, z_loss })
                .collect();
            let result = schedule.coefficients(3, &a.moe_layers, &[]);
            let accepted = result.is_ok();
            judged(judge("coefficients", result, |c| coefficients_contract(c, &a.moe_layers), coefficients_contract(&wanted, &a.moe_layers), noise, stricter), accepted)?;
            check_host_imports(schedule.instance())?;
        }
        OutputCase::Sampler(s) => {
            let mut sampler = SamplerPlugin::new(engine, &components["echo-sampler"], &params, 0, limits).map_err(new_error)?;
            let wanted = match (&s.weights, &s.counts) {
                (Some(w), _) => Mixture::Weights(w.expand()),
                (None, Some(c)) => Mixture::Counts(c.expand()),
                (None, None) => Mixture::Weights(Vec::new()),
            };
            let result = sampler.next(&s.request);
            let accepted = result.is_ok();
            // An accepted mixture must also draw a batch: every sequence from a real domain.
            let drawn = match &result {
                Ok(mixture) if s.request.batch_sequences <= 4096 => {
                    let n = s.request.batch_sequences as usize;
                    let domains = recast::data::batch::assign_domains(mixture, n, &mut recast::model::init::SplitMix64(5));
                    domains
                        .iter()
                        .find(|&&d| d >= s.request.domains.len())
                        .map(|d| ("mixture-draw", format!("next: an accepted mixture drew a sequence from domain {d} of {}", s.request.domains.len())))
                }
                _ => None,
            };
            judged(judge("next", result, |m| mixture_contract(m, &s.request), mixture_contract(&wanted, &s.request), noise, stricter), accepted)?;
            if let Some(why) = drawn {
                return Err(why);
            }
            check_host_imports(sampler.instance())?;
        }
    }
    Ok(all_ok)
}

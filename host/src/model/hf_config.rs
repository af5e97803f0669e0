//! Hugging Face `config.json` in and out for the Llama, Qwen2, Mistral, Mixtral and
//! Qwen2-MoE families. Reads both the transformers 4 rope keys (`rope_theta`,
//! `rope_scaling`) and the transformers 5 ones (`rope_parameters`); writes both so
//! either version loads what Recast writes.

use serde_json::{Map, Value, json};

use super::config::{Architecture, ModelConfig, MoeConfig, RopeConfig, RopeScaling, size_limits};

/// Keys this module interprets or regenerates; everything else passes through.
const OWNED_KEYS: &[&str] = &[
    "architectures",
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "rms_norm_eps",
    "rope_theta",
    "rope_scaling",
    "rope_parameters",
    "max_position_embeddings",
    "tie_word_embeddings",
    "attention_bias",
    "qkv_bias",
    "sliding_window",
    "use_sliding_window",
    "max_window_layers",
    "layer_types",
    "num_local_experts",
    "num_experts",
    "num_experts_per_tok",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "norm_topk_prob",
    "decoder_sparse_step",
    "mlp_only_layers",
    "router_aux_loss_coef",
    "hidden_act",
    "torch_dtype",
    "dtype",
    "transformers_version",
    "mlp_bias",
];

/// `model_type` of checkpoints in Recast's own format: any model Recast can run, tensor
/// names as Recast spells them, the full [`ModelConfig`] under `recast.model_config`.
pub const RECAST_MODEL_TYPE: &str = "recast";

/// The `config.json` of a checkpoint in Recast's own format; `extra` goes under `recast`
/// beside the model config (e.g. how the model was made).
pub fn recast_json(config: &ModelConfig, extra: serde_json::Map<String, Value>) -> Result<Value, String> {
    let mut recast = extra;
    recast.insert("model_config".into(), serde_json::to_value(config).map_err(|e| e.to_string())?);
    Ok(json!({ "architectures": ["RecastForCausalLM"], "model_type": RECAST_MODEL_TYPE, "vocab_size": config.vocab_size, "recast": recast }))
}

/// Turn a parsed `config.json` into a [`ModelConfig`]. Errors are sentences naming the
/// offending key.
pub fn from_json(value: &Value) -> Result<ModelConfig, String> {
    let obj = value.as_object().ok_or("config.json is not a JSON object")?;
    if obj.get("model_type").and_then(Value::as_str) == Some(RECAST_MODEL_TYPE) {
        let inner = obj.get("recast").and_then(|r| r.get("model_config")).ok_or("a Recast checkpoint's config.json needs `recast.model_config`")?;
        let config: ModelConfig = serde_json::from_value(inner.clone()).map_err(|e| format!("`recast.model_config`: {e}"))?;
        config.validate()?;
        return Ok(config);
    }
    let architecture = architecture(obj)?;
    let keys = Keys(obj);
    if let Some(act) = obj.get("hidden_act").and_then(Value::as_str)
        && act != "silu"
    {
        return Err(format!("`hidden_act` is {act:?}; Recast implements SwiGLU MLPs (\"silu\") only"));
    }
    if keys.bool("mlp_bias")?.unwrap_or(false) {
        return Err("`mlp_bias` = true is not supported (Llama/Qwen2 MLPs have no bias)".into());
    }

    let hidden_size = keys.need("hidden_size")?;
    let num_heads = keys.need("num_attention_heads")?;
    let num_layers = keys.need("num_hidden_layers")?;
    // Counts that size the per-layer and per-expert lists below are bounded before any
    // list is built ([`ModelConfig::validate`] checks the rest).
    let bounded = |key: &str, value: usize, limit: usize| if value <= limit { Ok(value) } else { Err(format!("`{key}` = {value} is out of range (0 ..= {limit})")) };
    bounded("num_hidden_layers", num_layers, size_limits::LAYERS)?;
    for key in ["num_local_experts", "num_experts"] {
        if let Some(n) = keys.usize(key)? {
            bounded(key, n, size_limits::EXPERTS)?;
        }
    }
    if num_heads == 0 {
        return Err("`num_attention_heads` must be positive".into());
    }
    let head_dim = keys.usize("head_dim")?.unwrap_or(hidden_size / num_heads);
    let attention_bias = keys.bool("attention_bias")?.unwrap_or(false);
    let qkv_bias = match architecture {
        Architecture::Qwen2 | Architecture::Qwen2Moe => keys.bool("qkv_bias")?.unwrap_or(true),
        _ => attention_bias,
    };
    let o_bias = matches!(architecture, Architecture::Llama) && attention_bias;

    let sliding_window = keys.usize("sliding_window")?.filter(|&w| w > 0);
    let attention_window = match architecture {
        Architecture::Mistral | Architecture::Mixtral => vec![sliding_window; num_layers],
        Architecture::Llama => vec![None; num_layers],
        Architecture::Qwen2 | Architecture::Qwen2Moe => qwen_windows(obj, num_layers, sliding_window, keys.bool("use_sliding_window")?.unwrap_or(false))?,
    };

    let moe = match architecture {
        Architecture::Mixtral => Some(mixtral_moe(&keys, num_layers)?),
        Architecture::Qwen2Moe => Some(qwen2_moe(&keys, num_layers)?),
        _ => None,
    };

    let passthrough: Map<String, Value> = obj.iter().filter(|(k, _)| !OWNED_KEYS.contains(&k.as_str())).map(|(k, v)| (k.clone(), v.clone())).collect();
    let config = ModelConfig {
        architecture,
        vocab_size: keys.need("vocab_size")?,
        hidden_size,
        intermediate_size: keys.need("intermediate_size")?,
        num_layers,
        num_heads,
        num_kv_heads: keys.usize("num_key_value_heads")?.unwrap_or(num_heads),
        head_dim,
        rms_norm_eps: keys.f64("rms_norm_eps")?.unwrap_or(1e-6),
        rope: rope(obj)?,
        max_position_embeddings: keys.usize("max_position_embeddings")?.unwrap_or(4096),
        tie_word_embeddings: keys.bool("tie_word_embeddings")?.unwrap_or(false),
        qkv_bias,
        o_bias,
        attention_window,
        moe,
        passthrough,
    };
    config.validate()?;
    Ok(config)
}

/// Typed reads of `config.json` keys; a key that is absent or `null` reads as `None`,
/// one of the wrong type is an error naming it.
struct Keys<'a>(&'a Map<String, Value>);

impl Keys<'_> {
    fn read<T>(&self, key: &str, what: &str, read: impl Fn(&Value) -> Option<T>) -> Result<Option<T>, String> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => read(v).map(Some).ok_or_else(|| format!("`{key}` must be {what}, found {v}")),
        }
    }

    fn usize(&self, key: &str) -> Result<Option<usize>, String> {
        self.read(key, "a non-negative integer", |v| v.as_u64().map(|n| n as usize))
    }

    fn need(&self, key: &str) -> Result<usize, String> {
        self.usize(key)?.ok_or_else(|| format!("`{key}` is missing"))
    }

    fn f64(&self, key: &str) -> Result<Option<f64>, String> {
        self.read(key, "a number", Value::as_f64)
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, String> {
        self.read(key, "true or false", Value::as_bool)
    }
}

/// Mixtral's experts: every layer is an MoE layer of equal experts.
fn mixtral_moe(keys: &Keys<'_>, num_layers: usize) -> Result<MoeConfig, String> {
    let num_experts = keys.need("num_local_experts")?;
    Ok(MoeConfig {
        num_experts,
        top_k: keys.need("num_experts_per_tok")?,
        expert_intermediate: vec![keys.need("intermediate_size")?; num_experts],
        shared_expert_intermediate: vec![],
        shared_expert_gate: false,
        normalize_top_k: true,
        moe_layers: vec![true; num_layers],
        router_aux_loss_coef: keys.f64("router_aux_loss_coef")?.unwrap_or(0.02),
    })
}

/// Qwen2-MoE's experts: every `decoder_sparse_step`-th layer not in `mlp_only_layers`,
/// with an optional gated shared expert.
fn qwen2_moe(keys: &Keys<'_>, num_layers: usize) -> Result<MoeConfig, String> {
    let num_experts = keys.need("num_experts")?;
    let step = keys.usize("decoder_sparse_step")?.unwrap_or(1).max(1);
    let mlp_only: std::collections::BTreeSet<usize> = match keys.0.get("mlp_only_layers") {
        None | Some(Value::Null) => Default::default(),
        Some(Value::Array(items)) => items.iter().map(|v| v.as_u64().map(|n| n as usize).ok_or_else(|| format!("`mlp_only_layers` holds {v}, not a layer index"))).collect::<Result<_, _>>()?,
        Some(v) => return Err(format!("`mlp_only_layers` must be a list of layer indices, found {v}")),
    };
    let shared = keys.usize("shared_expert_intermediate_size")?.unwrap_or(0);
    Ok(MoeConfig {
        num_experts,
        top_k: keys.need("num_experts_per_tok")?,
        expert_intermediate: vec![keys.need("moe_intermediate_size")?; num_experts],
        shared_expert_intermediate: if shared > 0 { vec![shared] } else { vec![] },
        shared_expert_gate: shared > 0,
        normalize_top_k: keys.bool("norm_topk_prob")?.unwrap_or(false),
        moe_layers: (0..num_layers).map(|l| !mlp_only.contains(&l) && num_experts > 0 && (l + 1) % step == 0).collect(),
        router_aux_loss_coef: keys.f64("router_aux_loss_coef")?.unwrap_or(0.001),
    })
}

fn architecture(obj: &Map<String, Value>) -> Result<Architecture, String> {
    let class = obj.get("architectures").and_then(Value::as_array).and_then(|a| a.first()).and_then(Value::as_str);
    let model_type = obj.get("model_type").and_then(Value::as_str);
    let supported = Architecture::ALL.iter().map(|a| a.hf_class()).collect::<Vec<_>>().join(", ");
    Architecture::ALL.into_iter().find(|a| class == Some(a.hf_class()) || (class.is_none() && model_type == Some(a.hf_model_type()))).ok_or_else(|| match (class, model_type) {
        (Some(c), _) => format!("unsupported architecture {c:?}; Recast reads {supported}"),
        (None, Some(t)) => format!("unsupported model_type {t:?}; Recast reads {supported}"),
        (None, None) => "neither `architectures` nor `model_type` says what model this is".into(),
    })
}

/// Qwen2's sliding window applies to the layers `layer_types` marks (transformers 5) or
/// to layers from `max_window_layers` on (transformers 4), and only with
/// `use_sliding_window`.
fn qwen_windows(obj: &Map<String, Value>, num_layers: usize, window: Option<usize>, use_sliding: bool) -> Result<Vec<Option<usize>>, String> {
    if let Some(Value::Array(types)) = obj.get("layer_types") {
        if types.len() != num_layers {
            return Err(format!("`layer_types` lists {} layers, `num_hidden_layers` is {num_layers}", types.len()));
        }
        return types
            .iter()
            .map(|t| match t.as_str() {
                Some("full_attention") => Ok(None),
                Some("sliding_attention") => Ok(window),
                _ => Err(format!("`layer_types` holds {t}; Recast knows \"full_attention\" and \"sliding_attention\"")),
            })
            .collect();
    }
    if !use_sliding {
        return Ok(vec![None; num_layers]);
    }
    let from = obj.get("max_window_layers").and_then(Value::as_u64).unwrap_or(0) as usize;
    Ok((0..num_layers).map(|l| if l >= from { window } else { None }).collect())
}

fn rope(obj: &Map<String, Value>) -> Result<RopeConfig, String> {
    // transformers 5 keeps everything in `rope_parameters`; 4 has `rope_theta` and
    // an optional `rope_scaling`.
    let params = obj.get("rope_parameters").and_then(Value::as_object);
    let scaling = params.or_else(|| obj.get("rope_scaling").and_then(Value::as_object));
    let theta = params
        .and_then(|p| p.get("rope_theta"))
        .or_else(|| obj.get("rope_theta"))
        .map(|v| v.as_f64().ok_or_else(|| format!("`rope_theta` must be a number, found {v}")))
        .transpose()?
        .unwrap_or(10_000.0);
    let Some(s) = scaling else {
        return Ok(RopeConfig { theta, scaling: RopeScaling::None });
    };
    let kind = s.get("rope_type").or_else(|| s.get("type")).and_then(Value::as_str).unwrap_or("default");
    let num = |key: &str| -> Result<f64, String> { s.get(key).and_then(Value::as_f64).ok_or_else(|| format!("rope scaling {kind:?} needs a number `{key}`")) };
    let original = || -> Result<f64, String> {
        s.get("original_max_position_embeddings")
            .and_then(Value::as_f64)
            .or_else(|| obj.get("max_position_embeddings").and_then(Value::as_f64))
            .ok_or_else(|| format!("rope scaling {kind:?} needs `original_max_position_embeddings`"))
    };
    let scaling = match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: num("factor")? },
        "llama3" => RopeScaling::Llama3 { factor: num("factor")?, low_freq_factor: num("low_freq_factor")?, high_freq_factor: num("high_freq_factor")?, original_max_position_embeddings: original()? },
        "dynamic" => RopeScaling::Dynamic { factor: num("factor")?, original_max_position_embeddings: original()? },
        other => return Err(format!("rope scaling {other:?} is not supported (Recast implements default, linear, llama3 and dynamic)")),
    };
    Ok(RopeConfig { theta, scaling })
}

/// Write a `config.json` transformers accepts for `config`. Fails where the family
/// cannot express the model (experts of different widths, several shared experts).
pub fn to_json(config: &ModelConfig) -> Result<Value, String> {
    let mut obj = config.passthrough.clone();
    let arch = config.architecture;
    let mut put = |k: &str, v: Value| {
        obj.insert(k.to_string(), v);
    };
    put("architectures", json!([arch.hf_class()]));
    put("model_type", json!(arch.hf_model_type()));
    put("vocab_size", json!(config.vocab_size));
    put("hidden_size", json!(config.hidden_size));
    put("intermediate_size", json!(config.intermediate_size));
    put("num_hidden_layers", json!(config.num_layers));
    put("num_attention_heads", json!(config.num_heads));
    put("num_key_value_heads", json!(config.num_kv_heads));
    put("head_dim", json!(config.head_dim));
    put("rms_norm_eps", json!(config.rms_norm_eps));
    put("max_position_embeddings", json!(config.max_position_embeddings));
    put("tie_word_embeddings", json!(config.tie_word_embeddings));
    put("hidden_act", json!("silu"));
    put("dtype", json!("float32"));
    let (rope_parameters, rope_scaling) = rope_json(&config.rope);
    put("rope_parameters", rope_parameters);
    put("rope_theta", json!(config.rope.theta));
    put("rope_scaling", rope_scaling);

    let windows: Vec<usize> = config.attention_window.iter().flatten().copied().collect();
    let window = windows.first().copied();
    if windows.iter().any(|&w| Some(w) != window) {
        return Err("layers use different attention windows; Hugging Face configs hold one".into());
    }
    match arch {
        Architecture::Llama => {
            if config.qkv_bias != config.o_bias {
                return Err("Llama's `attention_bias` covers q, k, v and o together; this model has bias on only some".into());
            }
            if window.is_some() {
                return Err("Llama has no sliding-window attention; write the model as Mistral".into());
            }
            put("attention_bias", json!(config.qkv_bias));
            put("mlp_bias", json!(false));
        }
        Architecture::Mistral | Architecture::Mixtral => {
            if config.qkv_bias || config.o_bias {
                return Err(format!("{} has no attention bias; write the model as Qwen2 or Qwen2-MoE", arch.hf_class()));
            }
            if window.is_some() && config.attention_window.iter().any(Option::is_none) {
                return Err(format!("{} applies its sliding window to every layer; this model mixes full and windowed layers", arch.hf_class()));
            }
            put("sliding_window", json!(window));
        }
        Architecture::Qwen2 | Architecture::Qwen2Moe => {
            if !config.qkv_bias || config.o_bias {
                return Err("Qwen2 has a bias on q, k and v and none on o; this model differs".into());
            }
            put("use_sliding_window", json!(window.is_some()));
            put("sliding_window", json!(window));
            let types: Vec<&str> = config.attention_window.iter().map(|w| if w.is_some() { "sliding_attention" } else { "full_attention" }).collect();
            put("layer_types", json!(types));
            put("max_window_layers", json!(config.attention_window.iter().position(Option::is_some).unwrap_or(config.num_layers)));
        }
    }

    match (arch, &config.moe) {
        (Architecture::Mixtral, Some(moe)) => {
            let width = uniform_width(moe)?;
            if width != config.intermediate_size {
                return Err(format!("Mixtral's experts have the dense `intermediate_size` ({}), these have {width}", config.intermediate_size));
            }
            if !moe.shared_expert_intermediate.is_empty() {
                return Err("Mixtral has no shared experts; write the model as Qwen2-MoE".into());
            }
            if moe.moe_layers.iter().any(|m| !m) {
                return Err("Mixtral has no dense layers; write the model as Qwen2-MoE".into());
            }
            put("num_local_experts", json!(moe.num_experts));
            put("num_experts_per_tok", json!(moe.top_k));
            put("router_aux_loss_coef", json!(moe.router_aux_loss_coef));
        }
        (Architecture::Qwen2Moe, Some(moe)) => {
            let width = uniform_width(moe)?;
            let shared = match moe.shared_expert_intermediate.as_slice() {
                [] => 0,
                [w] if moe.shared_expert_gate => *w,
                [_] => return Err("Qwen2-MoE always gates its shared expert; this model's is ungated".into()),
                many => return Err(format!("Qwen2-MoE has one shared expert; this model has {}", many.len())),
            };
            put("num_experts", json!(moe.num_experts));
            put("num_experts_per_tok", json!(moe.top_k));
            put("moe_intermediate_size", json!(width));
            put("shared_expert_intermediate_size", json!(shared));
            put("norm_topk_prob", json!(moe.normalize_top_k));
            put("decoder_sparse_step", json!(1));
            let dense: Vec<usize> = moe.moe_layers.iter().enumerate().filter(|(_, m)| !**m).map(|(l, _)| l).collect();
            put("mlp_only_layers", json!(dense));
            put("router_aux_loss_coef", json!(moe.router_aux_loss_coef));
            put("qkv_bias", json!(true));
        }
        (a, Some(_)) => return Err(format!("{} is a dense family; an MoE model is written as Mixtral or Qwen2-MoE", a.hf_class())),
        (a, None) if a.is_moe() => return Err(format!("{} needs MoE layers; this model is dense", a.hf_class())),
        _ => {}
    }
    Ok(Value::Object(obj))
}

fn uniform_width(moe: &MoeConfig) -> Result<usize, String> {
    let first = moe.expert_intermediate[0];
    if moe.expert_intermediate.iter().any(|&w| w != first) {
        return Err(format!("experts have different widths {:?}; Hugging Face MoE configs hold one width", moe.expert_intermediate));
    }
    Ok(first)
}

fn rope_json(rope: &RopeConfig) -> (Value, Value) {
    let mut params = Map::new();
    params.insert("rope_theta".into(), json!(rope.theta));
    let (kind, extra) = match &rope.scaling {
        RopeScaling::None => ("default", json!({})),
        RopeScaling::Linear { factor } => ("linear", json!({ "factor": factor })),
        RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings } => {
            ("llama3", json!({ "factor": factor, "low_freq_factor": low_freq_factor, "high_freq_factor": high_freq_factor, "original_max_position_embeddings": original_max_position_embeddings }))
        }
        RopeScaling::Dynamic { factor, original_max_position_embeddings } => ("dynamic", json!({ "factor": factor, "original_max_position_embeddings": original_max_position_embeddings })),
    };
    params.insert("rope_type".into(), json!(kind));
    let mut scaling = extra.as_object().cloned().unwrap_or_default();
    params.extend(scaling.clone());
    let scaling = if kind == "default" {
        Value::Null
    } else {
        scaling.insert("rope_type".into(), json!(kind));
        Value::Object(scaling)
    };
    (Value::Object(params), scaling)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mixtral() -> Value {
        json!({
            "architectures": ["MixtralForCausalLM"], "vocab_size": 64, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "num_local_experts": 4,
            "num_experts_per_tok": 2, "rope_parameters": {"rope_theta": 1e6, "rope_type": "default"}, "bos_token_id": 1
        })
    }

    #[test]
    fn reads_and_writes_back_the_same_model() {
        let config = from_json(&mixtral()).expect("valid config");
        assert_eq!(config.architecture, Architecture::Mixtral);
        assert_eq!(config.head_dim, 8);
        assert_eq!(config.rope.theta, 1e6);
        assert_eq!(config.moe.as_ref().map(|m| m.expert_intermediate.clone()), Some(vec![32; 4]));
        let again = from_json(&to_json(&config).expect("writable")).expect("re-read");
        assert_eq!(config, again);
    }

    #[test]
    fn recast_format_round_trips_what_hugging_face_cannot_hold() {
        let mut config = from_json(&mixtral()).expect("valid");
        if let Some(moe) = config.moe.as_mut() {
            moe.expert_intermediate[1] = 16;
        }
        let again = from_json(&recast_json(&config, Map::new()).expect("json")).expect("re-read");
        assert_eq!(config, again);
    }

    #[test]
    fn unsupported_architecture_is_named() {
        let err = from_json(&json!({"architectures": ["GPT2LMHeadModel"]})).unwrap_err();
        assert!(err.contains("GPT2LMHeadModel") && err.contains("MixtralForCausalLM"), "{err}");
    }

    #[test]
    fn legacy_rope_keys_are_read() {
        let mut v = mixtral();
        let obj = v.as_object_mut().expect("object");
        obj.remove("rope_parameters");
        obj.insert("rope_theta".into(), json!(5e5));
        obj.insert("rope_scaling".into(), json!({"type": "linear", "factor": 2.0}));
        let config = from_json(&v).expect("valid");
        assert_eq!(config.rope, RopeConfig { theta: 5e5, scaling: RopeScaling::Linear { factor: 2.0 } });
    }

    #[test]
    fn uneven_experts_cannot_be_written_as_mixtral() {
        let mut config = from_json(&mixtral()).expect("valid");
        if let Some(moe) = config.moe.as_mut() {
            moe.expert_intermediate[1] = 16;
        }
        let err = to_json(&config).unwrap_err();
        assert!(err.contains("different widths"), "{err}");
    }
}

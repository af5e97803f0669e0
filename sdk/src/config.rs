//! Plugin parameters: the `configure` string from the run config, parsed with serde.
//!
//! Unknown keys are always an error, even when the plugin's config struct does not say
//! `#[serde(deny_unknown_fields)]`: a typo in a run config must never be ignored.

use serde::de::DeserializeOwned;

/// Parse `params` (TOML, or JSON when it starts with `{`) into `T`. An empty string is an
/// empty table, so a config struct whose fields all have defaults needs no parameters.
pub fn parse_params<T: DeserializeOwned>(params: &str) -> Result<T, String> {
    let text = params.trim();
    let mut unknown = Vec::new();
    let parsed = if text.starts_with('{') {
        let mut de = serde_json::Deserializer::from_str(text);
        serde_ignored::deserialize(&mut de, |path| unknown.push(path.to_string())).map_err(|e| format!("invalid JSON parameters: {e}"))
    } else {
        let de = toml::Deserializer::parse(text).map_err(|e| format!("invalid TOML parameters: {e}"))?;
        serde_ignored::deserialize(de, |path| unknown.push(path.to_string())).map_err(|e| format!("invalid parameters: {}", e.to_string().trim()))
    };
    let value = parsed?;
    match unknown.as_slice() {
        [] => Ok(value),
        [one] => Err(format!("unknown parameter `{one}`")),
        many => Err(format!("unknown parameters {}", many.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", "))),
    }
}

/// `Ok` when `value` is finite and >= 0, else an error naming the parameter.
pub fn non_negative(name: &str, value: f32) -> Result<(), String> {
    if value.is_finite() && value >= 0.0 { Ok(()) } else { Err(format!("{name} must be finite and >= 0, not {value}")) }
}

#[cfg(test)]
mod tests {
    use super::parse_params;
    use serde::Deserialize;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(default)]
    struct Params {
        top_k: u32,
        renormalize: bool,
    }

    impl Default for Params {
        fn default() -> Self {
            Params { top_k: 2, renormalize: true }
        }
    }

    #[test]
    fn empty_text_gives_defaults() {
        assert_eq!(parse_params::<Params>("").unwrap(), Params::default());
    }

    #[test]
    fn toml_and_json_agree() {
        let a: Params = parse_params("top_k = 4\nrenormalize = false").unwrap();
        let b: Params = parse_params(r#"{"top_k": 4, "renormalize": false}"#).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.top_k, 4);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse_params::<Params>("top_k = 4\ntopk = 3").unwrap_err();
        assert_eq!(err, "unknown parameter `topk`");
        let err = parse_params::<Params>(r#"{"a": 1, "b": 2}"#).unwrap_err();
        assert_eq!(err, "unknown parameters `a`, `b`");
    }

    #[test]
    fn wrong_types_are_errors() {
        let err = parse_params::<Params>("top_k = \"two\"").unwrap_err();
        assert!(err.contains("top_k") || err.contains("integer"), "{err}");
    }
}

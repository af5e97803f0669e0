//! `--set key.path=value`: change a run config without copying its file. Each override
//! is written into the config's TOML before it is parsed, so it is typed and checked
//! exactly like the file: a misspelt key is refused naming it, a value of the wrong type
//! names the expected one. The value is read as a TOML value (`3`, `1e-3`, `true`,
//! `"text"`, `[1, 2]`, `{ top_k = 2 }`); anything that is not one is taken as a string,
//! so `--set tokenizer=byte` needs no quotes. A segment that is a number indexes an
//! array of tables (`data.domains.0.name`).

/// Why an override cannot be applied.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum OverrideError {
    /// Not `KEY.PATH=VALUE`.
    #[error("--set {0:?}: expected KEY.PATH=VALUE (e.g. --set train.steps=100)")]
    Form(String),
    /// The path runs through something that is not a table.
    #[error("--set {arg:?}: `{at}` is {found}, not a table")]
    NotATable { arg: String, at: String, found: String },
    /// An array index out of range.
    #[error("--set {arg:?}: `{at}` has {len} entries")]
    Index { arg: String, at: String, len: usize },
    /// The config itself is not TOML.
    #[error("the config is not TOML: {0}")]
    Config(String),
}

/// `text` (a run config) with every `KEY.PATH=VALUE` of `sets` applied, in order.
pub fn apply(text: &str, sets: &[String]) -> Result<String, OverrideError> {
    if sets.is_empty() {
        return Ok(text.to_string());
    }
    let mut doc: toml::Table = text.parse().map_err(|e: toml::de::Error| OverrideError::Config(e.to_string().trim_end().to_string()))?;
    for arg in sets {
        let (key, raw) = arg.split_once('=').ok_or_else(|| OverrideError::Form(arg.clone()))?;
        let path: Vec<&str> = key.trim().split('.').map(str::trim).collect();
        if path.iter().any(|s| s.is_empty()) {
            return Err(OverrideError::Form(arg.clone()));
        }
        set(&mut doc, &path, value(raw.trim()), arg)?;
    }
    toml::to_string(&doc).map_err(|e| OverrideError::Config(e.to_string()))
}

/// `raw` as a TOML value, or as a string when it is not one.
fn value(raw: &str) -> toml::Value {
    format!("v = {raw}").parse::<toml::Table>().ok().and_then(|mut t| t.remove("v")).unwrap_or_else(|| toml::Value::String(raw.to_string()))
}

fn kind(v: &toml::Value) -> String {
    format!("a{} {}", if matches!(v, toml::Value::Array(_) | toml::Value::Integer(_)) { "n" } else { "" }, v.type_str())
}

/// Set `path` under `table` to `value`, making the tables on the way.
fn set(table: &mut toml::Table, path: &[&str], value: toml::Value, arg: &str) -> Result<(), OverrideError> {
    let (first, rest) = path.split_first().ok_or_else(|| OverrideError::Form(arg.to_string()))?;
    if rest.is_empty() {
        table.insert(first.to_string(), value);
        return Ok(());
    }
    let entry = table.entry(first.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
    set_in(entry, rest, value, arg, first)
}

fn set_in(node: &mut toml::Value, path: &[&str], value: toml::Value, arg: &str, at: &str) -> Result<(), OverrideError> {
    match node {
        toml::Value::Table(t) => set(t, path, value, arg),
        toml::Value::Array(items) => {
            let (first, rest) = path.split_first().ok_or_else(|| OverrideError::Form(arg.to_string()))?;
            let not_index = || OverrideError::NotATable { arg: arg.to_string(), at: at.to_string(), found: "an array (index it: `.0.`)".into() };
            let i: usize = first.parse().map_err(|_| not_index())?;
            let len = items.len();
            let item = items.get_mut(i).ok_or_else(|| OverrideError::Index { arg: arg.to_string(), at: at.to_string(), len })?;
            if rest.is_empty() {
                *item = value;
                return Ok(());
            }
            set_in(item, rest, value, arg, &format!("{at}.{first}"))
        }
        other => Err(OverrideError::NotATable { arg: arg.to_string(), at: at.to_string(), found: kind(other) }),
    }
}

/// Set (or with `"-"` remove) `STEP.a.b.c` in `steps`; `*` as STEP sets it in every step
/// where `a.b` exists.
pub fn set_in_steps(steps: &mut [toml::Value], key: &str, value: &toml::Value) -> Result<(), String> {
    let mut parts = key.split('.');
    let step_name = parts.next().unwrap_or_default();
    let path: Vec<&str> = parts.collect();
    let Some((last, parents)) = path.split_last() else {
        return Err(format!("{key:?}: expected STEP.key"));
    };
    let mut matched = false;
    for step in steps.iter_mut() {
        let name = step.get("name").and_then(|n| n.as_str()).unwrap_or_default().to_string();
        if step_name != "*" && step_name != name {
            continue;
        }
        let mut table = step.as_table_mut();
        for p in parents {
            table = match table {
                Some(t) if step_name == "*" => t.get_mut(*p).and_then(|v| v.as_table_mut()),
                Some(t) => Some(t.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new())).as_table_mut().ok_or_else(|| format!("{key:?}: `{p}` is not a table"))?),
                None => None,
            };
        }
        if let Some(t) = table {
            if value.as_str() == Some("-") {
                t.remove(*last);
            } else {
                t.insert(last.to_string(), value.clone());
            }
            matched = true;
        }
    }
    if matched || step_name == "*" { Ok(()) } else { Err(format!("{key:?}: no step {step_name:?}")) }
}

/// `STEP.PATH=VALUE` of a recipe's or experiment's `--set`: the key and the value (typed
/// as in [`apply`]).
pub fn parse_step_set(arg: &str) -> Result<(String, toml::Value), OverrideError> {
    let (key, raw) = arg.split_once('=').ok_or_else(|| OverrideError::Form(arg.to_string()))?;
    Ok((key.trim().to_string(), value(raw.trim())))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "seed = 0\n\n[train]\nsteps = 300\n\n[[data.domains]]\nname = \"code\"\nbuiltin = \"code\"\n";

    fn parsed(sets: &[&str]) -> toml::Table {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        apply(CONFIG, &sets).expect("applies").parse().expect("toml")
    }

    #[test]
    fn values_are_typed_and_paths_make_their_tables() {
        let t = parsed(&["train.steps=20", "optimizer.lr=1e-3", "tokenizer=byte", "plugins.router.params={ top_k = 2 }", "data.domains.0.name=\"python\""]);
        assert_eq!(t["train"]["steps"].as_integer(), Some(20));
        assert_eq!(t["optimizer"]["lr"].as_float(), Some(1e-3));
        assert_eq!(t["tokenizer"].as_str(), Some("byte"));
        assert_eq!(t["plugins"]["router"]["params"]["top_k"].as_integer(), Some(2));
        assert_eq!(t["data"]["domains"][0]["name"].as_str(), Some("python"));
    }

    #[test]
    fn malformed_overrides_are_named() {
        let one = |s: &str| apply(CONFIG, &[s.to_string()]).unwrap_err().to_string();
        assert!(one("train.steps").contains("expected KEY.PATH=VALUE"));
        assert!(one("train..steps=1").contains("expected KEY.PATH=VALUE"));
        assert!(one("seed.x=1").contains("`seed` is an integer, not a table"), "{}", one("seed.x=1"));
        assert!(one("data.domains.3.name=x").contains("has 1 entries"));
    }
}

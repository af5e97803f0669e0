//! The shared mutator: one [`Case`] per generated input, holding its random stream and
//! the log of what each mutation did; byte-level, TOML-aware and JSON-tree mutations
//! that every target draws on.

use serde_json::{Value, json};

use crate::harness::Rng;

/// Numbers that break parsers and size arithmetic, spelt as text so TOML and JSON share
/// them (`nan` and `inf` exist only in TOML; JSON gets them as strings, to be refused).
#[rustfmt::skip]
const EDGE_NUMBERS: &[&str] = &[
    "0", "-0", "1", "-1", "2", "3", "7", "0.5", "-0.5", "1.5", "1e308", "-1e308", "1e-308", "5e-324", "1e400", "1e6", "1000000", "1000000000",
    "2147483648", "4294967295", "4294967296", "1099511627776", "4503599627370497", "4611686018427387904", "9223372036854775807",
    "-9223372036854775808", "9223372036854775808", "18446744073709551615", "18446744073709551616", "3.4028235e38", "nan", "inf", "-inf",
    "+inf", "-nan", "1_000", "0x7fffffff", "0o777", "0b1", "1e", "--1", "00",
];

/// f32 values that plugin outputs must be checked for.
const EDGE_F32: &[f32] = &[0.0, -0.0, 1.0, -1.0, 0.5, 1e-3, f32::MAX, -f32::MAX, f32::MIN_POSITIVE, 1e-45, 1e30, -1e30, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 65504.0, 1e-8];

/// Keys the JSON mutator adds: every key `hf_config` interprets, and a few it does not.
#[rustfmt::skip]
const JSON_KEYS: &[&str] = &[
    "architectures", "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "head_dim", "rms_norm_eps", "rope_theta", "rope_scaling", "rope_parameters", "rope_type", "type", "factor", "low_freq_factor", "high_freq_factor",
    "original_max_position_embeddings", "max_position_embeddings", "tie_word_embeddings", "attention_bias", "qkv_bias", "sliding_window",
    "use_sliding_window", "max_window_layers", "layer_types", "num_local_experts", "num_experts", "num_experts_per_tok", "moe_intermediate_size",
    "shared_expert_intermediate_size", "norm_topk_prob", "decoder_sparse_step", "mlp_only_layers", "router_aux_loss_coef", "hidden_act", "mlp_bias",
    "recast", "model_config", "weight_map", "dtype", "shape", "data_offsets", "__metadata__", "", "bogus",
];

#[rustfmt::skip]
const JSON_STRINGS: &[&str] = &[
    "", "silu", "gelu", "default", "linear", "llama3", "dynamic", "yarn", "full_attention", "sliding_attention", "LlamaForCausalLM", "MixtralForCausalLM",
    "Qwen2ForCausalLM", "Qwen2MoeForCausalLM", "RecastForCausalLM", "llama", "mixtral", "qwen2_moe", "recast", "F32", "F16", "BF16", "F64", "I64", "BOOL",
    "F8_E4M3", "NaN", "Infinity", "model.safetensors", "../model.safetensors", "/etc/passwd", "\u{0}", "é\u{1F600}",
];

/// One generated input's randomness and its story: every mutation notes what it did,
/// so a finding prints a readable reproducer beside its replay line. All targets mutate
/// through it: bytes, TOML text and JSON values.
pub struct Case {
    pub rng: Rng,
    pub log: Vec<String>,
}

impl Case {
    /// Case `index` of `target` under `seed`: its own stream, so one case replays alone.
    pub fn new(seed: u64, target: &str, index: u64) -> Self {
        let name = target.bytes().fold(0xCBF2_9CE4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01B3));
        let mut rng = Rng(seed ^ name ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03));
        rng.next();
        Case { rng, log: Vec::new() }
    }

    pub fn note(&mut self, what: impl Into<String>) {
        self.log.push(what.into());
    }

    pub fn edge_number(&mut self) -> &'static str {
        self.rng.pick::<&str>(EDGE_NUMBERS)
    }

    pub fn edge_f32(&mut self) -> f32 {
        *self.rng.pick(EDGE_F32)
    }

    /// A length or count near `n`: often `n`, else an edge (0, ±1, huge).
    pub fn len_near(&mut self, n: usize, huge: usize) -> usize {
        match self.rng.below(8) {
            0 => 0,
            1 => n.saturating_sub(1),
            2 => n + 1,
            3 => huge,
            _ => n,
        }
    }

    /// A u32 near the bound `n`: `n`, `n + 1`, 0 or the extremes.
    pub fn u32_near(&mut self, n: u32) -> u32 {
        *self.rng.pick(&[0, 1, n.saturating_sub(1), n, n.saturating_add(1), 1 << 31, u32::MAX])
    }

    /// A byte offset, biased to the start and end where formats keep their headers.
    pub fn position(&mut self, len: usize) -> usize {
        match self.rng.below(4) {
            0 => self.rng.index(len.min(1024) + 1),
            1 => len - self.rng.index(len.min(1024) + 1),
            _ => self.rng.index(len + 1),
        }
    }

    /// 1 to 4 byte-level mutations: bit flips, edge bytes, truncation, deletion,
    /// insertion, duplication, garbage appended.
    pub fn mutate_bytes(&mut self, bytes: &mut Vec<u8>) {
        const EDGE_BYTES: &[u8] = b"\x00\xff\x7f\x80\"\\\n[]{}=09 x";
        for _ in 0..self.rng.range(1, 4) {
            let at = self.position(bytes.len());
            match self.rng.below(8) {
                0 | 1 if at < bytes.len() => {
                    let bit = self.rng.below(8);
                    bytes[at] ^= 1 << bit;
                    self.note(format!("flip bit {bit} of byte {at}"));
                }
                2 if at < bytes.len() => {
                    let b = *self.rng.pick(EDGE_BYTES);
                    bytes[at] = b;
                    self.note(format!("set byte {at} to {b:#04x}"));
                }
                3 => {
                    bytes.truncate(at);
                    self.note(format!("truncate at {at}"));
                }
                4 => {
                    let end = (at + self.rng.index(64)).min(bytes.len());
                    bytes.drain(at..end);
                    self.note(format!("delete bytes {at}..{end}"));
                }
                5 => {
                    let n = self.rng.range(1, 16) as usize;
                    let junk: Vec<u8> = (0..n).map(|_| self.rng.next() as u8).collect();
                    bytes.splice(at..at, junk);
                    self.note(format!("insert {n} random bytes at {at}"));
                }
                6 if !bytes.is_empty() => {
                    let from = self.rng.index(bytes.len());
                    let end = (from + self.rng.range(1, 512) as usize).min(bytes.len());
                    let copy = bytes[from..end].to_vec();
                    bytes.splice(at..at, copy);
                    self.note(format!("copy bytes {from}..{end} to {at}"));
                }
                _ => {
                    let n = self.rng.range(1, 600) as usize;
                    bytes.extend((0..n).map(|_| self.rng.next() as u8));
                    self.note(format!("append {n} random bytes"));
                }
            }
        }
    }

    /// A TOML value of any type, edge cases first.
    pub fn toml_value(&mut self) -> String {
        #[rustfmt::skip]
        const OTHERS: &[&str] = &[
            "\"\"", "\"x\"", "\"byte\"", "\"mixtral\"", "\"qwen2_moe\"", "\"../../etc/passwd\"", "\"/dev/zero\"", "\"cosine\"", "\"bf16\"", "\"cuda:99999999999\"",
            "\"keep-last-good\"", "\"ed25519:\"", "'literal'", "\"\\u0000\"", "\"\\uD800\"", "true", "false", "[]", "[1, 2]", "[nan, inf]", "[[]]",
            "[\"router\", \"bogus\"]", "[1, \"a\"]", "{}", "{ a = 1 }", "{ top_k = -1 }", "1979-05-27T07:32:00Z", "07:32:00",
        ];
        match self.rng.below(12) {
            0..=4 => self.edge_number().to_string(),
            5 => format!("\"{}\"", "a".repeat(self.rng.range(1000, 20000) as usize)),
            6 => {
                // Deep nesting, for parsers that recurse.
                let depth = *self.rng.pick(&[100usize, 1000, 100_000]);
                if self.rng.chance(0.5) { "[".repeat(depth) + &"]".repeat(depth) } else { "{ a = ".repeat(depth) + "1" + &" }".repeat(depth) }
            }
            _ => self.rng.pick(OTHERS).to_string(),
        }
    }

    /// 1 to 3 TOML-aware mutations of `text` (values replaced, keys deleted, duplicated
    /// or invented, lines swapped), sometimes followed by byte-level damage.
    pub fn mutate_toml(&mut self, text: &mut String) {
        #[rustfmt::skip]
        const INSERTS: &[&str] = &[
            "bogus = 1", "[bogus]", "[model.bogus]", "[[data.domains]]", "seed = 1", "[train]", "model.init.num_layers = 3", "[plugins.router.params]\nx = 1",
            "[[stages]]\nname = \"s\"\nsteps = 1", "[[stages]]\nname = \"a\"\nsteps = 9223372036854775807\n[[stages]]\nname = \"b\"\nsteps = 9223372036854775807",
            "[[stages]]\nname = \"a\"\nsteps = 9223372036854775807\n[[stages]]\nname = \"b\"\nsteps = 9223372036854775807\n[[stages]]\nname = \"c\"\nsteps = 12",
            "[[plugin]]\nfile = \"x.wasm\"", "[[plugin]]\nfile = \"../x.wasm\"", "name = \"dup\"",
        ];
        for _ in 0..self.rng.range(1, 3) {
            let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
            if lines.is_empty() {
                lines.push(String::new());
            }
            let i = self.rng.index(lines.len());
            match self.rng.below(8) {
                0 | 1 => {
                    let keyed: Vec<usize> = (0..lines.len()).filter(|&j| lines[j].contains(" = ") && !lines[j].starts_with('#')).collect();
                    if let Some(&j) = keyed.get(self.rng.index(keyed.len().max(1))) {
                        let value = self.toml_value();
                        let key = lines[j].split(" = ").next().unwrap_or_default().to_string();
                        self.note(format!("line {}: {key} = {}", j + 1, shorten(&value, 60)));
                        lines[j] = format!("{key} = {value}");
                    }
                }
                2 => {
                    let spans = number_spans(text);
                    if !spans.is_empty() {
                        let (start, end) = spans[self.rng.index(spans.len())];
                        let value = self.edge_number();
                        self.note(format!("number {:?} at byte {start} -> {value}", &text[start..end]));
                        text.replace_range(start..end, value);
                        continue;
                    }
                }
                3 => {
                    self.note(format!("delete line {}: {}", i + 1, shorten(&lines[i], 60)));
                    lines.remove(i);
                }
                4 => {
                    let to = self.rng.index(lines.len() + 1);
                    self.note(format!("duplicate line {} at {}: {}", i + 1, to + 1, shorten(&lines[i], 60)));
                    let line = lines[i].clone();
                    lines.insert(to, line);
                }
                5 => {
                    let insert = *self.rng.pick(INSERTS);
                    self.note(format!("insert at line {}: {}", i + 1, insert.replace('\n', "\\n")));
                    lines.insert(i, insert.to_string());
                }
                6 => {
                    let j = self.rng.index(lines.len());
                    self.note(format!("swap lines {} and {}", i + 1, j + 1));
                    lines.swap(i, j);
                }
                _ => {
                    let mut bytes = std::mem::take(text).into_bytes();
                    self.mutate_bytes(&mut bytes);
                    *text = String::from_utf8_lossy(&bytes).into_owned();
                    continue;
                }
            }
            *text = lines.join("\n");
        }
    }

    /// A JSON value of any type, nested at most `depth` more levels.
    pub fn json_value(&mut self, depth: u32) -> Value {
        match self.rng.below(if depth == 0 { 4 } else { 6 }) {
            0 => Value::Null,
            1 => Value::Bool(self.rng.chance(0.5)),
            2 => self.json_number(),
            3 => Value::String(self.rng.pick(JSON_STRINGS).to_string()),
            4 => Value::Array((0..self.rng.below(4)).map(|_| self.json_value(depth - 1)).collect()),
            _ => Value::Object((0..self.rng.below(3)).map(|_| (self.rng.pick(JSON_KEYS).to_string(), self.json_value(depth - 1))).collect()),
        }
    }

    /// An edge number as JSON: a number where JSON has one, else the text as a string.
    pub fn json_number(&mut self) -> Value {
        let text = self.edge_number();
        serde_json::from_str::<Value>(text).ok().filter(Value::is_number).unwrap_or_else(|| Value::String(text.into()))
    }

    /// 1 to 3 mutations of a JSON tree at random paths: values replaced (any type, edge
    /// numbers, deep nesting, big arrays), keys deleted or added, types swapped.
    pub fn mutate_json(&mut self, root: &mut Value) {
        for _ in 0..self.rng.range(1, 3) {
            let mut path = String::from("$");
            let node = self.walk(root, &mut path);
            match self.rng.below(8) {
                0 | 1 => {
                    *node = self.json_number();
                    self.note(format!("{path} = {node}"));
                }
                2 => {
                    *node = self.json_value(3);
                    self.note(format!("{path} = {}", shorten(&node.to_string(), 80)));
                }
                3 => match node {
                    Value::Object(map) if !map.is_empty() => {
                        let key = map.keys().nth(self.rng.index(map.len())).cloned().unwrap_or_default();
                        map.remove(&key);
                        self.note(format!("delete {path}.{key}"));
                    }
                    Value::Array(items) if !items.is_empty() => {
                        let i = self.rng.index(items.len());
                        items.remove(i);
                        self.note(format!("delete {path}[{i}]"));
                    }
                    _ => {
                        *node = Value::Null;
                        self.note(format!("{path} = null"));
                    }
                },
                4 => {
                    let key = self.rng.pick(JSON_KEYS).to_string();
                    let value = if self.rng.chance(0.5) { self.json_number() } else { self.json_value(2) };
                    self.note(format!("{path}.{key} = {}", shorten(&value.to_string(), 80)));
                    match node {
                        Value::Object(map) => {
                            map.insert(key, value);
                        }
                        other => *other = Value::Object([(key, value)].into_iter().collect()),
                    }
                }
                5 => {
                    let depth = self.rng.range(2, 64);
                    let mut value = self.json_number();
                    for _ in 0..depth {
                        value = json!([value]);
                    }
                    *node = value;
                    self.note(format!("{path} = a number nested in {depth} arrays"));
                }
                6 => {
                    let n = *self.rng.pick(&[100usize, 10_000]);
                    let item = self.json_value(1);
                    self.note(format!("{path} = [{}; {n}]", shorten(&item.to_string(), 40)));
                    *node = Value::Array(vec![item; n]);
                }
                _ => {
                    let swapped = match &*node {
                        Value::Number(n) => Value::String(n.to_string()),
                        Value::String(s) => s.parse::<f64>().ok().and_then(serde_json::Number::from_f64).map(Value::Number).unwrap_or(Value::Bool(true)),
                        Value::Bool(b) => json!(*b as u8),
                        Value::Array(items) => Value::Object(items.iter().enumerate().map(|(i, v)| (i.to_string(), v.clone())).collect()),
                        Value::Object(map) => Value::Array(map.values().cloned().collect()),
                        Value::Null => json!(0),
                    };
                    self.note(format!("{path}: {} -> {}", shorten(&node.to_string(), 40), shorten(&swapped.to_string(), 40)));
                    *node = swapped;
                }
            }
        }
    }

    /// A random node of `value`, its path appended to `path`.
    pub fn walk<'v>(&mut self, value: &'v mut Value, path: &mut String) -> &'v mut Value {
        let len = match &*value {
            Value::Object(map) => map.len(),
            Value::Array(items) => items.len(),
            _ => 0,
        };
        if len == 0 || !self.rng.chance(0.7) {
            return value;
        }
        let i = self.rng.index(len);
        match value {
            Value::Object(map) => {
                let (key, child) = map.iter_mut().nth(i).expect("in range");
                path.push_str(&format!(".{key}"));
                self.walk(child, path)
            }
            Value::Array(items) => {
                path.push_str(&format!("[{i}]"));
                self.walk(&mut items[i], path)
            }
            _ => unreachable!("only containers have children"),
        }
    }
}

/// Byte ranges of the numbers in TOML `text` (a digit or sign after `=`, `[`, `,` or a
/// space, up to the next delimiter).
fn number_spans(text: &str) -> Vec<(usize, usize)> {
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (bytes[i].is_ascii_digit() || bytes[i] == b'-' || bytes[i] == b'+') && i > 0 && b"= [,".contains(&bytes[i - 1]);
        if starts {
            let end = (i..bytes.len()).find(|&j| !(bytes[j].is_ascii_alphanumeric() || b".+-_".contains(&bytes[j]))).unwrap_or(bytes.len());
            spans.push((i, end));
            i = end;
        } else {
            i += 1;
        }
    }
    spans
}

/// `text` cut to `max` characters for notes and reports.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max { text.to_string() } else { format!("{}… ({} chars)", text.chars().take(max).collect::<String>(), text.chars().count()) }
}

/// The first `max` bytes of `bytes`, printable ASCII as is, the rest escaped.
pub fn escaped(bytes: &[u8], max: usize) -> String {
    let shown: String = bytes.iter().take(max).flat_map(|&b| std::ascii::escape_default(b)).map(char::from).collect();
    if bytes.len() > max { format!("{shown}… ({} bytes)", bytes.len()) } else { shown }
}

// Recast's SDK for plugins written in JavaScript (built with componentize-js).
//
// `recast plugin build` bundles this module with the plugin. It gives the same
// conveniences as the Rust SDK: parameters parsed from TOML or JSON with unknown keys
// refused, `info` records, errors the host shows as the plugin's own, f32 rounding where
// a policy must agree bit for bit with one written in Rust, the host's `log` and
// `metric`, and the seeded generator (`Rng`) whose streams equal the Rust SDK's. Init
// schemes build their plans with `recast-init-scheme.js`, beside this module.
//
//   import { info, parseParams, fail } from "./recast-sdk.js";
//   export const auxSchedule = {
//     info() { return info("my-schedule", "0.1.0", "aux-schedule", "What it does"); },
//     configure(params) { p = parseParams(params, { load_balance: 0.01 }); },
//     ...
//   };

import { log as hostLog, metric as hostMetric } from "recast:plugins/host@0.1.0";

/** The record `info` returns. `kind` is "router", "aux-schedule", "init-scheme" or "sampler". */
export function info(name, version, kind, description) {
  return { name, version, kind, description };
}

/** Refuse the call with `message`: the host shows it as the plugin's error. */
export function fail(message) {
  throw message;
}

/** `x` rounded to the nearest f32, as Rust's `as f32` does. */
export const f32 = Math.fround;

/** A line in the run's log ("trace", "debug", "info", "warn" or "error"). */
export function log(level, message) {
  hostLog(level, message);
}

/** A named scalar for the current step. */
export function metric(name, value) {
  hostMetric(name, value);
}

/**
 * Parse `text` (TOML, or JSON when it starts with `{`; empty means no values) over
 * `defaults`. Unknown keys and values of the wrong type are refused, so a typo in a run
 * config is never ignored. A default of `null` accepts a number or nothing.
 */
export function parseParams(text, defaults) {
  const body = text.trim();
  let given;
  if (body.startsWith("{")) {
    try {
      given = JSON.parse(body);
    } catch (e) {
      fail(`invalid JSON parameters: ${e}`);
    }
  } else {
    given = parseFlatToml(body);
  }
  const unknown = Object.keys(given).filter((k) => !(k in defaults)).sort();
  if (unknown.length === 1) fail(`unknown parameter \`${unknown[0]}\``);
  if (unknown.length > 1) fail(`unknown parameters ${unknown.map((k) => `\`${k}\``).join(", ")}`);
  const out = { ...defaults };
  for (const [key, value] of Object.entries(given)) {
    const wanted = defaults[key] === null ? "number" : typeof defaults[key];
    if (typeof value !== wanted) fail(`parameter \`${key}\` must be a ${wanted}, not ${JSON.stringify(value)}`);
    out[key] = value;
  }
  return out;
}

/** The TOML a run config's `params = { ... }` becomes: `key = value` lines of numbers,
 *  strings, booleans and flat arrays of them. */
function parseFlatToml(text) {
  const out = {};
  for (const [i, raw] of text.split("\n").entries()) {
    const line = raw.trim();
    if (line === "" || line.startsWith("#")) continue;
    const eq = line.indexOf("=");
    if (eq < 0 || line.startsWith("[")) fail(`invalid TOML parameters, line ${i + 1}: expected \`key = value\`: ${line}`);
    const key = line.slice(0, eq).trim().replace(/^"(.*)"$/, "$1");
    out[key] = parseValue(line.slice(eq + 1).trim(), i + 1);
  }
  return out;
}

function parseValue(text, line) {
  if (text === "true" || text === "false") return text === "true";
  if (text.startsWith('"')) return JSON.parse(text);
  if (text.startsWith("[")) {
    const inner = text.slice(1, -1).trim();
    return inner === "" ? [] : inner.split(",").map((v) => parseValue(v.trim(), line));
  }
  const number = Number(text.replace(/_/g, ""));
  if (text === "" || Number.isNaN(number)) fail(`invalid TOML parameters, line ${line}: cannot read the value ${text}`);
  return number;
}

const MASK = (1n << 64n) - 1n;

function rotl(x, k) {
  return ((x << k) | (x >> (64n - k))) & MASK;
}

/** Four SplitMix64 outputs from `x`: a xoshiro256** state. */
function splitmix64State(x) {
  const out = [];
  for (let i = 0; i < 4; i++) {
    x = (x + 0x9e3779b97f4a7c15n) & MASK;
    let z = x;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK;
    out.push(z ^ (z >> 31n));
  }
  return out;
}

/**
 * The Rust SDK's `recast_sdk::Rng` (xoshiro256** seeded through SplitMix64), bit for
 * bit: the same seed gives the same stream in either language, so a JavaScript plugin
 * can derive the same per-layer seeds (`new Rng(seed).fork(layer).nextU64()`) or sample
 * the same indices as its Rust twin. Plugins have no system randomness: every random
 * choice comes from the seed `configure` receives (a BigInt). 64-bit values are BigInts;
 * `normal` uses this engine's `Math.log`/`Math.cos`, which may differ from Rust's in the
 * last bit.
 */
export class Rng {
  /** A generator whose state is expanded from `seed` (a BigInt or a safe integer). */
  constructor(seed) {
    this.state = splitmix64State(BigInt(seed) & MASK);
  }

  /** An independent generator for sub-stream `stream`, derived from this one's seed
   *  material without advancing it. */
  fork(stream) {
    const s = this.state;
    const child = new Rng(0n);
    child.state = splitmix64State(s[0] ^ rotl(s[2], 17n) ^ ((BigInt(stream) * 0xd1b54a32d192ed03n) & MASK));
    return child;
  }

  /** The next 64 random bits, as a BigInt. */
  nextU64() {
    const s = this.state;
    const result = (rotl((s[1] * 5n) & MASK, 7n) * 9n) & MASK;
    const t = (s[1] << 17n) & MASK;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45n);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  nextF64() {
    return Number(this.nextU64() >> 11n) * 2 ** -53;
  }

  /** Uniform integer in `0..n` (a Number) without modulo bias (Lemire's method); n > 0. */
  below(n) {
    if (!(n > 0)) throw new RangeError(`Rng.below(${n})`);
    const big = BigInt(n);
    const threshold = ((1n << 64n) - big) % big;
    for (;;) {
      const m = this.nextU64() * big;
      if ((m & MASK) >= threshold) return Number(m >> 64n);
    }
  }

  /** A draw from N(mean, std^2) (Box-Muller; one draw per two uniforms). */
  normal(mean, std) {
    const u1 = 1 - this.nextF64();
    const u2 = this.nextF64();
    return mean + std * Math.sqrt(-2 * Math.log(u1)) * Math.cos(2 * Math.PI * u2);
  }

  /** Shuffle `items` in place (Fisher-Yates). */
  shuffle(items) {
    for (let i = items.length - 1; i > 0; i--) {
      const j = this.below(i + 1);
      [items[i], items[j]] = [items[j], items[i]];
    }
  }

  /** `k` distinct indices from `0..n`, uniformly without replacement, in draw order. */
  sampleIndices(n, k) {
    if (k > n) throw new RangeError(`cannot sample ${k} of ${n}`);
    const pool = Array.from({ length: n }, (_, i) => i);
    for (let i = 0; i < k; i++) {
      const j = i + this.below(n - i);
      [pool[i], pool[j]] = [pool[j], pool[i]];
    }
    return pool.slice(0, k);
  }
}

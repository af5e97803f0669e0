// Recast's SDK for plugins written in JavaScript (built with componentize-js).
//
// `recast plugin build` bundles this module with the plugin. It gives the same
// conveniences as the Rust SDK: parameters parsed from TOML or JSON with unknown keys
// refused, `info` records, errors the host shows as the plugin's own, f32 rounding where
// a policy must agree bit for bit with one written in Rust, and the host's `log` and
// `metric`.
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

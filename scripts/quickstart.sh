#!/usr/bin/env bash
# Recast's main job on built-in inputs (the README's first command). For now: build the
# host, build every reference plugin into a sandboxed component, inspect and
# conformance-check each one, and measure what plugin calls cost.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p recast-host
recast=target/release/recast

for crate in plugins/router/* plugins/aux-schedule/* plugins/init-scheme/* plugins/sampler/*; do
    wasm=$("$recast" plugin build "$crate" | tail -n 1)
    "$recast" plugin inspect "$wasm"
    "$recast" plugin check "$wasm"
done
"$recast" bench plugins --router plugins/target/plugins/topk-softmax.wasm

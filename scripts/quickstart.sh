#!/usr/bin/env bash
# Recast's main job on built-in inputs (the README's first command). For now: build the
# host, build every reference plugin into a sandboxed component, inspect and
# conformance-check each one, and measure what plugin calls cost.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --release -p recast-host
recast=target/release/recast

"$recast" plugin build plugins
for plugin in topk-softmax constant temperature sparse-upcycle; do
    "$recast" plugin inspect "plugins/target/plugins/$plugin.wasm"
    "$recast" plugin check "plugins/target/plugins/$plugin.wasm"
done
"$recast" bench plugins --router plugins/target/plugins/topk-softmax.wasm

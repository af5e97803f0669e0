#!/usr/bin/env bash
# Recast's main job on built-in data (the README's first command): build the host,
# train a small MoE from scratch on the three built-in domains (arithmetic, code,
# prose) with the reference router, aux-loss and sampler plugins steering every step,
# then evaluate it and write the report (loss curves, expert-load heatmap, summary).
# Installs what it needs (MKL for the linear layers, through scripts/cpu-blas.sh; the
# wasm32 Rust target, through `recast plugin build`).
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/cpu-blas.sh
cargo build --release -p recast-host
recast=target/release/recast
run=runs/tiny-moe

# A fresh demo run each time; real runs are resumed with `recast train --resume`.
rm -rf "$run"
"$recast" train examples/tiny-moe.toml --out "$run"
"$recast" eval "$run"
"$recast" report "$run"
echo "report: $run/report/summary.md"

#!/usr/bin/env bash
# Builds the CUDA host here, where there is no GPU and no system CUDA, for the GPU
# machine (CUDA 13.0, an H100/H200: compute capability 9.0), and packs what that machine
# runs into .device/ (git-ignored; the device tool carries it):
#
#   .device/recast.xz             `recast` built with `--features cuda`
#   .device/recast-cuda-tests.xz  the library's tests with `--features cuda`: the CUDA
#                                 kernels and MoE layer against the CPU path
#   .device/plugins/, .device/tiny-moe-50-{cpu,cuda}.toml
#                                 the 50-step training comparison's plugins and configs
#
# scripts/device/check.sh runs all of it on the GPU machine.
#
# The toolkit comes from the Python registry (scripts/cuda-toolchain.sh --link). The
# build goes to target/cuda so the CPU build's target directory stays warm. The first
# build compiles candle's CUDA kernels (about 9 CPU-minutes).
#
#   scripts/cuda-build.sh           build and pack
#   scripts/cuda-build.sh --check   only type-check the CUDA host (no link, no pack)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

home="$(bash scripts/cuda-toolchain.sh --link | sed -n 's/^CUDA_HOME=//p')"
export CUDA_HOME="$home" CUDA_PATH="$home" CUDA_ROOT="$home"
export PATH="$home/bin:$PATH"
export LIBRARY_PATH="$home/lib/stubs:$home/lib${LIBRARY_PATH:+:$LIBRARY_PATH}"
export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
export CARGO_TARGET_DIR="$root/target/cuda"

if [[ "${1:-}" == "--check" ]]; then
    cargo check --release -p recast-host --features cuda --lib --tests --bins
    exit 0
fi

cargo build --release -p recast-host --features cuda --bin recast
tests="$(cargo test --release -p recast-host --features cuda --lib --no-run --message-format=json \
    | python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("target", {}).get("kind") == ["lib"] and m.get("profile", {}).get("test") and m.get("executable"):
        print(m["executable"])')"
[[ -n "$tests" ]] || { echo "cuda-build: no test executable found" >&2; exit 1; }

mkdir -p .device/plugins
# Without debug info (line tables of candle's kernels make the binary 240 MB): what
# travels must stay under the device tool's 64 MiB.
for pair in "$CARGO_TARGET_DIR/release/recast:recast" "$tests:recast-cuda-tests"; do
    strip --strip-debug -o ".device/${pair##*:}" "${pair%%:*}"
    xz -T0 -6 -f ".device/${pair##*:}"
done

# The device has no Rust to build plugins: the tiny-moe run's plugins travel built (by
# the CPU build of recast), with run configs that name their files, one per device.
unset CARGO_TARGET_DIR
for plugin in router/topk-softmax aux-schedule/constant sampler/temperature; do
    built="$(cargo run --release -q -p recast-host -- plugin build "plugins/$plugin" | tail -1)"
    [[ -f "$built" ]] || { echo "cuda-build: building plugins/$plugin gave no component" >&2; exit 1; }
    cp "$built" ".device/plugins/${plugin#*/}.wasm"
done
python3 - <<'PY'
import re
text = open("examples/tiny-moe.toml").read()
text = re.sub(r'builtin = "(topk-softmax|constant|temperature)"', r'file = "plugins/\1.wasm"', text)
text = re.sub(r"(?m)^steps = \d+", "steps = 50", text)
text = re.sub(r"(?m)^eval_every = \d+", "eval_every = 1000", text)
text = re.sub(r"(?m)^checkpoint_every = \d+", "checkpoint_every = 50", text)
for device in ("cpu", "cuda"):
    open(f".device/tiny-moe-50-{device}.toml", "w").write(text + f'\n[compute]\ndevice = "{device}"\n')
PY
ls -la .device .device/plugins

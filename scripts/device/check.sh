#!/usr/bin/env bash
# Runs on the GPU machine (CUDA 13, PyTorch and transformers installed, no Rust), from
# the repository root, with .device/ from scripts/cuda-build.sh carried along:
#
#   1. the CUDA tests: every kernel and the whole MoE layer, forward and backward,
#      against the CPU path (f32 tight, bf16 loose);
#   2. 50 training steps of examples/tiny-moe.toml on the GPU and on the CPU, loss
#      curves compared (scripts/device/compare_losses.py);
#   3. the benchmark: our MoE layer against transformers' MixtralSparseMoeBlock in bf16
#      at T=16384, d=4096, E=8, k=2, FFN 14336 (scripts/device/bench_moe_vs_torch.py).
#
# Logs go to $OUT (the device tool's folder that comes back) or /tmp/recast-device.
# Exits non-zero if any part fails; every part runs regardless.
set -uo pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-/tmp/recast-device}"
mkdir -p "$out"
bin=/tmp/recast-bin
mkdir -p "$bin"

# cuBLAS, cuRAND and the CUDA runtime from the machine's PyTorch install; the driver.
libs="$(python3 - <<'PY'
import glob, os, site, sys
dirs = set()
for sp in site.getsitepackages() + [site.getusersitepackages()]:
    for lib in glob.glob(os.path.join(sp, "nvidia", "**", "lib*.so*"), recursive=True):
        dirs.add(os.path.dirname(lib))
print(":".join(sorted(dirs)))
PY
)"
export LD_LIBRARY_PATH="$libs:/usr/local/nvidia/lib64:/usr/local/cuda/lib64:${LD_LIBRARY_PATH:-}"
python3 - "$bin" <<'PY'
import lzma, os, shutil, sys
for name in ("recast", "recast-cuda-tests"):
    with lzma.open(f".device/{name}.xz") as src, open(os.path.join(sys.argv[1], name), "wb") as dst:
        shutil.copyfileobj(src, dst)
    os.chmod(os.path.join(sys.argv[1], name), 0o755)
PY
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/gpu.txt"
status=0

echo "== 1. CUDA ops vs the CPU path"
"$bin/recast-cuda-tests" cuda:: --test-threads=1 2>&1 | tee "$out/tests.log"
[[ ${PIPESTATUS[0]} == 0 ]] || status=1

echo "== 2. 50 training steps, GPU vs CPU"
for device in cuda cpu; do
    rm -rf "/tmp/run-$device"
    "$bin/recast" train ".device/tiny-moe-50-$device.toml" --out "/tmp/run-$device" >"$out/train-$device.log" 2>&1 || { status=1; tail -20 "$out/train-$device.log"; }
    cp "/tmp/run-$device/metrics.jsonl" "$out/metrics-$device.jsonl" 2>/dev/null
done
python3 scripts/device/compare_losses.py "$out/metrics-cpu.jsonl" "$out/metrics-cuda.jsonl" 2>&1 | tee "$out/losses.txt"
[[ ${PIPESTATUS[0]} == 0 ]] || status=1

echo "== 3. MoE layer vs transformers' MixtralSparseMoeBlock (bf16)"
PYTHONUNBUFFERED=1 python3 scripts/device/bench_moe_vs_torch.py --recast "$bin/recast" 2>&1 | tee "$out/bench.log"
[[ ${PIPESTATUS[0]} == 0 ]] || status=1

echo "device check: $([[ $status == 0 ]] && echo passed || echo FAILED)"
exit $status

#!/usr/bin/env bash
# Data and expert parallelism against one process on examples/tiny-moe.toml, in one run:
# tokens/s of 2 ranks × 1 thread (mpirun; data parallel, then expert parallel) against
# 1 rank × 2 threads, and the share of each step the 2-rank jobs spend in collectives
# (comm_ms; for expert parallelism it includes the layers' all-to-alls). Medians over steps 3..STEPS (the first steps
# warm up). Needs a recast built with the mpi feature:
#
#   cargo build --release --features mpi && scripts/bench_distributed.sh [STEPS]
set -euo pipefail
cd "$(dirname "$0")/.."
steps="${1:-30}"
recast="target/release/recast"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

"$recast" train examples/tiny-moe.toml --out "$work/one" --max-steps "$steps" --threads 2 >/dev/null 2>&1
mpirun --allow-run-as-root --oversubscribe -np 2 "$recast" train examples/tiny-moe.toml --out "$work/two" --max-steps "$steps" --threads 1 >/dev/null 2>&1
mpirun --allow-run-as-root --oversubscribe -np 2 "$recast" train examples/tiny-moe.toml --expert-parallel 2 --out "$work/ep" --max-steps "$steps" --threads 1 >/dev/null 2>&1

python3 - "$work/one/metrics.jsonl" "$work/two/metrics.jsonl" "$work/ep/metrics.jsonl" <<'PY'
import json, statistics, sys
def steps(path):
    return [r for r in map(json.loads, open(path)) if "lr" in r and r["step"] >= 3]
one = steps(sys.argv[1])
t1 = statistics.median(r["tokens_per_s"] for r in one)
print(f"1 rank x 2 threads: {t1:.0f} tokens/s")
for label, path in [("data parallel 2", sys.argv[2]), ("expert parallel 2", sys.argv[3])]:
    job = steps(path)
    t = statistics.median(r["tokens_per_s"] for r in job)
    share = statistics.median(r["comm_ms"] / r["step_ms"] for r in job)
    comm = statistics.median(r["comm_ms"] for r in job)
    print(f"2 ranks x 1 thread, {label}: {t:.0f} tokens/s, ratio to 1 rank {t / t1:.2f}, collectives {100 * share:.1f}% of a step (median comm_ms {comm:.1f} ms)")
PY

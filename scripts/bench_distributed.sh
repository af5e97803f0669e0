#!/usr/bin/env bash
# Data parallelism against one process on examples/tiny-moe.toml, in one run: tokens/s of
# 2 ranks × 1 thread (mpirun) against 1 rank × 2 threads, and the share of each step the
# 2-rank job spends in collectives (comm_ms). Medians over steps 3..STEPS (the first steps
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

python3 - "$work/one/metrics.jsonl" "$work/two/metrics.jsonl" <<'PY'
import json, statistics, sys
def steps(path):
    return [r for r in map(json.loads, open(path)) if "lr" in r and r["step"] >= 3]
one, two = steps(sys.argv[1]), steps(sys.argv[2])
t1 = statistics.median(r["tokens_per_s"] for r in one)
t2 = statistics.median(r["tokens_per_s"] for r in two)
share = statistics.median(r["comm_ms"] / r["step_ms"] for r in two)
print(f"1 rank x 2 threads: {t1:.0f} tokens/s")
print(f"2 ranks x 1 thread: {t2:.0f} tokens/s")
print(f"ratio (2 ranks / 1 rank): {t2 / t1:.2f}")
print(f"collectives: {100 * share:.1f}% of a 2-rank step (median comm_ms {statistics.median(r['comm_ms'] for r in two):.1f} ms)")
PY

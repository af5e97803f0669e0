"""Compare two runs' training-loss curves (metrics.jsonl): the GPU run must follow the
CPU run step by step. Usage: compare_losses.py CPU_METRICS GPU_METRICS [--tolerance R]

The tolerance is relative, per step: f32 on both sides, but the GPU reduces in another
order (cuBLAS, atomics-free kernels), so curves drift apart slowly; 2 % over 50 steps."""
import argparse
import json
import sys


def losses(path):
    with open(path) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f) if "loss" in r}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("cpu")
    p.add_argument("gpu")
    p.add_argument("--tolerance", type=float, default=0.02)
    a = p.parse_args()
    cpu, gpu = losses(a.cpu), losses(a.gpu)
    steps = sorted(set(cpu) & set(gpu))
    if len(steps) < 50:
        print(f"only {len(steps)} common steps (cpu {len(cpu)}, gpu {len(gpu)})")
        return 1
    worst = max(steps, key=lambda s: abs(gpu[s] - cpu[s]) / abs(cpu[s]))
    gap = abs(gpu[worst] - cpu[worst]) / abs(cpu[worst])
    for s in steps[:: max(1, len(steps) // 10)] + [steps[-1]]:
        print(f"step {s:3d}: cpu {cpu[s]:.5f}  gpu {gpu[s]:.5f}")
    ok = gap <= a.tolerance
    print(f"largest relative gap {gap:.2e} at step {worst} (tolerance {a.tolerance}): {'ok' if ok else 'FAILED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

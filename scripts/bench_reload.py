"""Benchmark hot reload during a real `recast train`: the time from writing a new plugin
file to the new version running, and the step time while a reload is under way compared
with a normal step, both measured in the same run.

The run is examples/tiny-moe.toml's model and data with the aux-free-bias router loaded
from a file. After a warm-up, the script replaces the router file RELOADS times with new
builds (the same component with a distinct custom section appended, so each has a new
sha256), atomically (write a temporary file, rename it over), and reads the journal:

    file write -> swap: median X ms (min, max) over N reloads
      of which: vetting off the training thread Y ms, swap on the training thread Z ms
    step time: during a reload M ms, normal N ms, ratio M/N

"During a reload" are the steps whose run overlaps the time from a file write to its swap
(the new version is compiled and vetted meanwhile) and the step that swapped it in;
"normal" are all other steps after the warm-up.

Usage: python3 scripts/bench_reload.py --recast target/release/recast [--reloads 8] [--threads 2]
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def config_text(router: Path) -> str:
    text = (REPO / "examples" / "tiny-moe.toml").read_text()
    head, _, _ = text.partition("[plugins.router]")
    return head + f"""[plugins.router]
file = "{router}"
params = {{ gamma = 0.001, top_k = 2 }}

[optimizer]
lr = 3e-3

[train]
steps = 100000
batch_size = 16
seq_len = 128
"""


def records(path: Path):
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            pass  # a line being written
    return out


def steps_done(run: Path) -> int:
    return max((r["step"] for r in records(run / "metrics.jsonl") if "loss" in r), default=0)


def wait(what, ready, proc, timeout=300):
    start = time.time()
    while not ready():
        if proc.poll() is not None:
            sys.exit(f"recast train exited while waiting for {what}")
        if time.time() - start > timeout:
            sys.exit(f"timed out waiting for {what}")
        time.sleep(0.005)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recast", default=str(REPO / "target" / "release" / "recast"))
    ap.add_argument("--reloads", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=10, help="steps before the first reload")
    ap.add_argument("--gap", type=int, default=6, help="steps between reloads")
    args = ap.parse_args()

    built = subprocess.run([args.recast, "plugin", "build", str(REPO / "plugins" / "router" / "aux-free-bias")], check=True, capture_output=True, text=True)
    base = Path(built.stdout.strip().splitlines()[-1]).read_bytes()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        router = work / "router.wasm"
        router.write_bytes(base)
        cfg = work / "run.toml"
        cfg.write_text(config_text(router))
        run = work / "run"
        proc = subprocess.Popen([args.recast, "train", str(cfg), "--out", str(run), "--threads", str(args.threads)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait("the warm-up", lambda: steps_done(run) >= args.warmup, proc)
            writes = []
            for i in range(args.reloads):
                name = f"bench-reload-{i}".encode()
                body = bytes([len(name)]) + name + b"x"
                version = base + bytes([0, len(body)]) + body
                tmp_file = work / "router.wasm.tmp"
                tmp_file.write_bytes(version)
                written = time.time()
                os.replace(tmp_file, router)
                writes.append(written)
                wait(f"swap {i + 1}", lambda: sum(r.get("event") == "plugin-swap" for r in records(run / "journal.jsonl")) > i, proc)
                target = steps_done(run) + args.gap
                wait("the next steps", lambda: steps_done(run) >= target, proc)
        finally:
            proc.terminate()
            proc.wait()

        swaps = [r for r in records(run / "journal.jsonl") if r.get("event") == "plugin-swap"]
        latency = [s["noticed_unix_ms"] + s["notice_to_swap_ms"] - w * 1e3 for s, w in zip(swaps, writes)]
        metrics = {r["step"]: r for r in records(run / "metrics.jsonl") if "loss" in r}
        # A step is "during a reload" when its run overlaps a window from the file write
        # to the swap (the swap itself happens at the start of the step after).
        windows = [(w * 1e3, s["noticed_unix_ms"] + s["notice_to_swap_ms"]) for s, w in zip(swaps, writes)]
        during = {k for k, r in metrics.items() if any(r["unix_ms"] - r["step_ms"] <= end and r["unix_ms"] >= start for start, end in windows)}
        during |= {s["step"] + 1 for s in swaps}
        reload_steps = [metrics[k]["step_ms"] for k in sorted(during) if k in metrics]
        normal_steps = [r["step_ms"] for k, r in metrics.items() if k > args.warmup and k not in during]
        med = statistics.median
        print(f"reloads: {len(swaps)} (router aux-free-bias, tiny-moe model, {args.threads} threads)")
        print(f"file write -> swap: median {med(latency):.0f} ms (min {min(latency):.0f}, max {max(latency):.0f})")
        print(f"  of which: vetting off the training thread median {med([s['vetting_ms'] for s in swaps]):.0f} ms, "
              f"swap on the training thread median {med([s['swap_ms'] for s in swaps]):.2f} ms")
        print(f"steps during a reload: {len(reload_steps)}, normal: {len(normal_steps)}")
        print(f"step time: during a reload median {med(reload_steps):.0f} ms (mean {statistics.mean(reload_steps):.0f}), "
              f"normal median {med(normal_steps):.0f} ms (mean {statistics.mean(normal_steps):.0f}), "
              f"ratio {med(reload_steps) / med(normal_steps):.3f}")


if __name__ == "__main__":
    main()

"""Benchmark `recast upcycle` on a ~1B-parameter dense checkpoint: time and peak memory.

Upcycling should cost about what moving its output's bytes costs, and its memory should
be bounded by a few tensors, not the model. This script generates a random dense Llama
checkpoint of about 1.1B parameters in bf16 (TinyLlama's shape: hidden 2048, 22 layers,
FFN 5632, 32 heads, 4 kv heads, vocab 32000), upcycles it into 8 experts per layer with
`recast upcycle --scheme sparse-upcycle` (once untimed, then timed), then copies the
output's files (with fsync, as the upcycler does) as the reference, and prints

    upcycle: X s, copy of the output's bytes: Y s, ratio X/Y
    peak RSS of recast upcycle: Z MiB

Usage: .venv/bin/python scripts/bench_upcycle.py --recast target/release/recast [--workdir DIR] [--keep]
It needs about 3x the output size (≈13 GB) of free disk in the work directory.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


SHAPE = dict(vocab=32000, hidden=2048, layers=22, ffn=5632, heads=32, kv_heads=4)
SHARD_BYTES = 2 << 30


def dense_tensors():
    """(name, shape) of every tensor of the dense Llama, in file order."""
    v, d, f, h, kv = SHAPE["vocab"], SHAPE["hidden"], SHAPE["ffn"], SHAPE["heads"], SHAPE["kv_heads"]
    hd = d // h
    yield "model.embed_tokens.weight", (v, d)
    for layer in range(SHAPE["layers"]):
        p = f"model.layers.{layer}"
        yield f"{p}.input_layernorm.weight", (d,)
        yield f"{p}.self_attn.q_proj.weight", (h * hd, d)
        yield f"{p}.self_attn.k_proj.weight", (kv * hd, d)
        yield f"{p}.self_attn.v_proj.weight", (kv * hd, d)
        yield f"{p}.self_attn.o_proj.weight", (d, h * hd)
        yield f"{p}.post_attention_layernorm.weight", (d,)
        yield f"{p}.mlp.gate_proj.weight", (f, d)
        yield f"{p}.mlp.up_proj.weight", (f, d)
        yield f"{p}.mlp.down_proj.weight", (d, f)
    yield "model.norm.weight", (d,)
    yield "lm_head.weight", (v, d)


def write_dense(directory: Path) -> int:
    """Write the random dense checkpoint in shards; return its parameter count. Runs in
    its own process (`--generate`), so the measuring process stays small: a child's peak
    RSS counts the pages it inherits before `exec`."""
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True)
    gen = torch.Generator().manual_seed(0)
    shard, shard_bytes, shards, weight_map, total = {}, 0, [], {}, 0

    def flush():
        nonlocal shard, shard_bytes
        name = f"model-{len(shards) + 1:05d}.safetensors"
        save_file(shard, str(directory / name), metadata={"format": "pt"})
        weight_map.update({t: name for t in shard})
        shards.append(name)
        shard, shard_bytes = {}, 0

    for name, shape in dense_tensors():
        t = (torch.randn(shape, generator=gen) * 0.02).to(torch.bfloat16) if len(shape) == 2 else torch.ones(shape, dtype=torch.bfloat16)
        shard[name] = t
        shard_bytes += t.numel() * 2
        total += t.numel()
        if shard_bytes >= SHARD_BYTES:
            flush()
    if shard:
        flush()
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total * 2}, "weight_map": weight_map}))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": SHAPE["vocab"],
        "hidden_size": SHAPE["hidden"], "intermediate_size": SHAPE["ffn"], "num_hidden_layers": SHAPE["layers"],
        "num_attention_heads": SHAPE["heads"], "num_key_value_heads": SHAPE["kv_heads"], "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0, "tie_word_embeddings": False, "hidden_act": "silu", "max_position_embeddings": 2048,
    }
    (directory / "config.json").write_text(json.dumps(config, indent=2))
    return total


def copy_with_fsync(src: Path, dst: Path) -> None:
    dst.mkdir()
    for f in sorted(src.iterdir()):
        with open(f, "rb") as i, open(dst / f.name, "wb") as o:
            shutil.copyfileobj(i, o, length=16 << 20)
            o.flush()
            os.fsync(o.fileno())


def run_measured(argv: list[str], work: Path) -> tuple[str, str, int, float, float]:
    """Run one command; its stdout, stderr, exit code, seconds and peak RSS (MiB) alone."""
    out_path, err_path = work / "stdout.txt", work / "stderr.txt"
    with open(out_path, "w") as out, open(err_path, "w") as err:
        start = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - start
        proc.returncode = os.waitstatus_to_exitcode(status)
    return out_path.read_text(), err_path.read_text(), proc.returncode, seconds, usage.ru_maxrss / 1024


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recast", type=Path, required=True)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--generate", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.generate:
        print(write_dense(args.generate))
        return 0
    work = Path(tempfile.mkdtemp(prefix="recast-bench-upcycle-", dir=args.workdir))
    try:
        dense, out, copy = work / "dense", work / "moe", work / "copy"
        start = time.perf_counter()
        generated = subprocess.run([sys.executable, __file__, "--recast", str(args.recast), "--generate", str(dense)], capture_output=True, text=True, check=True)
        params = int(generated.stdout.split()[-1])
        print(f"dense checkpoint: {params / 1e9:.2f}B parameters, bf16, written in {time.perf_counter() - start:.0f} s", flush=True)

        # Build the scheme first, so neither its compile time nor cargo's memory counts.
        root = Path(__file__).resolve().parent.parent
        built = subprocess.run([str(args.recast), "plugin", "build", str(root / "plugins/init-scheme/sparse-upcycle")],
                               capture_output=True, text=True, check=True)
        scheme = built.stdout.strip().splitlines()[-1]
        argv = [str(args.recast), "upcycle", "--source", str(dense), "--scheme", scheme,
                "--params", "experts = 8\ntop_k = 2", "--out", str(out)]
        # One untimed run first: right after the source is written the disk is still
        # settling, which would charge the upcycler for the generator's writes.
        for warm_up in (True, False):
            shutil.rmtree(out, ignore_errors=True)
            os.sync()  # every timed phase starts with no dirty pages to write back
            stdout, stderr, code, upcycle_s, peak_mib = run_measured(argv, work)
            if code != 0 or not warm_up:
                break
        if code != 0:
            print(stdout, stderr, file=sys.stderr)
            return 1
        print(stdout.strip())
        out_bytes = sum(f.stat().st_size for f in out.iterdir())

        os.sync()
        start = time.perf_counter()
        copy_with_fsync(out, copy)
        copy_s = time.perf_counter() - start
        print(f"output: {out_bytes / 1e9:.1f} GB")
        print(f"upcycle: {upcycle_s:.1f} s, copy of the output's bytes: {copy_s:.1f} s, ratio {upcycle_s / copy_s:.2f}")
        print(f"peak RSS of recast upcycle: {peak_mib:.0f} MiB")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

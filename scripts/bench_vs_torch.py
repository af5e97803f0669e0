"""Benchmark Recast against PyTorch on CPU: same shapes, same thread count, one script.

Recast claims its native MoE kernels are competitive with PyTorch. This script measures the
claim honestly on the machine at hand by timing both sides back to back and printing the
ratio torch/recast (> 1 means Recast is faster). Two benchmarks:

  moe-layer   one MoE layer, forward + backward: 4096 tokens, hidden 512, 8 experts, top-2,
              SwiGLU expert width 1408; PyTorch does sort-by-expert dispatch, one gather,
              per-expert GEMMs and one index_add_ back (the usual eager implementation).
  moe-layer-bf16
              the same in mixed precision: PyTorch under bf16 autocast, Recast with
              `--dtype bf16` (f32 weights, bf16 matmuls with f32 accumulation).
  model-step  a small Mixtral (vocab 8192, hidden 256, 4 layers, 8 experts top-2), forward +
              backward of the next-token cross-entropy on a [4, 256] batch; PyTorch side is
              Hugging Face transformers with eager attention.
  train-step  whole training steps of a run config (default examples/tiny-moe.toml): the
              same Mixtral shape and batch in transformers with its router aux loss,
              backward, gradient clipping and torch.optim.AdamW; printed as tokens/s, with
              Recast's plugin time as a share of its step time.
  train-step-bf16
              the same with PyTorch's forward under bf16 autocast and Recast's
              `--precision bf16`.
  real-step, real-step-bf16
              training steps at a real model's shape (examples/bench/real-shape-moe.toml:
              SmolLM-135M's geometry upcycled to 4 experts top-2, 374 M parameters, vocabulary
              49,152 with a tied head, batch 4 x 256), each side in its own process so its
              peak resident memory is its own: one line of tokens/s ratio and one of
              peak-RSS ratio.

Recast runs first in each benchmark, so PyTorch's worker threads are idle while it runs.

Usage:
    .venv/bin/python scripts/bench_vs_torch.py --recast target/release/recast \
        [--threads N] [--what moe-layer,moe-layer-bf16,model-step,train-step,train-step-bf16,real-step,real-step-bf16]
        [--config RUN.toml]
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import MixtralConfig, MixtralForCausalLM
from transformers.utils import logging as hf_logging

RECAST_TIMEOUT_S = 600
SEED = 0

MOE = dict(tokens=4096, hidden=512, experts=8, top_k=2, ffn=1408)
MOE_WARMUP, MOE_RUNS = 2, 7

MODEL = dict(
    vocab_size=8192,
    hidden_size=256,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=4,
    intermediate_size=704,
    num_local_experts=8,
    num_experts_per_tok=2,
)
BATCH, SEQ = 4, 256
MODEL_WARMUP, MODEL_RUNS = 1, 5


class RecastFailed(Exception):
    """The recast command failed or printed no timing line."""


def run_recast(argv: list, label: str, unit: str = " ms") -> float:
    """Run a recast bench command; return X from its last stdout line, `{label}: X{unit}`."""
    argv = [str(arg) for arg in argv]
    command = " ".join(argv)
    print(f"$ {command}", flush=True)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=RECAST_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise RecastFailed(f"timed out after {RECAST_TIMEOUT_S}s: {command}")
    lines = proc.stdout.strip().splitlines()
    match = re.fullmatch(re.escape(label) + r": ([0-9.eE+-]+)" + re.escape(unit), lines[-1].strip()) if lines else None
    for line in lines[:-1]:
        print(f"  recast: {line}")
    if proc.returncode != 0 or match is None:
        raise RecastFailed(
            f"{command}\nexit code {proc.returncode}; expected the last stdout line to be '{label}: X ms'\n"
            f"--- stdout ---\n{proc.stdout.rstrip()}\n--- stderr ---\n{proc.stderr.rstrip()}"
        )
    return float(match.group(1))


def median_ms(step: Callable[[], None], warmup: int, runs: int) -> float:
    for _ in range(warmup):
        step()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def report(name: str, torch_ms: float, recast_ms: float) -> None:
    print(f"{name}: torch {torch_ms:.1f} ms, recast {recast_ms:.1f} ms")
    print(f"ratio (torch/recast): {torch_ms / recast_ms:.2f}")


# ---------------------------------------------------------------- moe-layer


def moe_layer(x, router, gate, up, down, top_k: int) -> torch.Tensor:
    """Token-choice top-k MoE with SwiGLU experts (HF weight layout: y = x @ W.T)."""
    probs = (x @ router.T).softmax(dim=-1)
    weights, experts = probs.topk(top_k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)

    flat_experts = experts.reshape(-1)
    order = flat_experts.argsort(stable=True)
    token_of = order // top_k
    counts = torch.bincount(flat_experts, minlength=len(gate)).tolist()

    rows = x.index_select(0, token_of)
    outputs = [
        (F.silu(chunk @ gate[e].T) * (chunk @ up[e].T)) @ down[e].T
        for e, chunk in enumerate(rows.split(counts))
    ]
    weighted = torch.cat(outputs) * weights.reshape(-1)[order].unsqueeze(1)
    return weighted.new_zeros(x.shape).index_add_(0, token_of, weighted)


def torch_moe_layer_ms(bf16: bool = False) -> float:
    gen = torch.Generator().manual_seed(SEED)
    t, d, e, f = MOE["tokens"], MOE["hidden"], MOE["experts"], MOE["ffn"]

    def param(*shape, std=0.02):
        return (torch.randn(shape, generator=gen) * std).requires_grad_()

    x = param(t, d, std=1.0)
    router = param(e, d)
    gate = [param(f, d) for _ in range(e)]
    up = [param(f, d) for _ in range(e)]
    down = [param(d, f) for _ in range(e)]
    leaves = [x, router, *gate, *up, *down]

    def step():
        for leaf in leaves:
            leaf.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = moe_layer(x, router, gate, up, down, MOE["top_k"])
        out.float().sum().backward()

    return median_ms(step, MOE_WARMUP, MOE_RUNS)


def bench_moe_layer(recast: Path, threads: int, bf16: bool = False) -> None:
    argv = [str(recast), "bench", "moe-layer", "--tokens", MOE["tokens"], "--hidden", MOE["hidden"],
            "--experts", MOE["experts"], "--top-k", MOE["top_k"], "--ffn", MOE["ffn"], "--threads", threads,
            "--dtype", "bf16" if bf16 else "f32"]
    recast_ms = run_recast(argv, "moe-layer fwd+bwd")
    name = "moe-layer fwd+bwd" + (" (bf16 autocast / recast --dtype bf16)" if bf16 else "")
    report(name, torch_moe_layer_ms(bf16), recast_ms)


def bench_moe_layer_bf16(recast: Path, threads: int) -> None:
    bench_moe_layer(recast, threads, bf16=True)


# ---------------------------------------------------------------- model-step


def make_mixtral(directory: Path) -> MixtralForCausalLM:
    torch.manual_seed(SEED)
    config = MixtralConfig(**MODEL, attn_implementation="eager")
    model = MixtralForCausalLM(config)
    model.save_pretrained(directory)
    return model.train()


def torch_model_step_ms(model: MixtralForCausalLM) -> float:
    gen = torch.Generator().manual_seed(SEED)
    tokens = torch.randint(0, MODEL["vocab_size"], (BATCH, SEQ), generator=gen)

    def step():
        model.zero_grad(set_to_none=True)
        logits = model(tokens).logits
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1))
        loss.backward()

    return median_ms(step, MODEL_WARMUP, MODEL_RUNS)


def bench_model_step(recast: Path, threads: int) -> None:
    with tempfile.TemporaryDirectory(prefix="recast-bench-") as tmp:
        model = make_mixtral(Path(tmp))
        argv = [str(recast), "bench", "model-step", "--model", tmp, "--batch", BATCH, "--seq", SEQ,
                "--threads", threads]
        recast_ms = run_recast(argv, "model fwd+bwd")
    print(f"(transformers experts implementation: {model.config._experts_implementation})")
    report("model fwd+bwd", torch_model_step_ms(model), recast_ms)


# ---------------------------------------------------------------- train-step

TRAIN_WARMUP, TRAIN_RUNS = 2, 5


def torch_train_tokens_per_s(config: dict, bf16: bool = False) -> float:
    """Tokens/s of transformers + AdamW on the run config's model shape and batch."""
    shape, train, opt = config["model"]["init"], config["train"], config.get("optimizer", {})
    coefficients = config.get("plugins", {}).get("aux_schedule", {}).get("params", {})
    top_k = shape.get("top_k", 2)
    torch.manual_seed(SEED)
    model = MixtralForCausalLM(MixtralConfig(
        vocab_size=max(256, shape.get("vocab_size", 256)),  # the byte tokenizer's, or the config's rows
        tie_word_embeddings=shape.get("tie_word_embeddings", False),
        rope_theta=shape.get("rope_theta", 10000.0),
        hidden_size=shape["hidden_size"],
        num_hidden_layers=shape["num_layers"],
        num_attention_heads=shape["num_heads"],
        num_key_value_heads=shape.get("num_kv_heads", shape["num_heads"]),
        intermediate_size=shape.get("expert_intermediate_size", shape["intermediate_size"]),
        num_local_experts=shape["num_experts"],
        num_experts_per_tok=top_k,
        output_router_logits=True,
        # transformers counts each of the k slots: k x Recast's coefficient.
        router_aux_loss_coef=top_k * coefficients.get("load_balance", 0.01),
        attn_implementation="eager",
    )).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=opt.get("lr", 3e-3), betas=(opt.get("beta1", 0.9), opt.get("beta2", 0.95)),
                                  eps=opt.get("eps", 1e-8), weight_decay=opt.get("weight_decay", 0.1))
    sequences = train["batch_size"] * train.get("grad_accum", 1)
    gen = torch.Generator().manual_seed(SEED)
    tokens = torch.randint(0, 256, (sequences, train["seq_len"]), generator=gen)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model(tokens, labels=tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opt.get("clip_grad_norm", 1.0))
        optimizer.step()

    ms = median_ms(step, TRAIN_WARMUP, TRAIN_RUNS)
    return sequences * train["seq_len"] / (ms / 1e3)


def bench_train_step(recast: Path, threads: int, config_path: Path, bf16: bool = False) -> None:
    config = tomllib.loads(config_path.read_text())
    argv = [str(recast), "bench", "train-step", config_path, "--steps", TRAIN_RUNS, "--threads", threads,
            "--precision", "bf16" if bf16 else "f32"]
    recast_tps = run_recast(argv, "tokens/s", unit="")
    torch_tps = torch_train_tokens_per_s(config, bf16)
    label = "train step (bf16 autocast / recast --precision bf16)" if bf16 else "train step"
    print(f"{label}: torch {torch_tps:.0f} tokens/s, recast {recast_tps:.0f} tokens/s")
    print(f"ratio (recast/torch tokens/s): {recast_tps / torch_tps:.2f}")


# ---------------------------------------------------------------- real-step

REAL_CONFIG = Path(__file__).resolve().parent.parent / "examples" / "bench" / "real-shape-moe.toml"
REAL_STEPS = 3


def child(argv: list) -> tuple[str, int]:
    """Run `argv` to the end; its stdout and its own peak resident memory in bytes."""
    argv = [str(arg) for arg in argv]
    print(f"$ {' '.join(argv)}", flush=True)
    with tempfile.TemporaryFile(mode="w+") as out, tempfile.TemporaryFile(mode="w+") as err:
        proc = subprocess.Popen(argv, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if proc.returncode != 0:
        raise RecastFailed(f"{' '.join(argv)}\nexit code {proc.returncode}\n--- stdout ---\n{stdout.rstrip()}\n--- stderr ---\n{stderr.rstrip()}")
    return stdout, usage.ru_maxrss * 1024


def last_number(stdout: str, label: str) -> float:
    """X of the last line `{label}: X ...`."""
    for line in reversed(stdout.strip().splitlines()):
        match = re.match(re.escape(label) + r": ([0-9.eE+-]+)", line.strip())
        if match:
            return float(match.group(1))
    raise RecastFailed(f"no '{label}: X' line in:\n{stdout}")


def bench_real_step(recast: Path, threads: int, bf16: bool = False) -> None:
    precision = "bf16" if bf16 else "f32"
    out, recast_rss = child([recast, "bench", "train-step", REAL_CONFIG, "--steps", REAL_STEPS, "--threads", threads, "--precision", precision])
    recast_tps = last_number(out, "tokens/s")
    out, torch_rss = child([sys.executable, __file__, "--torch-real-step", precision, "--threads", threads, "--recast", recast])
    torch_tps = last_number(out, "tokens/s")
    gib = 1 << 30
    print(f"real step {precision}: torch {torch_tps:.1f} tokens/s, peak RSS {torch_rss / gib:.2f} GiB; recast {recast_tps:.1f} tokens/s, peak RSS {recast_rss / gib:.2f} GiB")
    print(f"ratio (recast/torch tokens/s): {recast_tps / torch_tps:.2f}")
    print(f"ratio (recast/torch peak RSS): {recast_rss / torch_rss:.2f}")


def torch_real_step(precision: str) -> None:
    """The PyTorch side of real-step, alone in this process: prints `tokens/s: X`."""
    global TRAIN_WARMUP, TRAIN_RUNS
    TRAIN_WARMUP, TRAIN_RUNS = 1, REAL_STEPS - 1
    config = tomllib.loads(REAL_CONFIG.read_text())
    print(f"tokens/s: {torch_train_tokens_per_s(config, precision == 'bf16'):.3f}")


# ---------------------------------------------------------------- main

BENCHES = {"moe-layer": bench_moe_layer, "moe-layer-bf16": bench_moe_layer_bf16, "model-step": bench_model_step,
           "train-step": bench_train_step, "train-step-bf16": bench_train_step, "real-step": bench_real_step, "real-step-bf16": bench_real_step}
# Long (minutes, 14 GB): run only when named.
DEFAULT_BENCHES = ["moe-layer", "moe-layer-bf16", "model-step", "train-step", "train-step-bf16"]


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recast", type=Path, required=True, help="path to the recast binary")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for both sides")
    parser.add_argument("--what", default=",".join(DEFAULT_BENCHES), help=f"comma-separated subset of {','.join(BENCHES)} (default: all but real-step)")
    parser.add_argument("--torch-real-step", choices=["f32", "bf16"], help=argparse.SUPPRESS)
    parser.add_argument("--config", type=Path, default=Path(__file__).resolve().parent.parent / "examples" / "tiny-moe.toml",
                        help="run config for train-step")
    args = parser.parse_args()
    args.what = [w.strip() for w in args.what.split(",") if w.strip()]
    unknown = [w for w in args.what if w not in BENCHES]
    if unknown:
        parser.error(f"unknown --what {unknown}; choose from {list(BENCHES)}")
    if not args.recast.is_file():
        parser.error(f"--recast {args.recast} is not a file")
    args.recast = args.recast.resolve()
    return args


def main() -> int:
    args = parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.set_num_threads(args.threads)
    if args.torch_real_step:
        torch_real_step(args.torch_real_step)
        return 0
    print(f"threads: {args.threads}, torch {torch.__version__}, CPU")
    try:
        for name in args.what:
            print(f"\n== {name}")
            if name.startswith("train-step"):
                bench_train_step(args.recast, args.threads, args.config, bf16=name.endswith("bf16"))
            elif name.startswith("real-step"):
                bench_real_step(args.recast, args.threads, bf16=name.endswith("bf16"))
            else:
                BENCHES[name](args.recast, args.threads)
    except RecastFailed as err:
        print(f"recast failed: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

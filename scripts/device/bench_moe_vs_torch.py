"""Our MoE layer's forward+backward on the GPU against Hugging Face transformers'
MixtralSparseMoeBlock (PyTorch, bf16 weights and activations), same shapes, one run:
prints both times and the ratio (PyTorch time / Recast time: above 1 means Recast is
faster), and `recast bench moe-layer`'s expert-GEMM throughput line (a fraction of one
plain cuBLAS bf16 GEMM of the same total size, measured in the same process).

Usage: bench_moe_vs_torch.py --recast PATH [--tokens 16384 --hidden 4096 --experts 8
--top-k 2 --ffn 14336 --repeats 10]"""
import argparse
import re
import subprocess
import sys

import torch


def torch_ms(a):
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = MixtralConfig(hidden_size=a.hidden, intermediate_size=a.ffn, num_local_experts=a.experts, num_experts_per_tok=a.top_k, router_jitter_noise=0.0)
    torch.manual_seed(0)
    block = MixtralSparseMoeBlock(cfg).to(device="cuda", dtype=torch.bfloat16)
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.02)
    x = torch.randn(1, a.tokens, a.hidden, device="cuda", dtype=torch.bfloat16, requires_grad=True)

    def step():
        out = block(x)
        out = out[0] if isinstance(out, tuple) else out
        out.float().sum().backward()

    for _ in range(2):
        step()
    torch.cuda.synchronize()
    times = []
    for _ in range(a.repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    times.sort()
    return times[len(times) // 2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--recast", required=True)
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--hidden", type=int, default=4096)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--ffn", type=int, default=14336)
    p.add_argument("--repeats", type=int, default=10)
    a = p.parse_args()
    shape = ["--tokens", str(a.tokens), "--hidden", str(a.hidden), "--experts", str(a.experts), "--top-k", str(a.top_k), "--ffn", str(a.ffn)]
    run = subprocess.run([a.recast, "bench", "moe-layer", *shape, "--dtype", "bf16", "--device", "cuda", "--repeats", str(a.repeats)], capture_output=True, text=True)
    print(run.stdout + run.stderr, end="")
    if run.returncode != 0:
        return 1
    ours = float(re.search(r"moe-layer fwd\+bwd: ([0-9.]+) ms", run.stdout).group(1))
    torch.cuda.empty_cache()
    theirs = torch_ms(a)
    print(f"transformers MixtralSparseMoeBlock bf16 fwd+bwd: {theirs:.1f} ms")
    print(f"recast MoE layer bf16 fwd+bwd: {ours:.1f} ms")
    print(f"ratio (PyTorch / Recast, >1 = Recast faster): {theirs / ours:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

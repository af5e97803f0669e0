"""Hugging Face parity test for Recast's checkpoint reader, forward pass and checkpoint writer.

Recast re-implements the Llama, Qwen2, Mistral, Mixtral and Qwen2-MoE forward passes in Rust
and writes checkpoints that Hugging Face must be able to load. This script is the ground
truth for both claims. For each architecture it builds a tiny random model with transformers
(every parameter re-initialised so that biases, norms and routers all matter), saves it
(sharded for some), and checks that:

  1. `recast forward` gives the same logits as transformers (max |diff| <= --tol);
  2. `recast convert` writes a checkpoint that transformers loads with no missing, unexpected
     or mismatched tensors and whose logits equal the original ones (max |diff| <= 1e-6);
  3. `recast forward` on the converted checkpoint still matches (<= --tol);
  4. once per run, `--tokens FILE` gives the same logits as `--tokens 1,2,3`;
  5. for the dense families, `recast upcycle --format hf` writes an MoE (Mixtral from
     sparse upcycling of Llama, Qwen2-MoE with a shared expert from fine-grained splitting
     of Qwen2) that transformers loads and that computes the dense model's logits.

Usage:
    .venv/bin/python tests/parity/hf_parity.py --recast target/release/recast \
        [--workdir DIR] [--arch llama,qwen2,mistral,mixtral,qwen2_moe] [--tol 1e-4]

Exit code 0 only if every check passes.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    MixtralConfig,
    PreTrainedConfig,
    Qwen2Config,
    Qwen2MoeConfig,
)
from transformers.utils import logging as hf_logging

SEED = 1234
SEQ_LEN = 20
SHARD_SIZE = "200KB"
CONVERT_TOL = 1e-6
RECAST_TIMEOUT_S = 600

# Shared shapes of every tiny model. The reference runs transformers' plainest code paths:
# eager attention and the per-expert loop for MoE layers.
BASE = dict(
    vocab_size=320,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    attn_implementation="eager",
    experts_implementation="eager",
)

# Re-initialisation: large enough that logits are far from trivial and routing is decisive.
MATRIX_STD = 0.1
NORM_STD = 0.1
ROUTER_STD = 0.5


def llama_config() -> PreTrainedConfig:
    rope = dict(
        rope_type="llama3",
        rope_theta=10000.0,
        factor=8.0,
        low_freq_factor=1.0,
        high_freq_factor=4.0,
        original_max_position_embeddings=16,
    )
    return LlamaConfig(**BASE, rope_parameters=rope, tie_word_embeddings=False)


def llama_tied_config() -> PreTrainedConfig:
    rope = dict(rope_type="linear", rope_theta=10000.0, factor=2.0)
    return LlamaConfig(**BASE, rope_parameters=rope, tie_word_embeddings=True)


def qwen2_config() -> PreTrainedConfig:
    return Qwen2Config(**BASE, tie_word_embeddings=False)


def mistral_config() -> PreTrainedConfig:
    # Window 8 < SEQ_LEN, so positions 8.. attend to a strict suffix of the prefix.
    return MistralConfig(**BASE, sliding_window=8)


def mixtral_config() -> PreTrainedConfig:
    return MixtralConfig(**BASE, num_local_experts=8, num_experts_per_tok=2)


def qwen2_moe_config() -> PreTrainedConfig:
    shapes = {**BASE, "num_hidden_layers": 3}
    return Qwen2MoeConfig(
        **shapes,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=False,
        moe_intermediate_size=48,
        shared_expert_intermediate_size=96,
        mlp_only_layers=[1],
    )


@dataclass(frozen=True)
class Arch:
    name: str
    make_config: Callable[[], PreTrainedConfig]
    sharded: bool = False


ARCHS = {
    a.name: a
    for a in [
        Arch("llama", llama_config),
        Arch("llama-tied", llama_tied_config),
        Arch("qwen2", qwen2_config, sharded=True),
        Arch("mistral", mistral_config),
        Arch("mixtral", mixtral_config, sharded=True),
        Arch("qwen2_moe", qwen2_moe_config),
    ]
}


# Function-preserving upcycling schemes run on the dense references: (scheme, params).
UPCYCLE = {
    "llama": ("sparse-upcycle", "experts = 4\ntop_k = 2"),
    "qwen2": ("fine-grained-split", "granularity = 4\nshared_expert = true"),
}


class CheckFailed(Exception):
    """A parity check failed; the message says which and why."""


@dataclass
class Result:
    arch: str
    forward: float | None = None
    convert_hf: float | None = None
    convert_recast: float | None = None
    upcycle_hf: float | None = None
    failures: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- reference side


def randomise(model: torch.nn.Module, generator: torch.Generator) -> None:
    """Re-initialise every parameter (transformers leaves biases at zero and norms at one)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=generator)
            if name.endswith("norm.weight"):
                param.copy_(1.0 + NORM_STD * noise)
            elif name.endswith("mlp.gate.weight"):  # MoE router, in-memory name
                param.copy_(ROUTER_STD * noise)
            else:
                param.copy_(MATRIX_STD * noise)


def build_model(arch: Arch, generator: torch.Generator) -> torch.nn.Module:
    model = AutoModelForCausalLM.from_config(arch.make_config(), dtype=torch.float32)
    randomise(model, generator)
    return model.eval()


def save_model(model: torch.nn.Module, directory: Path, sharded: bool) -> None:
    if sharded:
        model.save_pretrained(directory, max_shard_size=SHARD_SIZE)
        shards = list(directory.glob("model-*-of-*.safetensors"))
        if not (directory / "model.safetensors.index.json").is_file() or len(shards) < 2:
            raise RuntimeError(f"expected a sharded checkpoint in {directory}")
    else:
        model.save_pretrained(directory)


def load_model(directory: Path, **overrides) -> torch.nn.Module:
    """Load a checkpoint, refusing any missing, unexpected or mismatched tensor."""
    model, info = AutoModelForCausalLM.from_pretrained(
        directory,
        attn_implementation="eager",
        experts_implementation="eager",
        output_loading_info=True,
        **overrides,
    )
    problems = {kind: sorted(map(str, names)) for kind, names in info.items() if names}
    if problems:
        raise CheckFailed(f"transformers could not load {directory} cleanly: {problems}")
    return model.eval()


def hf_logits(model: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits[0].float()


def check_window_matters(model_dir: Path, tokens: list[int], windowed: torch.Tensor, window: int) -> None:
    """The Mistral case is only meaningful if transformers really applies the window."""
    full = hf_logits(load_model(model_dir, sliding_window=None), tokens)
    if not torch.equal(full[:window], windowed[:window]):
        raise CheckFailed("sliding window changed logits inside the window")
    if (full[window:] - windowed[window:]).abs().max() < 1e-3:
        raise CheckFailed("transformers did not apply the sliding window; the test is vacuous")


# ---------------------------------------------------------------- recast side


@dataclass(frozen=True)
class Invocation:
    """A finished recast command, kept so that a failed comparison can show it."""

    command: str
    stderr: str

    def __str__(self) -> str:
        return f"$ {self.command}\n--- stderr ---\n{self.stderr.rstrip() or '(empty)'}"


def run_recast(recast: Path, *args) -> Invocation:
    argv = [str(recast), *map(str, args)]
    command = " ".join(argv)
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=RECAST_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else err.stderr or ""
        raise CheckFailed(f"timed out after {RECAST_TIMEOUT_S}s\n{Invocation(command, stderr)}")
    invocation = Invocation(command, proc.stderr)
    if proc.returncode != 0:
        raise CheckFailed(f"exit code {proc.returncode}\n{invocation}")
    return invocation


def recast_logits(
    recast: Path, model_dir: Path, tokens_arg: str, out: Path, shape: torch.Size
) -> tuple[torch.Tensor, Invocation]:
    """Run `recast forward` and return its float32 [T, vocab] logits."""
    invocation = run_recast(recast, "forward", "--model", model_dir, "--tokens", tokens_arg, "--out", out)
    tensors = load_file(out) if out.is_file() else {}
    logits = tensors.get("logits")
    if logits is None:
        raise CheckFailed(f"{out} has no tensor named 'logits' (found {sorted(tensors)})\n{invocation}")
    if logits.dtype != torch.float32 or tuple(logits.shape) != tuple(shape):
        raise CheckFailed(
            f"logits are {logits.dtype} {tuple(logits.shape)}, expected torch.float32 {tuple(shape)}\n{invocation}"
        )
    return logits, invocation


def max_diff(got: torch.Tensor, want: torch.Tensor) -> float:
    """Max |got - want|, with NaN counted as infinity."""
    return (got - want).abs().nan_to_num(nan=float("inf")).max().item()


def require_close(got: torch.Tensor, want: torch.Tensor, tol: float, invocation: Invocation | None = None) -> None:
    """Raise with the worst position, both values and the recast command if max |got - want| > tol."""
    diff = (got - want).abs().nan_to_num(nan=float("inf"))
    if diff.max().item() > tol:
        pos, vocab_id = divmod(int(diff.argmax()), diff.shape[1])
        raise CheckFailed(
            f"max |diff| {diff.max().item():.3e} > tol {tol:.0e} at position {pos}, vocab id {vocab_id}: "
            f"got {got[pos, vocab_id].item():.6f}, want {want[pos, vocab_id].item():.6f}"
            + (f"\n{invocation}" if invocation else "")
        )


# ---------------------------------------------------------------- one architecture


def check_arch(arch: Arch, recast: Path, workdir: Path, tol: float, check_token_file: bool) -> Result:
    result = Result(arch.name)
    generator = torch.Generator().manual_seed(SEED)
    model = build_model(arch, generator)
    tokens = torch.randint(0, model.config.vocab_size, (SEQ_LEN,), generator=generator).tolist()
    tokens_arg = ",".join(map(str, tokens))

    out = workdir / arch.name
    shutil.rmtree(out, ignore_errors=True)  # no stale outputs from an earlier run in --workdir
    model_dir, converted_dir = out / "hf", out / "converted"
    save_model(model, model_dir, arch.sharded)
    want = hf_logits(model, tokens)

    def window():
        check_window_matters(model_dir, tokens, want, model.config.sliding_window)

    def forward():
        got, invocation = recast_logits(recast, model_dir, tokens_arg, out / "logits.safetensors", want.shape)
        result.forward = max_diff(got, want)
        require_close(got, want, tol, invocation)

    def token_file():
        path = out / "tokens.txt"
        path.write_text("\n".join(map(str, tokens)) + "\n")
        from_list, _ = recast_logits(recast, model_dir, tokens_arg, out / "logits.safetensors", want.shape)
        from_file, invocation = recast_logits(recast, model_dir, str(path), out / "logits_file.safetensors", want.shape)
        require_close(from_file, from_list, 0.0, invocation)

    def convert():
        invocation = run_recast(recast, "convert", "--model", model_dir, "--out", converted_dir)
        try:
            reloaded = load_model(converted_dir)
        except CheckFailed as err:
            raise CheckFailed(f"{err}\n{invocation}")
        got = hf_logits(reloaded, tokens)
        result.convert_hf = max_diff(got, want)
        require_close(got, want, CONVERT_TOL, invocation)

    def convert_forward():
        if not (converted_dir / "config.json").is_file():
            raise CheckFailed("skipped: recast convert wrote no config.json")
        got, invocation = recast_logits(recast, converted_dir, tokens_arg, out / "logits_conv.safetensors", want.shape)
        result.convert_recast = max_diff(got, want)
        require_close(got, want, tol, invocation)

    def upcycle():
        scheme, params = UPCYCLE[arch.name]
        upcycled_dir = out / "upcycled"
        invocation = run_recast(recast, "upcycle", "--source", model_dir, "--scheme", scheme, "--params", params,
                                "--format", "hf", "--out", upcycled_dir)
        try:
            reloaded = load_model(upcycled_dir)
        except CheckFailed as err:
            raise CheckFailed(f"{err}\n{invocation}")
        got = hf_logits(reloaded, tokens)
        result.upcycle_hf = max_diff(got, want)
        require_close(got, want, tol, invocation)

    checks = [("forward", forward), ("convert -> HF", convert), ("convert -> recast forward", convert_forward)]
    if arch.name in UPCYCLE:
        checks.append(("upcycle -> HF", upcycle))
    if check_token_file:
        checks.insert(1, ("--tokens FILE vs comma list", token_file))
    if model.config.model_type == "mistral":
        checks.insert(0, ("sliding window applied by transformers", window))
    for name, check in checks:
        try:
            check()
        except CheckFailed as err:
            result.failures.append(f"{name}: {err}")
    return result


# ---------------------------------------------------------------- report


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2e}"


def print_report(results: list[Result]) -> None:
    header = f"{'arch':<12} {'max|Δ| forward':>15} {'max|Δ| convert→HF':>18} {'max|Δ| convert→recast':>22} {'max|Δ| upcycle→HF':>18}  result"
    print(header)
    print("-" * len(header))
    for r in results:
        verdict = "FAIL" if r.failures else "pass"
        print(f"{r.arch:<12} {fmt(r.forward):>15} {fmt(r.convert_hf):>18} {fmt(r.convert_recast):>22} {fmt(r.upcycle_hf):>18}  {verdict}")
    for r in results:
        for failure in r.failures:
            print(f"\n[{r.arch}] {failure}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recast", type=Path, required=True, help="path to the recast binary")
    parser.add_argument("--workdir", type=Path, help="keep checkpoints and outputs here (default: a temp dir)")
    parser.add_argument("--arch", default=",".join(ARCHS), help=f"comma-separated subset of {','.join(ARCHS)}")
    parser.add_argument("--tol", type=float, default=1e-4, help="max |diff| allowed for recast logits")
    args = parser.parse_args()
    args.arch = [a.strip() for a in args.arch.split(",") if a.strip()]
    unknown = [a for a in args.arch if a not in ARCHS]
    if unknown:
        parser.error(f"unknown --arch {unknown}; choose from {list(ARCHS)}")
    if not args.recast.is_file():
        parser.error(f"--recast {args.recast} is not a file")
    args.recast = args.recast.resolve()
    return args


def main() -> int:
    args = parse_args()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()

    with tempfile.TemporaryDirectory(prefix="recast-parity-") as tmp:
        workdir = (args.workdir or Path(tmp)).resolve()
        results = [
            check_arch(ARCHS[name], args.recast, workdir, args.tol, check_token_file=(i == 0))
            for i, name in enumerate(args.arch)
        ]
    print_report(results)
    if not any(r.failures for r in results):
        return 0
    if args.workdir is None:
        print("\n(the paths above were in a temporary directory; rerun with --workdir DIR to keep them)")
    return 1


if __name__ == "__main__":
    sys.exit(main())

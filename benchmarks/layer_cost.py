#!/usr/bin/env python3
"""Cost of one adapted Linear layer against the plain layer, call by call.

The model-level benchmark (``adapter_cost.py``) says what a user pays per
training step; this one says why, on the layer the anchors were measured on
(a 256 -> 1024 Linear, input ``[8, 250, 256]``). Every variant runs in one
process, interleaved call by call over many repetitions, so the ratios are
stable even on a shared 2-core machine:

- ``forward``: inference (no gradient), unmerged, against the plain Linear;
- ``train``: forward + backward with the base frozen and the adapter trainable,
  against full fine-tuning of the plain Linear (weight and input gradients);
- ``saved``: bytes autograd keeps for backward, against full fine-tuning.

    python benchmarks/layer_cost.py                  # ~1 min
    python benchmarks/layer_cost.py --in 768 --out 3072 --tokens 2000 --repeats 30

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from measure import ratio_bars, saved_bytes, write_results

import adapters

VARIANTS = ("full", "lora", "poollora", "dora", "houlsby", "sb_lora", "peft_lora")
DESCRIPTIONS = {
    "full": "plain Linear (full fine-tuning when training)",
    "lora": "ours LoRA r8 (fused)",
    "poollora": "ours PoolLoRA r8 stride 2 (fused)",
    "dora": "ours DoRA r8",
    "houlsby": "ours Houlsby p32",
    "sb_lora": "SpeechBrain 1.1.2 LoRA r8",
    "peft_lora": "PEFT LoRA r8",
}


def build(variant: str, base: nn.Linear, rank: int) -> nn.Module:
    """``base`` (copied) wrapped by ``variant``; the LoRA ``B`` made non-zero."""
    import copy

    from speechbrain.nnet.adapters import LoRA as SBLoRA

    layer = copy.deepcopy(base)
    makers: dict[str, Callable[[nn.Linear], nn.Module]] = {
        "full": lambda m: m,
        "lora": lambda m: adapters.LoRA(m, rank=rank),
        "poollora": lambda m: adapters.PoolLoRA(m, stride=2, rank=rank),
        "dora": lambda m: adapters.DoRA(m, rank=rank),
        "houlsby": lambda m: adapters.Houlsby(m, projection_size=32),
        "sb_lora": lambda m: SBLoRA(m, rank=rank),
        "peft_lora": lambda m: adapters.peft_adapter(m, r=rank, lora_alpha=rank),
    }
    module = makers[variant](layer)
    with torch.no_grad():  # a trained adapter, not the zero update of insertion
        for name, param in module.named_parameters():
            if param.requires_grad and ("lora_B" in name or "up" in name):
                param.normal_(std=0.01)
    return module


def measure(args: argparse.Namespace) -> list[dict]:
    """Median time of every variant relative to the plain layer, interleaved."""
    torch.manual_seed(0)
    base = nn.Linear(args.in_features, args.out_features)
    x = torch.randn(args.batch, args.tokens // args.batch, args.in_features)
    x_train = x.clone().requires_grad_(True)  # the layer sits inside a network
    grad = torch.randn(args.batch, args.tokens // args.batch, args.out_features)
    modules = {v: build(v, base, args.rank) for v in args.variants}

    def forward(module: nn.Module) -> None:
        with torch.no_grad():
            module(x)

    def train(module: nn.Module) -> None:
        module(x_train).backward(grad)
        for param in (x_train, *module.parameters()):
            param.grad = None

    rows = []
    times: dict[tuple[str, str], list[float]] = {}
    for kind, fn in (("forward", forward), ("train", train)):
        for module in modules.values():  # warm-up
            fn(module)
        for _ in range(args.repeats):
            for variant, module in modules.items():
                start = time.perf_counter()
                fn(module)
                times.setdefault((kind, variant), []).append(time.perf_counter() - start)
    full_saved = saved_bytes(lambda: modules["full"](x_train), modules["full"].parameters())
    for variant, module in modules.items():
        row = {"variant": variant, "trainable": sum(
            p.numel() for p in module.parameters() if p.requires_grad)}  # fmt: skip
        for kind in ("forward", "train"):
            row[f"{kind}_ms"] = 1000 * statistics.median(times[(kind, variant)])
            row[f"{kind}_ratio"] = row[f"{kind}_ms"] / (
                1000 * statistics.median(times[(kind, "full")])
            )
        saved = saved_bytes(lambda m=module: m(x_train), module.parameters())
        row["saved_ratio"] = saved / full_saved
        rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    lines = [
        (
            "| variant | trainable | inference (ms) | vs plain | train fwd+bwd (ms) "
            "| vs full fine-tuning | saved for backward vs full |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} ({DESCRIPTIONS[r['variant']]}) | {r['trainable']:,} "
            f"| {r['forward_ms']:.2f} | {r['forward_ratio']:.2f}x | {r['train_ms']:.2f} "
            f"| {r['train_ratio']:.2f}x | {r['saved_ratio']:.2f}x |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    """Bars of inference and training cost relative to the plain layer."""
    panels = [
        ([r["forward_ratio"] for r in rows], "inference / plain Linear"),
        ([r["train_ratio"] for r in rows], "forward + backward / full fine-tuning"),
    ]
    ratio_bars([r["variant"] for r in rows], panels, path, size=(10, 3.5))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in", dest="in_features", type=int, default=256)
    parser.add_argument("--out", dest="out_features", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=2000, help="batch x frames")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--output", default="results/benchmarks")
    args = parser.parse_args(argv)
    args.variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(args.variants) - set(VARIANTS))
    if unknown or "full" not in args.variants:
        raise SystemExit(f"--variants must include full and come from {', '.join(VARIANTS)}.")
    args.variants = ["full", *(v for v in args.variants if v != "full")]
    torch.set_num_threads(args.threads)
    rows = measure(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    tag = f"layer_{args.in_features}x{args.out_features}"
    meta = {k: v for k, v in vars(args).items() if k != "output"}
    data = {"meta": meta, "rows": rows}
    write_results(out, tag, data, markdown(rows), lambda p: plot(rows, p))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Raw-parameter reach: this library's mechanism against ``torch.nn.utils.parametrize``.

Both read an adapted weight through the same LoRA (``W + s B A``), on weights
no module wrapper reaches: every weight of a 2-layer bidirectional LSTM, and
the packed Q/K/V ``in_proj_weight`` of a ``nn.MultiheadAttention``. Ours swaps
the owner's class for one whose attribute lookup calls the adapters;
parametrize registers the LoRA as a parametrization. Also timed: the frozen
base alone (backward to the input only: the floor any adapter pays). All
variants run in one process, interleaved call by call, medians of
``--repeats``; training is forward + backward, inference is forward without
gradients.

    python benchmarks/raw_param_cost.py             # ~1 min on 2 cores

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from measure import ratio_bars, write_results

from adapters import AdaptedModel, LoRA
from adapters.targets import WeightView


class Attention(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.att = nn.MultiheadAttention(dim, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.att(x, x, x, need_weights=False)[0]


class Recurrent(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(dim, dim // 2, num_layers=2, bidirectional=True, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0]


MODELS = {"lstm": (Recurrent, "rnn.weight_*"), "attention": (Attention, "att.in_proj_weight")}


class AsParametrization(nn.Module):
    """A LoRA used as a parametrization: ``forward(W) = W + s B A``."""

    def __init__(self, lora: LoRA) -> None:
        super().__init__()
        self.lora = lora

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return self.lora.adapted_weight(weight)


def build(variant: str, base: nn.Module, pattern: str, rank: int) -> nn.Module:
    """``base`` (copied) adapted by ``variant``, every LoRA B made non-zero."""
    model = copy.deepcopy(base)
    for param in model.parameters():
        param.requires_grad_(False)
    torch.manual_seed(1)  # the same A (and B below) for both mechanisms
    if variant == "ours":
        model = AdaptedModel(model, LoRA, target_layers=[pattern], adapter_kwargs={"rank": rank})
    elif variant == "parametrize":
        owner_name, _, wildcard = pattern.rpartition(".")
        owner = model.get_submodule(owner_name)
        for name, param in list(owner.named_parameters(recurse=False)):
            if param.dim() == 2 and name.startswith(wildcard.rstrip("*")):
                lora = LoRA(WeightView(owner, name, slice(None)), rank=rank)
                parametrize.register_parametrization(owner, name, AsParametrization(lora))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.01)
    return model


def measure(args: argparse.Namespace) -> list[dict]:
    rows = []
    for kind, (cls, pattern) in MODELS.items():
        torch.manual_seed(0)
        base = cls(args.dim)
        x = torch.randn(args.batch, args.frames, args.dim, requires_grad=True)
        models = {v: build(v, base, pattern, args.rank) for v in ("frozen", "ours", "parametrize")}
        with torch.no_grad():  # the two mechanisms compute the same function
            diff = (models["ours"](x) - models["parametrize"](x)).abs().max().item()

        def train(model: nn.Module, x: torch.Tensor = x) -> None:
            model(x).pow(2).mean().backward()
            for p in (x, *model.parameters()):
                p.grad = None

        def infer(model: nn.Module, x: torch.Tensor = x) -> None:
            with torch.no_grad():
                model(x)

        times: dict[tuple[str, str], list[float]] = {}
        for phase, fn in (("train", train), ("infer", infer)):
            for model in models.values():
                fn(model)  # warm-up
            for _ in range(args.repeats):
                for variant, model in models.items():
                    start = time.perf_counter()
                    fn(model)
                    times.setdefault((phase, variant), []).append(time.perf_counter() - start)
        for variant, model in models.items():
            keys = set(model.state_dict())
            renamed = sorted(
                k for k in base.state_dict() if k not in keys and f"adapted_model.{k}" not in keys
            )
            row = {"model": kind, "variant": variant, "base_keys_renamed": len(renamed)}
            row["max_diff_ours_vs_parametrize"] = diff
            for phase in ("train", "infer"):
                ms = [1000 * t for t in times[(phase, variant)]]
                row[f"{phase}_ms"] = statistics.median(ms)
                row[f"{phase}_iqr_ms"] = (
                    statistics.quantiles(ms, n=4)[2] - statistics.quantiles(ms, n=4)[0]
                )
                row[f"{phase}_vs_frozen"] = row[f"{phase}_ms"] / statistics.median(
                    1000 * t for t in times[(phase, "frozen")]
                )
            rows.append(row)
    return rows


def markdown(rows: list[dict]) -> str:
    lines = [
        (
            "| model | variant | train fwd+bwd (ms, IQR) | vs frozen base | inference (ms, IQR) "
            "| vs frozen base | base state-dict keys renamed |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['variant']} | {r['train_ms']:.2f} ({r['train_iqr_ms']:.2f}) "
            f"| {r['train_vs_frozen']:.2f}x | {r['infer_ms']:.2f} ({r['infer_iqr_ms']:.2f}) "
            f"| {r['infer_vs_frozen']:.2f}x | {r['base_keys_renamed']} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--output", default="results/benchmarks")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = measure(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    names = [f"{r['model']} {r['variant']}" for r in rows]
    panels = [
        ([r["train_vs_frozen"] for r in rows], "train / frozen base"),
        ([r["infer_vs_frozen"] for r in rows], "inference / frozen base"),
    ]
    data = {"meta": {k: v for k, v in vars(args).items() if k != "output"}, "rows": rows}
    write_results(
        out,
        "raw_param_cost",
        data,
        markdown(rows),
        lambda p: ratio_bars(names, panels, p, size=(10, 3.5)),
    )


if __name__ == "__main__":
    main()

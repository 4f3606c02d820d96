#!/usr/bin/env python3
"""What each LoRA variant keeps for backward, against the floor: the bytes autograd saves
in one training forward, in float32 and under bf16 autocast.

Saved bytes are exact and machine-independent (no timing, no allocator): the evidence
behind the memory column of ``adapter_cost.py``. Distinct storages are counted once
(``measure.saved_storages``), so q, k and v that keep one shared input count it once.
Configurations: the floor and full fine-tuning (``setups.build_model``), LoRA as built by
the benchmarks, LoRA-FA (``freeze_a``), the input kept in bf16 (``saved_input_dtype``),
LoRA dropout, and LoRA with one cast per layer (each layer casting its input itself under
autocast, as before casts were shared) to show what sharing saves.

    python benchmarks/saved_memory.py --size 20m
    python benchmarks/saved_memory.py --size whisper-tiny --batch 8 --window 10

Writes ``saved_<size>.json`` and ``.md`` under ``--out``.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from unittest import mock

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from measure import saved_bytes
from setups import CACHE, SIZES, WHISPER_SIZES, base_model, build_model, workload

import adapters
import adapters.lora

#: configuration -> LoRA keyword arguments (None: a method of ``setups.build_model``)
CONFIGS: dict[str, dict | None] = {
    "full": None,
    "floor": None,
    "lora": {},
    "lora_fa": {"freeze_a": True},
    "lora_bf16": {"saved_input_dtype": "bfloat16"},
    "lora_fa_bf16": {"freeze_a": True, "saved_input_dtype": "bfloat16"},
    "lora_dropout": {"dropout": 0.1},
    "lora_fa_dropout": {"dropout": 0.1, "freeze_a": True},
    "lora_cast_per_layer": {},
}


def build(config: str, size: str, rank: int, window: float, cache: Path) -> torch.nn.Module:
    """The model of ``config``: LoRA on the Linear layers ``adapter_cost.py`` adapts."""
    kwargs = CONFIGS[config]
    if kwargs is None:
        return build_model(config, size, rank, window, cache)[0]
    model, linear, head = base_model(size, window, cache)
    unfrozen = [head] if head == "head" else []
    return adapters.AdaptedModel(
        model, adapters.LoRA, target_layers=linear, unfrozen_layers=unfrozen,
        adapter_kwargs={"rank": rank, **kwargs},
    )  # fmt: skip


def measure(config: str, args: argparse.Namespace) -> dict[str, float]:
    """MiB saved by one training forward of ``config``, float32 and bf16 autocast."""
    torch.manual_seed(0)
    model = build(config, args.size, args.rank, args.window, Path(args.cache)).train()
    loss, _ = workload(model, args.size, args.batch, args.frames, args.window)
    params = list(model.parameters())
    unshared = (lambda x, dtype: x.to(dtype)) if config == "lora_cast_per_layer" else None
    row = {}
    with mock.patch.object(adapters.lora, "cast_shared", unshared or adapters.lora.cast_shared):
        for precision in ("fp32", "bf16"):
            with torch.autocast("cpu", torch.bfloat16, enabled=precision == "bf16"):
                row[precision] = saved_bytes(loss, params) / 2**20
    row["trainable"] = sum(p.numel() for p in params if p.requires_grad)
    return row


def markdown(rows: dict[str, dict]) -> str:
    """MiB saved and ratios to the floor and to full fine-tuning, per precision.

    Example
    -------
    >>> rows = {name: {"trainable": n, "fp32": mib, "bf16": mib / 2}
    ...         for name, n, mib in (("full", 100, 8.0), ("floor", 5, 4.0), ("lora", 9, 5.0))}
    >>> markdown(rows).splitlines()[-1]
    '| lora | 9 | 5.0 | 1.25x | 0.62x | 2.5 | 1.25x | 0.62x |'
    """
    lines = [
        (
            "| configuration | trainable | fp32 MiB | vs floor | vs full | bf16 autocast MiB "
            "| vs floor | vs full |"
        ),
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in rows.items():
        cells = [f"{row['trainable']:,}"]
        for precision in ("fp32", "bf16"):
            value = row[precision]
            cells += [f"{value:.1f}", f"{value / rows['floor'][precision]:.2f}x",
                      f"{value / rows['full'][precision]:.2f}x"]  # fmt: skip
        lines.append(f"| {name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted([*SIZES, *WHISPER_SIZES]), default="20m")
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=1000, help="Conformer input frames")
    parser.add_argument("--window", type=float, default=10.0, help="Whisper input seconds")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", default=str(CACHE), help="folder of Whisper models")
    parser.add_argument("--out", default="results/benchmarks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    configs = [c for c in args.configs.split(",") if c]
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown or not {"floor", "full"} <= set(configs):
        raise SystemExit(f"Choose from {', '.join(CONFIGS)}, floor and full included.")
    rows = {config: measure(config, args) for config in configs}
    meta = {key: getattr(args, key) for key in ("size", "batch", "frames", "window", "rank")}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"saved_{args.size}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    table = markdown(rows)
    (out / f"saved_{args.size}.md").write_text(table + "\n")
    print(json.dumps(meta))
    print(table)
    print(f"wrote {out}/saved_{args.size}.json, .md")


if __name__ == "__main__":
    main()

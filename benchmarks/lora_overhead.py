#!/usr/bin/env python3
"""Where LoRA's training step and memory go beyond the floor's.

``adapter_cost.py`` measures LoRA against the floor (the base frozen, only the
biases of the layers LoRA adapts and the head trained: the least any adapter
method can cost). This script says where the difference goes, on the same
model and batch, with both configurations in one process:

1. **Step split**: forward, backward and optimizer step of the floor and of
   LoRA, steps interleaved, medians with their min-max.
2. **Per layer**: every distinct adapted Linear of the model (input shape and
   layout recorded from a forward pass), timed alone and interleaved: the
   floor's layer (frozen weight; input and bias gradients) against the fused
   LoRA layer, and the fused layer's own parts, each with the library's
   functions: forming the merged weight ``W + s B A`` (done in forward and again
   in backward) and the rank-r gradient products of ``A`` and ``B``
   (``adapters.lora.lowrank_grads``). Each times the number of such layers.
3. **Saved for backward**: the bytes autograd keeps in each configuration, and
   the bytes of the adapted layers' inputs that the floor does not keep (the
   gradient of ``A`` needs them: ``dA = s (g B)^T x``).

    python benchmarks/lora_overhead.py                       # the 20M Conformer, ~4 min
    python benchmarks/lora_overhead.py --size tiny --steps 3 --repeats 3

Writes ``lora_overhead_<size>.json`` and ``.md`` under ``--out``.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from collections import Counter
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

from measure import saved_bytes, saved_storages
from setups import SIZES, WHISPER_SIZES, build_model, workload

import adapters
from adapters.lora import _FusedLoRALinear, lowrank_grads

PARTS = ("forward", "backward", "optimizer")


def minor_faults() -> int:
    """Minor page faults of this process so far (pages the kernel had to map in)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def median_range(values: list[float]) -> dict:
    """Median, min and max of ``values``.

    Example
    -------
    >>> median_range([3.0, 1.0, 2.0])
    {'median': 2.0, 'min': 1.0, 'max': 3.0}
    """
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def step_split(models: dict, steps: int) -> dict:
    """Seconds of forward, backward and optimizer step per configuration, interleaved,
    and the minor page faults of each step (``faults``)."""
    times = {name: {part: [] for part in PARTS} for name in models}
    faults = {name: [] for name in models}
    for i in range(steps + 1):  # the first step of each warms up
        order = list(models) if i % 2 == 0 else list(models)[::-1]
        for name in order:
            _, optimizer, loss_fn = models[name]
            torch.manual_seed(i)
            faulted = minor_faults()
            start = time.perf_counter()
            loss = loss_fn()
            forward = time.perf_counter()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            backward = time.perf_counter()
            optimizer.step()
            end = time.perf_counter()
            if i:
                faults[name].append(minor_faults() - faulted)
                for part, value in zip(
                    PARTS, (forward - start, backward - forward, end - backward)
                ):
                    times[name][part].append(value)
    return {
        name: {**{part: median_range(values) for part, values in parts.items()},
               "faults": median_range(faults[name])}
        for name, parts in times.items()
    }  # fmt: skip


def adapted_layers(model: torch.nn.Module) -> tuple[Counter, list]:
    """Hooks counting (input shape, contiguous, weight shape) of the LoRA layers, and the hooks."""
    seen: Counter = Counter()
    hooks = [
        module.register_forward_pre_hook(
            lambda mod, args: seen.update(
                [
                    (
                        tuple(args[0].shape),
                        args[0].is_contiguous(),
                        tuple(mod.base_layer.weight.shape),
                    )
                ]
            )
        )
        for module in model.modules()
        if isinstance(module, adapters.LoRA)
    ]
    return seen, hooks


def _timed(fns: dict, repeats: int) -> dict:
    """Median seconds of each callable, called in turn ``repeats`` times (after a warm-up)."""
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for i in range(repeats):
        for name in fns if i % 2 == 0 else list(fns)[::-1]:
            start = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def layer_variants(in_shape: tuple, contiguous: bool, weight_shape: tuple, rank: int) -> dict:
    """Callables for one adapted layer shape: the floor's layer, the fused LoRA layer (each
    forward + backward), and LoRA's parts: merged-weight formation, rank-r gradients."""
    out_f, in_f = weight_shape
    torch.manual_seed(0)
    if contiguous:
        x = torch.randn(in_shape)
    else:  # the layout the model passes: a transposed view
        x = torch.randn(in_shape[1], in_shape[0], *in_shape[2:]).transpose(0, 1)
    x.requires_grad_(True)
    weight, bias = torch.randn(out_f, in_f) / in_f**0.5, torch.randn(out_f, requires_grad=True)
    lora_a = torch.randn(rank, in_f, requires_grad=True)
    lora_b = torch.randn(out_f, rank, requires_grad=True)
    grad = torch.randn(*in_shape[:-1], out_f)
    flat_x, flat_g = x.detach().reshape(-1, in_f), grad.reshape(-1, out_f)
    a, b = lora_a.detach(), lora_b.detach()

    def floor():
        out = torch.nn.functional.linear(x, weight, bias)
        torch.autograd.grad(out, [x, bias], grad)

    def lora():
        out = _FusedLoRALinear.apply(x, weight, bias, lora_a, lora_b, 1.0, _same, _same)
        torch.autograd.grad(out, [x, bias, lora_a, lora_b], grad)

    return {
        "floor": floor,
        "lora": lora,
        "merge": lambda: torch.addmm(weight, b, a),
        "rank_r": lambda: lowrank_grads(flat_g, flat_x, a, b, 1.0),
    }


def _same(tensor: torch.Tensor) -> torch.Tensor:
    return tensor


def layer_costs(shapes: Counter, rank: int, repeats: int) -> list[dict]:
    """Milliseconds of each adapted layer shape, alone: floor layer, LoRA layer, LoRA's parts."""
    rows = []
    for (in_shape, contiguous, weight_shape), count in sorted(shapes.items()):
        fns = layer_variants(in_shape, contiguous, weight_shape, rank)
        ms = {name: 1e3 * value for name, value in _timed(fns, repeats).items()}
        rows.append({"input": list(in_shape), "contiguous": contiguous,
                     "weight": list(weight_shape), "layers": count, **ms})  # fmt: skip
    return rows


def inputs_not_kept(model, linear: list[str], loss_fn, params) -> int:
    """Bytes of the adapted layers' inputs that autograd does not save for backward."""
    inputs: dict[int, torch.Tensor] = {}
    hooks = [
        model.get_submodule(name).register_forward_pre_hook(
            lambda mod, args: inputs.setdefault(args[0].untyped_storage().data_ptr(), args[0])
        )
        for name in linear
    ]
    saved = saved_storages(loss_fn, params)
    for hook in hooks:
        hook.remove()
    return sum(t.untyped_storage().nbytes() for p, t in inputs.items() if p not in saved)


def markdown(data: dict) -> str:
    """The three readings as markdown tables."""
    split = data["step_split"]
    lines = [
        "| configuration | forward (s) | backward (s) | optimizer (s) | step (s) | page faults "
        + "per step |",
        "|---|---|---|---|---|---|",
    ]
    for name, parts in split.items():
        cells = [f"{parts[p]['median']:.3f} ({parts[p]['min']:.3f}–{parts[p]['max']:.3f})"
                 for p in PARTS]  # fmt: skip
        total = sum(parts[p]["median"] for p in PARTS)
        faults = parts["faults"]["median"]
        lines.append(f"| {name} | {' | '.join(cells)} | {total:.3f} | {faults:,.0f} |")
    diff = {p: split["lora"][p]["median"] - split["floor"][p]["median"] for p in (*PARTS, "faults")}
    floor_total = sum(split["floor"][p]["median"] for p in PARTS)
    step = sum(diff[p] for p in PARTS)
    lines.append(
        f"| LoRA − floor | {diff['forward']:+.3f} | {diff['backward']:+.3f} "
        f"| {diff['optimizer']:+.3f} | {step:+.3f} ({step / floor_total:+.1%}) "
        f"| {diff['faults']:+,.0f} |"
    )
    lines += [
        "",
        "| adapted layer (input → weight) | layers | floor (ms) | LoRA (ms) | LoRA − floor | "
        + "merged weight ×2 | rank-r gradients | rest |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def rest(row: dict) -> float:  # what the two parts do not explain
        return row["lora"] - row["floor"] - 2 * row["merge"] - row["rank_r"]

    sums = Counter()
    for row in data["layers"]:
        n = row["layers"]
        layout = "" if row["contiguous"] else " (transposed view)"
        lines.append(
            f"| {row['input']}{layout} → {row['weight']} | {n} | {row['floor']:.2f} "
            f"| {row['lora']:.2f} | {row['lora'] - row['floor']:+.2f} | {2 * row['merge']:.2f} "
            f"| {row['rank_r']:.2f} | {rest(row):+.2f} |"
        )
        sums.update({"floor": n * row["floor"], "lora": n * row["lora"],
                     "merge": 2 * n * row["merge"], "rank_r": n * row["rank_r"],
                     "rest": n * rest(row)})  # fmt: skip
    lines.append(
        f"| all adapted layers | {sum(r['layers'] for r in data['layers'])} "
        f"| {sums['floor']:.1f} | {sums['lora']:.1f} | {sums['lora'] - sums['floor']:+.1f} "
        f"| {sums['merge']:.1f} | {sums['rank_r']:.1f} | {sums['rest']:+.1f} |"
    )
    mem = data["saved"]
    lines += [
        "",
        "| saved for backward | MiB |",
        "|---|---|",
        f"| floor | {mem['floor_mib']:.1f} |",
        f"| LoRA | {mem['lora_mib']:.1f} |",
        f"| LoRA − floor | {mem['lora_mib'] - mem['floor_mib']:+.1f} |",
        f"| adapted layers' inputs the floor does not keep | {mem['inputs_not_kept_mib']:.1f} |",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted([*SIZES, *WHISPER_SIZES]), default="20m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=1000, help="Conformer input frames")
    parser.add_argument("--window", type=float, default=10.0, help="Whisper input seconds")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="training steps per configuration")
    parser.add_argument("--repeats", type=int, default=20, help="calls per layer variant")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default="results/benchmarks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    models, saved = {}, {}
    for method in ("floor", "lora"):
        torch.manual_seed(0)
        model, _ = build_model(method, args.size, args.rank, args.window)
        trainable = [p for p in model.parameters() if p.requires_grad]
        loss_fn, _ = workload(model, args.size, args.batch, args.frames, args.window)
        model.train()
        models[method] = (model, torch.optim.Adam(trainable, lr=1e-4), loss_fn)
        saved[method] = saved_bytes(loss_fn, list(model.parameters())) / 2**20

    shapes, hooks = adapted_layers(models["lora"][0])
    models["lora"][2]()
    for hook in hooks:
        hook.remove()
    floor_model, _, floor_loss = models["floor"]
    linear = models["lora"][0].adapted_layers  # the floor trains exactly these layers' biases
    missing = inputs_not_kept(floor_model, linear, floor_loss, list(floor_model.parameters()))

    meta = {"size": args.size, "batch": args.batch, "frames": args.frames, "rank": args.rank,
            "steps": args.steps, "repeats": args.repeats, "threads": args.threads}  # fmt: skip
    saved_mib = {"floor_mib": saved["floor"], "lora_mib": saved["lora"],
                 "inputs_not_kept_mib": missing / 2**20}  # fmt: skip
    data = {
        "meta": meta,
        "step_split": step_split(models, args.steps),
        "layers": layer_costs(shapes, args.rank, args.repeats),
        "saved": saved_mib,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"lora_overhead_{args.size}.json").write_text(json.dumps(data, indent=1))
    table = markdown(data)
    (out / f"lora_overhead_{args.size}.md").write_text(table + "\n")
    print(table)
    print(f"wrote {out}/lora_overhead_{args.size}.json, .md")


if __name__ == "__main__":
    main()

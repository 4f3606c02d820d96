#!/usr/bin/env python3
"""Training and inference cost of each adapter against full fine-tuning.

Every configuration runs in its own process (so peak memory is its own), the
configurations are interleaved over repeats (so machine noise cannot favour
one), and the table reports medians and ratios to full fine-tuning measured
in the same run. The models are the recipe's Conformer CTC, built from
``hparams/pretrain_asr.yaml`` with size overrides (inputs: random filterbanks
of a fixed shape), and Whisper through the Whisper recipe's model class: the
packaged tiny.en (converted weights) or a randomly initialised Whisper of
small's dimensions (inputs: random audio and tokens). No data is needed.

    python benchmarks/adapter_cost.py --quick                 # ~3 min, 3.1M model
    python benchmarks/adapter_cost.py --size 20m --repeats 5  # the anchor model
    python benchmarks/adapter_cost.py --size whisper-tiny --window 10
    python benchmarks/adapter_cost.py --size whisper-small --batch 2 --repeats 1

Each configuration runs twice per repeat, in two processes: one times training
steps and inference with glibc's default allocator; the other reads memory
with the allocator pinned from its start (``mallopt(M_MMAP_THRESHOLD, 65536)``,
what ``MALLOC_MMAP_THRESHOLD_=65536`` does: glibc keeps freed memory
otherwise, and peak RSS then says little; pinned for timing, every step ran
about 1.7x slower). Every process imports the same libraries (torch,
SpeechBrain, PEFT, the library), and memory is the peak RSS of two training
steps minus the process's RSS after those imports. The order of the methods is
shuffled anew for every repeat (seeded), and inference alternates which model
runs first. Ratios are given with their range over the repeats, each repeat's
method paired with the reference of the same repeat.

``floor`` is the least any adapter method can cost on a model: the base
frozen, the backward still running through every layer an adapter would adapt
(for input gradients) but forming no weight gradient there. It trains only the
biases of exactly the Linear layers LoRA adapts, and the output layer
(BitFit restricted to those layers); "vs floor" columns divide by it.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "benchmarks") not in sys.path:
    sys.path.insert(0, str(ROOT / "benchmarks"))

from measure import (
    STALL_LIMIT,
    cpu_stall_us,
    ratio_bars,
    reset_rss_peak,
    rss_now_kib,
    rss_peak_kib,
    saved_bytes,
    write_results,
)
from setups import CACHE, SIZES, WHISPER_SIZES, base_model, build_model, workload

METHODS = (
    "full", "floor", "head", "sb_lora", "peft_native", "peft_lora", "lora", "lora_fa", "lora_bf16",
    "lora_all", "lora_attention", "poollora", "dora", "houlsby",
)  # fmt: skip
DESCRIPTIONS = {  # {rank}: the rank of the run
    "full": "full fine-tuning",
    "floor": "frozen base, biases of the adapted Linear layers + head: the floor",
    "head": "frozen model, output layer only (CTC head; Whisper's final decoder norm)",
    "sb_lora": "SpeechBrain 1.1.2 LoRA r{rank}, Linear modules",
    "peft_native": "PEFT LoRA r{rank} inserted by peft.get_peft_model, Linear modules",
    "peft_lora": "PEFT LoRA r{rank} (bridge), Linear modules",
    "lora": "ours LoRA r{rank}, Linear modules",
    "lora_fa": "ours LoRA-FA r{rank} (A frozen: keeps A x, not x), Linear modules",
    "lora_bf16": "ours LoRA r{rank}, input kept for backward in bf16, Linear modules",
    "lora_all": "ours LoRA r{rank}, Linear modules + attention Q/K/V",
    "lora_attention": "ours LoRA r{rank}, attention Q/V only",
    "poollora": "ours PoolLoRA r{rank} stride 2, Linear modules",
    "dora": "ours DoRA r{rank}, Linear modules",
    "houlsby": "ours Houlsby p32, Linear modules",
}


# ------------------------------------------------------------------ worker


def worker(
    method: str,
    size: str,
    batch: int,
    frames: int,
    steps: int,
    rank: int,
    window: float = 10.0,
    cache: Path = CACHE,
    device: str = "cpu",
    bf16: bool = False,
    phase: str = "time",
) -> dict:
    """Measure one configuration in this process; return its figures.

    ``phase="time"``: training steps and inference, timed with the default
    allocator; on ``cuda`` devices timings are synchronised. With ``bf16``, the
    same steps are also timed under bf16 autocast (``step_bf16_s``), after the
    float32 ones. ``phase="memory"``: the allocator pinned from the start, the
    peak RSS of two training steps above the RSS after every import
    (``peak_rss_mib``; on ``cuda`` also ``torch.cuda.max_memory_allocated``,
    ``peak_cuda_mib``), the bytes saved for backward and the file sizes.
    """
    if phase == "memory":
        # glibc keeps freed memory unless pinned (as MALLOC_MMAP_THRESHOLD_=65536 would)
        ctypes.CDLL("libc.so.6").mallopt(-3, 65536)  # M_MMAP_THRESHOLD
    import peft  # noqa: F401  every process imports the same libraries, whatever it measures
    import speechbrain  # noqa: F401
    import torch

    sys.path.insert(0, str(ROOT))
    import adapters  # noqa: F401

    baseline_kib = rss_now_kib()
    torch.manual_seed(0)
    model, adapted = build_model(method, size, rank, window, cache)
    model.to(device)
    cuda = torch.device(device).type == "cuda"
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-4)
    compute_loss, forward = workload(model, size, batch, frames, window, device)

    autocast = {"enabled": False}

    def step() -> None:
        with torch.autocast(torch.device(device).type, torch.bfloat16, **autocast):
            loss = compute_loss()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()

    model.train()
    step()  # warm-up: allocations, optimizer state
    result = {
        "method": method,
        "trainable": sum(p.numel() for p in trainable),
        "total": sum(p.numel() for p in params),
    }
    if phase == "memory":
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        reset_rss_peak()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            step()
        result["peak_rss_mib"] = (rss_peak_kib() - baseline_kib) / 1024
        result["baseline_rss_mib"] = baseline_kib / 1024
        if cuda:
            result["peak_cuda_mib"] = torch.cuda.max_memory_allocated() / 2**20
        result["saved_mib"] = saved_bytes(compute_loss, params) / 2**20
        with tempfile.TemporaryDirectory() as tmp:
            full_path = os.path.join(tmp, "full.ckpt")
            torch.save(model.state_dict(), full_path)
            result["full_file_bytes"] = os.path.getsize(full_path)
            if callable(getattr(adapted, "save_adapter", None)):
                path = os.path.join(tmp, "adapter.safetensors")
                adapted.save_adapter(path)
                result["adapter_file_bytes"] = os.path.getsize(path)
        return result

    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    result["step_s"] = statistics.median(times)
    if bf16:
        autocast["enabled"] = True
        step()  # warm-up under autocast
        times_bf16 = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times_bf16.append(time.perf_counter() - start)
        autocast["enabled"] = False
        result["step_bf16_s"] = statistics.median(times_bf16)
    model.eval()
    if adapted is None:  # full fine-tuning and head-only infer with the base model itself
        return result

    # Inference against the base model, in this process, interleaved call by call.
    torch.manual_seed(0)
    reference = base_model(size, window, cache)[0].to(device).eval()
    _, run_reference = workload(reference, size, batch, frames, window, device)

    def relative(run) -> float:
        """Median time of ``run`` over the median time of the base, interleaved."""
        mine, base = [], []
        with torch.no_grad():
            run()  # warm-up
            run_reference()
            for i in range(steps):  # which of the two runs first alternates
                pair = [(run, mine), (run_reference, base)]
                for fn, out in pair if i % 2 == 0 else pair[::-1]:
                    start = time.perf_counter()
                    fn()
                    if cuda:
                        torch.cuda.synchronize()
                    out.append(time.perf_counter() - start)
        return statistics.median(mine) / statistics.median(base)

    result["infer_ratio"] = relative(forward)
    if callable(getattr(adapted, "merge", None)):
        try:
            adapted.merge()
        except TypeError:  # an adapter that cannot be merged
            return result
        result["infer_merged_ratio"] = relative(forward)
        plain = adapted.export_plain().to(device).eval()
        result["infer_exported_ratio"] = relative(
            workload(plain, size, batch, frames, window, device)[1]
        )
    return result


# ------------------------------------------------------------------ driver


def _ratios(rows: list[dict], method: str, reference: str, key: str) -> list[float]:
    """``key`` of ``method`` over ``key`` of ``reference``, per repeat both ran in."""
    mine = {r.get("repeat"): r[key] for r in rows if r["method"] == method and key in r}
    theirs = {r.get("repeat"): r[key] for r in rows if r["method"] == reference and key in r}
    return [mine[rep] / theirs[rep] for rep in mine if rep in theirs and rep is not None]


def summarise(rows: list[dict], methods: list[str]) -> list[dict]:
    """Median of every figure per method, ratios to full fine-tuning and to the floor.

    Runs during which other tasks kept a CPU busy (``cpu_stall`` above
    ``STALL_LIMIT``) are left out when the method has clean runs. Each ratio
    ``<x>_ratio`` is of the medians; ``<x>_ratio_range`` is the lowest and
    highest ratio of one repeat's run to the reference's run of the same repeat.
    """
    table, kept = [], []
    for method in methods:
        runs = [r for r in rows if r["method"] == method]
        if not runs:
            continue
        clean = [r for r in runs if r.get("cpu_stall", 0.0) <= STALL_LIMIT] or runs
        kept += clean
        keys = [k for k in clean[0] if k not in ("method", "repeat")]
        med = {k: statistics.median(r[k] for r in clean if k in r) for k in keys}
        spread = {
            "step_s_range": [min(r["step_s"] for r in clean), max(r["step_s"] for r in clean)]
        }
        table.append({"method": method, "runs": len(clean), "excluded": len(runs) - len(clean),
                      **med, **spread})  # fmt: skip
    for t in table:
        if "step_bf16_s" in t:
            t["bf16_ratio"] = t["step_bf16_s"] / t["step_s"]
    by_method = {t["method"]: t for t in table}
    memory = "peak_cuda_mib" if all("peak_cuda_mib" in t for t in table) else "peak_rss_mib"
    for reference, prefix in (("full", ""), ("floor", "floor_")):
        ref = by_method.get(reference)
        if ref is None:
            continue
        for t in table:
            for key, name in (("step_s", "step"), (memory, "memory")):
                t[f"{prefix}{name}_ratio"] = t[key] / ref[key]
                pairs = _ratios(kept, t["method"], reference, key)
                if pairs:
                    t[f"{prefix}{name}_ratio_range"] = [min(pairs), max(pairs)]
            if prefix:
                continue
            t["rss_ratio"] = t["peak_rss_mib"] / ref["peak_rss_mib"]
            if "peak_cuda_mib" in t and "peak_cuda_mib" in ref:
                t["cuda_ratio"] = t["peak_cuda_mib"] / ref["peak_cuda_mib"]
            t["saved_ratio"] = t["saved_mib"] / ref["saved_mib"]
            if "adapter_file_bytes" in t:
                t["file_ratio"] = t["adapter_file_bytes"] / ref["full_file_bytes"]
    return table


def markdown(table: list[dict], rank: int = 8) -> str:
    """The summary as a markdown table; ratios with their range over repeats."""

    def ratio(t: dict, key: str) -> str:
        if key not in t:
            return "-"
        low_high = t.get(f"{key}_range")
        spread = f" ({low_high[0]:.2f}–{low_high[1]:.2f})" if low_high and t["runs"] > 1 else ""
        return f"{t[key]:.2f}x{spread}"

    memory = "GPU memory" if all("cuda_ratio" in t for t in table) else "peak memory"
    lines = [
        (
            f"| method | trainable | step (s) | step vs full | step vs floor | {memory} vs full "
            f"| {memory} vs floor | saved activations vs full | inference vs base: unmerged "
            "| merged | exported | adapter file vs full |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    bf16 = any("bf16_ratio" in t for t in table)
    if bf16:
        lines[0] += " bf16 step vs fp32 |"
        lines[1] += "---|"
    for t in table:
        pct = 100 * t["trainable"] / t["total"]
        file = f"{100 * t['file_ratio']:.2f}%" if "file_ratio" in t else "-"
        low, high = t["step_s_range"]
        step = f"{t['step_s']:.3f}" + (f" ({low:.3f}–{high:.3f})" if t["runs"] > 1 else "")
        label = DESCRIPTIONS[t["method"]].format(rank=rank)
        lines.append(
            f"| {t['method']} ({label}) | {t['trainable']:,.0f} ({pct:.2f}%) "
            f"| {step} | {ratio(t, 'step_ratio')} | {ratio(t, 'floor_step_ratio')} "
            f"| {ratio(t, 'memory_ratio')} | {ratio(t, 'floor_memory_ratio')} "
            f"| {ratio(t, 'saved_ratio')} | {ratio(t, 'infer_ratio')} "
            f"| {ratio(t, 'infer_merged_ratio')} | {ratio(t, 'infer_exported_ratio')} | {file} |"
            + (f" {ratio(t, 'bf16_ratio')} |" if bf16 else "")
        )
    return "\n".join(lines)


def plot(table: list[dict], path: Path) -> None:
    """Bars of step time and peak memory relative to full fine-tuning and to the floor."""
    panels = [
        ([t.get("step_ratio", 0) for t in table], "training step / full fine-tuning"),
        ([t.get("floor_step_ratio", 0) for t in table], "training step / floor"),
        ([t.get("memory_ratio", 0) for t in table], "peak training memory / full"),
    ]
    ratio_bars([t["method"] for t in table], panels, path, size=(13, 4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted([*SIZES, *WHISPER_SIZES]), default="asr")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=1000, help="Conformer input frames")
    parser.add_argument("--window", type=float, default=10.0, help="Whisper input seconds")
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda when a GPU is present")
    parser.add_argument("--quick", action="store_true", help="2 repeats, 3 steps, 500 frames")
    parser.add_argument(
        "--bf16", action="store_true", help="also time each step under bf16 autocast"
    )
    parser.add_argument("--out", default="results/benchmarks")
    parser.add_argument("--cache", default=str(CACHE), help="folder of Whisper models")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--phase", default="time", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help="seed of the order of the methods")
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.steps, args.frames = 2, 3, 500

    if args.worker:
        import torch

        torch.set_num_threads(args.threads)
        result = worker(
            args.worker,
            args.size,
            args.batch,
            args.frames,
            args.steps,
            args.rank,
            args.window,
            Path(args.cache),
            args.device,
            args.bf16,
            args.phase,
        )
        print("RESULT " + json.dumps(result))
        return

    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise SystemExit(f"Unknown methods {unknown}; choose from {', '.join(METHODS)}.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": str(args.threads)}
    rows, total, started = [], 2 * args.repeats * len(methods), time.time()
    done = 0
    for rep in range(args.repeats):
        order = random.Random(f"{args.seed}-{rep}").sample(methods, len(methods))
        for method in order:
            row = {"repeat": rep}
            for phase in ("time", "memory"):
                eta = (time.time() - started) / done * (total - done) if done else float("nan")
                print(f"[{done + 1}/{total}] repeat {rep + 1} {method} {phase} (ETA {eta:.0f} s)",
                      flush=True)  # fmt: skip
                cmd = [sys.executable, __file__, "--worker", method, "--phase", phase,
                       "--size", args.size, "--batch", str(args.batch),
                       "--frames", str(args.frames), "--steps", str(args.steps),
                       "--rank", str(args.rank), "--window", str(args.window),
                       "--cache", args.cache, "--device", args.device,
                       "--threads", str(args.threads)]  # fmt: skip
                cmd += ["--bf16"] if args.bf16 and phase == "time" else []
                stall, start = cpu_stall_us(), time.time()
                proc = subprocess.run(cmd, check=False, capture_output=True, text=True, env=env)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode or not line:
                    raise SystemExit(
                        f"{method} ({phase}) failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
                    )
                row.update(json.loads(line[0][7:]))
                if phase == "time":  # only timings suffer from contention
                    stall = (cpu_stall_us() - stall) / 1e6 / max(time.time() - start, 1e-9)
                    row["cpu_stall"] = round(stall, 3)
                done += 1
            rows.append(row)
    table = summarise(rows, methods)
    meta = {"size": args.size, "batch": args.batch, "frames": args.frames, "steps": args.steps,
            "window_s": args.window if args.size in WHISPER_SIZES else None,
            "device": args.device, "bf16": args.bf16,
            "repeats": args.repeats, "threads": args.threads, "rank": args.rank,
            "order_seed": args.seed, "cpus": os.cpu_count()}  # fmt: skip
    data = {"meta": meta, "runs": rows, "summary": table}
    write_results(out, f"cost_{args.size}", data, markdown(table, args.rank),
                  lambda p: plot(table, p))  # fmt: skip


if __name__ == "__main__":
    main()

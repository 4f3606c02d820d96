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
SIZES = {  # overrides of hparams/pretrain_asr.yaml
    "asr": {},
    "20m": {"frontend_channels_1": 64, "d_model": 256, "num_encoder_layers": 12,
            "d_ffn": 1024, "output_neurons": 5000},
    "tiny": {"d_model": 32, "nhead": 2, "num_encoder_layers": 1, "d_ffn": 64},
}  # fmt: skip
WHISPER_SIZES = {  # size -> model source (recipes.whisper): packaged weights or a random preset
    "whisper-tiny": "packaged",
    "whisper-small": "small",
    "whisper-test": "tiny-test",
}
METHODS = (
    "full", "floor", "head", "sb_lora", "peft_native", "peft_lora", "lora", "lora_all", "lora_attention",
    "poollora", "dora", "houlsby",
)  # fmt: skip
DESCRIPTIONS = {  # {rank}: the rank of the run
    "full": "full fine-tuning",
    "floor": "frozen base, biases of the adapted Linear layers + head: the floor",
    "head": "frozen model, output layer only (CTC head; Whisper's final decoder norm)",
    "sb_lora": "SpeechBrain 1.1.2 LoRA r{rank}, Linear modules",
    "peft_native": "PEFT LoRA r{rank} inserted by peft.get_peft_model, Linear modules",
    "peft_lora": "PEFT LoRA r{rank} (bridge), Linear modules",
    "lora": "ours LoRA r{rank}, Linear modules",
    "lora_all": "ours LoRA r{rank}, Linear modules + attention Q/K/V",
    "lora_attention": "ours LoRA r{rank}, attention Q/V only",
    "poollora": "ours PoolLoRA r{rank} stride 2, Linear modules",
    "dora": "ours DoRA r{rank}, Linear modules",
    "houlsby": "ours Houlsby p32, Linear modules",
}


# ------------------------------------------------------------------ worker
def _rss_peak_kib() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return -1


def _rss_now_kib() -> int:
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def _reset_rss_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        pass


CACHE = ROOT / "pretrained"  # converted and random Whisper folders (default of --cache)


def _base_model(size: str, window: float, cache: Path = CACHE):
    """The model to adapt, the names of its Linear layers, and the layers kept trainable."""
    import torch
    from hyperpyyaml import load_hyperpyyaml

    if size in WHISPER_SIZES:
        from recipes.whisper.convert import resolve_source
        from recipes.whisper.model import WindowedWhisper
        from recipes.whisper.random_init import save_random_whisper

        preset = WHISPER_SIZES[size]
        if preset == "packaged":
            source = resolve_source("packaged", cache / "whisper-tiny.en")
        else:
            source = save_random_whisper(cache / f"random-whisper-{preset}", preset)
        model = WindowedWhisper(
            source, str(cache / "hub"), train_window_s=window, eval_window_s=window
        )
        head = "model.decoder.layer_norm"
    else:
        with open(ROOT / "hparams" / "pretrain_asr.yaml") as handle:
            hparams = load_hyperpyyaml(handle, {"prepare_corpus": False, **SIZES[size]})
        model, head = hparams["model"], "head"
    linear = [
        name
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and name != head
    ]
    return model, linear, head


def _build(method: str, size: str, rank: int, window: float, cache: Path = CACHE):
    """The model with ``method`` applied, and the module that holds adapters."""
    from speechbrain.nnet import adapters as sb_adapters

    import adapters

    model, linear, head = _base_model(size, window, cache)
    # The CTC head is trained in every method; Whisper's output layer is its (tied) embedding.
    common = {"unfrozen_layers": [head] if head == "head" else []}
    if method == "full":
        return model, None
    if method == "head":
        for name, param in model.named_parameters():
            param.requires_grad_(name.startswith(head + "."))
        return model, None
    if method == "floor":  # BitFit on exactly the layers LoRA adapts, and the same head
        for param in model.parameters():
            param.requires_grad_(False)
        for name in [*linear, *common["unfrozen_layers"]]:
            module = model.get_submodule(name)
            trained = module.parameters() if name == head else [module.bias]
            for param in trained:
                if param is not None:
                    param.requires_grad_(True)
        return model, None
    if method == "sb_lora":
        wrapped = sb_adapters.AdaptedModel(
            model, sb_adapters.LoRA, target_layers=linear, adapter_kwargs={"rank": rank}, **common
        )
        return wrapped, wrapped
    if method == "peft_native":
        from peft import LoraConfig, get_peft_model

        wrapped = get_peft_model(model, LoraConfig(r=rank, lora_alpha=rank, target_modules=linear))
        for name in common["unfrozen_layers"]:
            for param in model.get_submodule(name).parameters():
                param.requires_grad_(True)
        return wrapped, wrapped
    choices = {
        "peft_lora": (adapters.peft_adapter, linear, {"r": rank, "alpha": rank}),
        "lora": (adapters.LoRA, linear, {"rank": rank}),
        "lora_all": (adapters.LoRA, [*linear, "*.q_proj", "*.k_proj", "*.v_proj"], {"rank": rank}),
        "lora_attention": (adapters.LoRA, ["*.q_proj", "*.v_proj"], {"rank": rank}),
        "poollora": (adapters.PoolLoRA, linear, {"rank": rank, "stride": 2}),
        "dora": (adapters.DoRA, linear, {"rank": rank}),
        "houlsby": (adapters.Houlsby, linear, {"projection_size": 32}),
    }
    cls, targets, kwargs = choices[method]
    if size in WHISPER_SIZES and method == "lora_all":  # Whisper's Q/K/V are Linear already
        targets = linear
    wrapped = adapters.AdaptedModel(
        model, cls, target_layers=targets, adapter_kwargs=kwargs, **common
    )
    return wrapped, wrapped


def _workload(model, size: str, batch: int, frames: int, window: float, device: str = "cpu"):
    """``loss()`` of one training batch and ``infer()`` of one forward pass, random inputs."""
    import torch

    if size in WHISPER_SIZES:
        wav = torch.randn(batch, int(window * 16000), device=device) * 0.1
        tokens = torch.randint(0, 50000, (batch, 25), device=device)

        def loss() -> torch.Tensor:
            _, logits, _ = model(wav, tokens[:, :-1])
            return torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens[:, 1:].flatten())

        return loss, lambda: model(wav, tokens[:, :-1])

    feats = torch.randn(batch, frames, 80, device=device)
    lengths = torch.ones(batch, device=device)
    vocab = getattr(model, "adapted_model", model).head.out_features
    targets = torch.randint(1, vocab, (batch, frames // 20), device=device)
    target_lengths = torch.full((batch,), frames // 20, device=device)

    def ctc() -> torch.Tensor:
        log_probs = model(feats, lengths).log_softmax(-1).transpose(0, 1)
        out_lengths = torch.full((batch,), log_probs.shape[0], device=device)
        return torch.nn.functional.ctc_loss(log_probs, targets, out_lengths, target_lengths)

    return ctc, lambda: model(feats, lengths)


def saved_storages(run, params) -> dict:
    """The distinct storages autograd saves for backward in ``run()``, ``params`` excluded,
    as ``{data_ptr: tensor}`` (the tensors are held, so no freed storage is reused meanwhile).

    Example
    -------
    >>> import torch
    >>> w = torch.ones(4, 3, requires_grad=True)
    >>> [t.shape for t in saved_storages(lambda: torch.ones(5, 4) @ w, [w]).values()]
    [torch.Size([5, 4])]
    """
    import torch

    param_ptrs = {p.untyped_storage().data_ptr() for p in params}
    saved: dict = {}

    def pack(tensor):
        ptr = tensor.untyped_storage().data_ptr()
        if ptr not in param_ptrs:
            saved.setdefault(ptr, tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        run()
    return saved


def saved_bytes(run, params) -> int:
    """Bytes of the distinct tensors autograd saves for backward in ``run()``, ``params`` excluded.

    Example
    -------
    >>> import torch
    >>> w = torch.ones(4, 3, requires_grad=True)
    >>> saved_bytes(lambda: torch.ones(5, 4) @ w, [w])  # the 5 x 4 input, float32
    80
    """
    return sum(t.untyped_storage().nbytes() for t in saved_storages(run, params).values())


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

    baseline_kib = _rss_now_kib()
    torch.manual_seed(0)
    model, adapted = _build(method, size, rank, window, cache)
    model.to(device)
    cuda = torch.device(device).type == "cuda"
    params = list(model.parameters())
    trainable = [p for p in params if p.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=1e-4)
    compute_loss, forward = _workload(model, size, batch, frames, window, device)

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
        _reset_rss_peak()
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        for _ in range(2):
            step()
        result["peak_rss_mib"] = (_rss_peak_kib() - baseline_kib) / 1024
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
    reference = _base_model(size, window, cache)[0].to(device).eval()
    _, run_reference = _workload(reference, size, batch, frames, window, device)

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
            _workload(plain, size, batch, frames, window, device)[1]
        )
    return result


# ------------------------------------------------------------------ driver
STALL_LIMIT = 0.10  # runs whose CPU stall fraction exceeds this are left out of the medians


def cpu_stall_us() -> int:
    """Total microseconds some task waited for a CPU (/proc/pressure/cpu; 0 if unavailable)."""
    try:
        with open("/proc/pressure/cpu") as handle:
            return int(handle.readline().split("total=")[1].split()[0])
    except (OSError, IndexError, ValueError):
        return 0


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


def write_results(out: Path, tag: str, data: dict, table: str, draw) -> None:
    """Write ``<tag>.json`` (``data``), ``.md`` (``table``) and ``.png`` (``draw(path)``)."""
    (out / f"{tag}.json").write_text(json.dumps(data, indent=1))
    (out / f"{tag}.md").write_text(table + "\n")
    draw(out / f"{tag}.png")
    print(json.dumps(data.get("meta", {})))
    print(table)
    print(f"wrote {out}/{tag}.json, .md, .png")


def ratio_bars(
    names: list[str], panels: list[tuple[list[float], str]], path: Path, size=(11, 4)
) -> None:
    """One horizontal bar chart per panel (values, title), a line at 1.0, saved to ``path``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=size, sharey=True, squeeze=False)
    for ax, (values, title) in zip(axes[0], panels, strict=True):
        ax.barh(names, values, color="#4c72b0")
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(title)
        ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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

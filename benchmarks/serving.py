#!/usr/bin/env python3
"""Serving several adapters from one Whisper: mixed batches, a merged adapter, switching.

One base Whisper holds N LoRA adapter sets (rank 8 on every attention projection and
feed-forward layer, as ``hparams/lora_whisper.yaml``; random non-zero ``lora_B``, seeded,
so every set changes the outputs). A batch of utterances is transcribed by greedy
decoding, each configuration in this one process, interleaved over repeats:

- ``merged``: one adapter folded into the base (``merge()``), the whole batch with it;
  the reference (1.0x);
- ``unmerged-single``: that adapter active and unmerged, the whole batch;
- ``mixed-N``: utterances assigned round-robin to N sets, one mixed batch
  (``AdaptedModel.mixed_adapters``);
- ``switching-N``: the same assignment served by one sub-batch per set, ``set_adapter``
  before each (the cost of switching included).

Every configuration decodes the same number of tokens per utterance (``--tokens``):
SpeechBrain's greedy searcher stops at end-of-text and its ``min_decode_ratio`` does not
force a minimum length (it shortens the loop), so end-of-text is suppressed like the
non-speech tokens and ``max_decode_ratio`` fixes the number of steps.

    python benchmarks/serving.py                              # tiny.en, 30 s window, batch 8
    python benchmarks/serving.py --window 10 --repeats 5
    python benchmarks/serving.py --quick                      # 10 s window, few tokens
    python benchmarks/serving.py --size whisper-test --window 1 --tokens 4   # for tests

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from measure import STALL_LIMIT, cpu_stall_us, write_results
from setups import CACHE, WHISPER_SIZES, base_model

TARGET = 0.8  # the target: a mixed batch at N = 4 keeps 0.8x a merged adapter's rate
LORA_B_STD = 0.01  # spread of the random lora_B of every set (they start at zero when trained)


# ------------------------------------------------------------------ model and workload
def build_adapted(
    size: str, window: float, cache: Path, rank: int, sets: int, seed: int, device: str
):
    """Whisper with ``sets`` LoRA adapter sets ``a0``, ``a1``... (random ``lora_B``).

    Returns
    -------
    adapted : adapters.AdaptedModel
        The adapted model, in eval mode, ``a{sets - 1}`` active.
    whisper : recipes.whisper.model.WindowedWhisper
        The Whisper inside it (its layers are the adapted ones).
    """
    import adapters

    whisper = base_model(size, window, cache)[0]
    adapted = adapters.AdaptedModel(
        whisper, adapters.LoRA, all_linear=True,
        adapter_kwargs={"rank": rank, "alpha": 2 * rank},
    )  # fmt: skip
    generator = torch.Generator().manual_seed(seed)
    for index in range(sets):
        adapted.add_adapter(f"a{index}")
        randomise_lora_b(adapted, generator)
    adapted.delete_adapter("default")
    return adapted.to(device).eval(), whisper


@torch.no_grad()
def randomise_lora_b(adapted: torch.nn.Module, generator: torch.Generator) -> int:
    """Fill every ``lora_B`` of the active set with ``N(0, LORA_B_STD)``; return how many.

    Example
    -------
    >>> from adapters import AdaptedModel, LoRA
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> model = AdaptedModel(net, LoRA, all_linear=True, adapter_kwargs={"rank": 2})
    >>> randomise_lora_b(model, torch.Generator().manual_seed(0)), bool(net[2].lora_B.any())
    (2, True)
    """
    count = 0
    for name, param in adapted.named_parameters():
        if name.endswith("lora_B"):
            param.copy_(LORA_B_STD * torch.randn(param.shape, generator=generator))
            count += 1
    return count


def make_batch(batch: int, seed: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``batch`` utterances of random audio, 2 to 5 s, zero-padded; relative lengths.

    Example
    -------
    >>> wavs, lens = make_batch(3, 0, "cpu")
    >>> wavs.shape[0], float(lens.max()), bool((lens >= 0.4).all())
    (3, 1.0, True)
    """
    generator = torch.Generator().manual_seed(seed)
    seconds = 2.0 + 3.0 * torch.rand(batch, generator=generator)
    samples = (seconds * 16000).long()
    wavs = torch.zeros(batch, int(samples.max()))
    for row, length in enumerate(samples.tolist()):
        wavs[row, :length] = 0.1 * torch.randn(length, generator=generator)
    return wavs.to(device), (samples / samples.max()).float().to(device)


def make_searcher(whisper, tokens: int, window: float):
    """SpeechBrain's greedy Whisper searcher that decodes exactly ``tokens`` tokens.

    End-of-text joins the suppressed (non-speech) tokens, so no hypothesis ends early;
    ``max_decode_ratio`` is set so that the loop runs ``tokens`` steps over the encoder
    frames of ``window`` seconds.
    """
    from speechbrain.decoders.seq2seq import S2SWhisperGreedySearcher

    frames = whisper.window_frames(window)
    return S2SWhisperGreedySearcher(
        model=whisper, min_decode_ratio=0.0, max_decode_ratio=(tokens + 0.5) / frames,
        suppress_tokens=[-1, whisper.eos],
    )  # fmt: skip


def transcribe(whisper, searcher, wavs: torch.Tensor, lens: torch.Tensor) -> list[list[int]]:
    """Token ids of the greedy hypotheses, as the Whisper recipe decodes (no gradient)."""
    with torch.no_grad():
        encoded = whisper.forward_encoder(whisper._get_mel(wavs))
        hyps, _, _, _ = searcher(encoded, lens)
    return [list(map(int, hyp)) for hyp in hyps]


# ------------------------------------------------------------------ configurations
@dataclass
class Config:
    """One way of serving the batch: ``run()`` returns the hypotheses in batch order;
    ``setup`` and ``teardown`` run around it, untimed."""

    name: str
    adapters: int
    run: Callable[[], list[list[int]]]
    setup: Callable[[], None] = lambda: None
    teardown: Callable[[], None] = lambda: None
    hyps: list[list[int]] = field(default_factory=list)


def assignment(batch: int, sets: int) -> list[str]:
    """Round-robin adapter names, one per utterance.

    Example
    -------
    >>> assignment(5, 2)
    ['a0', 'a1', 'a0', 'a1', 'a0']
    """
    return [f"a{i % sets}" for i in range(batch)]


def switching(adapted, decode: Callable, names: Sequence[str]) -> list[list[int]]:
    """Serve ``names`` by one sub-batch per adapter set, switching to it first.

    ``decode(rows)`` transcribes the utterances at ``rows``; the hypotheses come back in
    the order of the batch.
    """
    hyps: list[list[int]] = [[] for _ in names]
    for name in dict.fromkeys(names):
        rows = [i for i, n in enumerate(names) if n == name]
        adapted.set_adapter(name)
        for row, hyp in zip(rows, decode(rows), strict=True):
            hyps[row] = hyp
    return hyps


def configurations(adapted, whisper, searcher, wavs, lens, counts: Sequence[int]) -> list[Config]:
    """merged, unmerged-single, then mixed-N and switching-N for every N of ``counts``."""
    batch = wavs.shape[0]

    def decode(rows: Sequence[int] | None = None) -> list[list[int]]:
        if rows is None:
            return transcribe(whisper, searcher, wavs, lens)
        index = torch.tensor(rows, device=wavs.device)
        return transcribe(whisper, searcher, wavs[index], lens[index])

    def merge() -> None:
        adapted.set_adapter("a0")
        adapted.merge()

    def mixed(names: list[str]) -> Callable[[], list[list[int]]]:
        def run() -> list[list[int]]:
            with adapted.mixed_adapters(names):
                return decode()

        return run

    configs = [
        Config("merged", 1, decode, merge, adapted.unmerge),
        Config("unmerged-single", 1, decode, lambda: adapted.set_adapter("a0")),
    ]
    for count in counts:
        names = assignment(batch, count)
        configs.append(Config(f"mixed-{count}", count, mixed(names)))
    for count in counts:
        names = assignment(batch, count)
        # Steady state of batch after batch: the previous batch ended on the last set.
        configs.append(
            Config(
                f"switching-{count}", count,
                lambda names=names: switching(adapted, decode, names),
                lambda count=count: adapted.set_adapter(f"a{count - 1}"),
            )
        )  # fmt: skip
    return configs


# ------------------------------------------------------------------ measurement
def measure(configs: list[Config], repeats: int, batch: int) -> list[dict]:
    """Warm each configuration up (keeping its hypotheses), then time ``repeats`` rounds,
    the order rotated every round; one row per timed run."""
    for config in configs:
        config.setup()
        try:
            config.hyps = config.run()
        finally:
            config.teardown()
    rows = []
    for rep in range(repeats):
        shift = rep % len(configs)
        for config in configs[shift:] + configs[:shift]:
            config.setup()
            stall, start = cpu_stall_us(), time.perf_counter()
            try:
                config.run()
            finally:
                seconds = time.perf_counter() - start
                config.teardown()
            stall = (cpu_stall_us() - stall) / 1e6 / max(seconds, 1e-9)
            rows.append({"config": config.name, "repeat": rep, "seconds": seconds,
                         "utt_s": batch / seconds, "cpu_stall": round(stall, 3)})  # fmt: skip
    return rows


def summarise(rows: list[dict], configs: list[Config]) -> list[dict]:
    """Median throughput per configuration, its spread, and its ratio to ``merged``.

    Runs during which other tasks waited for a CPU (``cpu_stall`` above ``STALL_LIMIT``)
    are left out when the configuration has clean runs.

    Example
    -------
    >>> rows = [{"config": c, "utt_s": u, "cpu_stall": s} for c, u, s in
    ...         [("merged", 4.0, 0.0), ("merged", 2.0, 0.0), ("mixed-2", 3.0, 0.0),
    ...          ("mixed-2", 9.0, 0.5)]]
    >>> configs = [Config("merged", 1, list), Config("mixed-2", 2, list)]
    >>> [(t["config"], t["utt_s"], t["ratio"], t["excluded"]) for t in summarise(rows, configs)]
    [('merged', 3.0, 1.0, 0), ('mixed-2', 3.0, 1.0, 1)]
    """
    table = []
    for config in configs:
        runs = [r for r in rows if r["config"] == config.name]
        clean = [r for r in runs if r["cpu_stall"] <= STALL_LIMIT] or runs
        rates = [r["utt_s"] for r in clean]
        table.append({"config": config.name, "adapters": config.adapters,
                      "utt_s": statistics.median(rates), "min_utt_s": min(rates),
                      "max_utt_s": max(rates), "runs": len(clean),
                      "excluded": len(runs) - len(clean)})  # fmt: skip
    merged = next(t["utt_s"] for t in table if t["config"] == "merged")
    for entry in table:
        entry["ratio"] = entry["utt_s"] / merged
    return table


def agreement(configs: list[Config], base: list[list[int]]) -> dict:
    """Which configurations gave the same hypotheses, and how many utterances the
    adapters changed against the base model."""
    hyps = {c.name: c.hyps for c in configs}
    counts = sorted({c.adapters for c in configs if c.name.startswith("mixed-")})
    largest = counts[-1]
    mixed_vs_switching = {n: hyps[f"mixed-{n}"] == hyps[f"switching-{n}"] for n in counts}
    checks = {
        "outputs_equal": mixed_vs_switching[largest],
        "outputs_equal_n": largest,
        "mixed_equals_switching": {str(n): v for n, v in mixed_vs_switching.items()},
        "merged_equals_unmerged": hyps["merged"] == hyps["unmerged-single"],
        "changed_vs_base": sum(a != b for a, b in zip(hyps[f"switching-{largest}"], base)),
        "tokens_decoded": sorted({len(h) for hs in hyps.values() for h in hs}),
    }
    if "mixed-1" in hyps:
        checks["mixed_1_equals_unmerged"] = hyps["mixed-1"] == hyps["unmerged-single"]
    return checks


# ------------------------------------------------------------------ output
def markdown(table: list[dict]) -> str:
    """The summary as a markdown table."""
    lines = [
        "| configuration | adapter sets | utt/s | vs merged | spread (min–max utt/s) | runs |",
        "|---|---|---|---|---|---|",
    ]
    for t in table:
        runs = f"{t['runs']}" + (f" (+{t['excluded']} left out)" if t["excluded"] else "")
        lines.append(
            f"| {t['config']} | {t['adapters']} | {t['utt_s']:.3f} | {t['ratio']:.2f}x "
            f"| {t['min_utt_s']:.3f}–{t['max_utt_s']:.3f} | {runs} |"
        )
    return "\n".join(lines)


def plot(table: list[dict], path: Path) -> None:
    """Bars of throughput relative to ``merged``, lines at 1.0 and at the target."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.4 * len(table) + 1.2))
    ax.barh([t["config"] for t in table], [t["ratio"] for t in table], color="#4c72b0")
    ax.axvline(1.0, color="k", lw=0.8)
    ax.axvline(TARGET, color="#c44e52", ls="--", lw=1.0, label=f"target {TARGET}x (mixed-4)")
    ax.set_xlabel("throughput / merged (one adapter folded in)")
    ax.invert_yaxis()
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ------------------------------------------------------------------ driver
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(WHISPER_SIZES), default="whisper-tiny")
    parser.add_argument("--adapters", default="1,2,4,8", help="the N of mixed-N, switching-N")
    parser.add_argument("--batch", type=int, default=8, help="utterances per batch")
    parser.add_argument("--window", type=float, default=30.0, help="encoder window, seconds")
    parser.add_argument("--tokens", type=int, default=32, help="tokens decoded per utterance")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="cpu, or cuda when a GPU is present")
    parser.add_argument("--quick", action="store_true", help="10 s window, 8 tokens, 2 repeats")
    parser.add_argument("--out", default="results/benchmarks")
    parser.add_argument("--cache", default=str(CACHE), help="folder of Whisper models")
    args = parser.parse_args(argv)
    if args.quick:
        args.window, args.tokens, args.repeats = 10.0, 8, min(args.repeats, 2)
    args.counts = sorted({int(n) for n in args.adapters.split(",") if n})
    if not args.counts or args.counts[0] < 1 or args.counts[-1] > args.batch:
        parser.error(f"--adapters must lie in 1..--batch ({args.batch}): got {args.adapters}")
    if not 0 < args.tokens <= 200:
        parser.error("--tokens must lie in 1..200 (Whisper attends to 448 positions)")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    started = time.time()
    adapted, whisper = build_adapted(
        args.size, args.window, Path(args.cache), args.rank, args.counts[-1], args.seed,
        args.device,
    )  # fmt: skip
    searcher = make_searcher(whisper, args.tokens, args.window)
    wavs, lens = make_batch(args.batch, args.seed, args.device)
    configs = configurations(adapted, whisper, searcher, wavs, lens, args.counts)
    adapted.disable_adapters()
    base = transcribe(whisper, searcher, wavs, lens)
    print(f"{len(configs)} configurations, {args.repeats} repeats ...", flush=True)
    rows = measure(configs, args.repeats, args.batch)
    table = summarise(rows, configs)
    checks = agreement(configs, base)
    meta = {"size": args.size, "batch": args.batch, "window_s": args.window,
            "tokens": args.tokens, "repeats": args.repeats, "rank": args.rank,
            "alpha": 2 * args.rank, "adapter_sets": args.counts[-1], "threads": args.threads,
            "device": args.device, "cpus": os.cpu_count(), "torch": torch.__version__,
            "decoding": "S2SWhisperGreedySearcher, end-of-text suppressed, fixed tokens",
            "seconds": round(time.time() - started, 1)}  # fmt: skip
    transcripts = whisper.tokenizer.batch_decode(configs[-1].hyps, skip_special_tokens=True)
    data = {"meta": meta, "checks": checks, "summary": table, "runs": rows,
            "transcripts": transcripts}  # fmt: skip
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_results(out, "serving", data, markdown(table), lambda p: plot(table, p))
    print(json.dumps(checks))
    return data


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Serving speed, side by side: one Whisper run with its LoRA adapter, served six ways.

On the CPU, in one run, the same recordings (real speech: the main job's manifests) go
through

- ``merged``: our PyTorch path (``recipes.transcribe``), the adapter folded into the
  weights (``AdaptedModel.merge``);
- ``unmerged``: the same path, the adapter active and unmerged;
- ``mixed``: the same path, every other file with the adapter and the rest with ``none``
  (the base model), each batch one mixed batch (``AdaptedModel.mixed_adapters``);
- ``ct2-float32`` and ``ct2-int8``: faster-whisper on the run's CTranslate2 export
  (``python -m recipes.export RUN --to ctranslate2 OUT --quantization float32|int8``),
  greedy (beam 1, temperature 0, no fallback), English, no VAD, no timestamps, no previous
  text, at most as many tokens per 30 s window as our greedy search decodes; a clip
  shorter than 30 s is padded with zeros to the window first (``--pad audio``, the
  default: the features Whisper and our path compute; ``--pad features`` leaves
  faster-whisper to pad the clip's features with zeros, its own default);
- ``ct2-int8-batched``: the same int8 export through CTranslate2's own ``generate`` with
  ``--batch-size`` files per call (faster-whisper's model, feature extractor and tokenizer;
  the same prompt, token cap and suppressed tokens), as a server batching requests would;
  recordings longer than one 30 s window are refused on this path.

Each configuration runs in a process of its own (spawned: a fresh interpreter), which
loads its model, transcribes every file once untimed (the warm-up, whose transcripts are
scored), then times a pass over every file when asked; the configurations take turns,
the order rotated every repeat. Reported per configuration: the median pass time over
``--repeats``, as real-time factor (processing s / audio s) and throughput (audio s per
s); the peak resident memory of its process (``VmHWM`` of ``/proc/<pid>/status``: the
interpreter, its libraries, the model, the warm-up and timed passes); and WER (%) of its
transcripts, normalised and scored as the recipes score (``normalized_words``,
SpeechBrain's ``ErrorRateStats``). A pass includes reading the audio: the PyTorch path
through the recipes' loader, faster-whisper through its own. Both use ``--threads``
threads (torch's intra-op threads; CTranslate2's ``cpu_threads``); faster-whisper
transcribes one file at a time, the PyTorch path ``--batch-size`` windows at a time.

    python benchmarks/deploy_speed.py                          # results/whisper/lora/noisy
    python benchmarks/deploy_speed.py --run results/whisper-base/lora/noisy --figure
    python benchmarks/deploy_speed.py --limit 20 --repeats 1   # a quick look
    python benchmarks/deploy_speed.py --pad features           # faster-whisper's own padding
    python benchmarks/deploy_speed.py --smoke --output-dir /tmp/smoke   # tiny random run

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import csv
import multiprocessing
import os
import re
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "benchmarks"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from measure import STALL_LIMIT, cpu_stall_us, rss_peak_kib, write_results

#: The five configurations, in the order of the table.
PYTORCH = ("merged", "unmerged", "mixed")
CTRANSLATE2 = {"ct2-float32": "float32", "ct2-int8": "int8", "ct2-int8-batched": "int8"}
CONFIGS = (*PYTORCH, *CTRANSLATE2)
#: The issue's targets: int8 faster-whisper serves at least 3x the merged PyTorch
#: throughput, with a WER within 0.5 points of it.
TARGET_SPEEDUP = 3.0
TARGET_WER_POINTS = 0.5
DEFAULT_RUN = "results/whisper/lora/noisy"
DEFAULT_MANIFESTS = ("data/corpus/real_asterisk.csv", "data/corpus/real_librivox.csv")
#: How a manifest is made, named when one is missing.
MANIFEST_HINT = (
    "the main job writes them (./run.sh; or python -m recipes.corpus.real_speech, see "
    "docs/corpus.md); give others with --manifests"
)


class BenchmarkError(Exception):
    """A run the benchmark refuses (unfinished run, missing manifest, nothing decoded)."""


@dataclass
class Recording:
    """One file of a manifest: where it is, what was said, how long it lasts."""

    id: str
    wav: str
    reference: str
    manifest: str
    seconds: float


# ------------------------------------------------------------------ inputs
def check_run(run: Path) -> Path:
    """The inference folder of a finished Whisper run; ``BenchmarkError`` otherwise."""
    inference = run / "inference" if (run / "inference").is_dir() else run
    if not (inference / "hyperparams.yaml").is_file():
        state = "does not exist" if not run.exists() else "has no inference/hyperparams.yaml"
        raise BenchmarkError(
            f"{run} {state}: the run is not finished (the inference folder is written at its "
            "end). Finish the main job (./run.sh, or rerun its training command), then measure."
        )
    return inference


def read_manifests(manifests: Sequence[Path], limit: int | None) -> list[Recording]:
    """The recordings of ``manifests`` (the first ``limit`` of each), with their lengths.

    Manifests are read as ``recipes.transcribe`` reads them (``$data_root`` and relative
    paths from the manifest's folder); a missing manifest is a ``BenchmarkError``.
    """
    missing = [str(m) for m in manifests if not m.is_file()]
    if missing:
        raise BenchmarkError(f"missing manifest(s): {', '.join(missing)}; {MANIFEST_HINT}.")
    from recipes.audio import check_audio
    from recipes.transcribe import collect_items

    recordings = []
    for manifest in manifests:
        items = collect_items([str(manifest)], adapter_column="adapter")[:limit]
        if not items:
            raise BenchmarkError(f"{manifest} lists no recording.")
        for item in items:
            seconds = check_audio(item.wav).seconds
            recordings.append(Recording(item.id, item.wav, item.reference, manifest.stem, seconds))
    return recordings


def run_settings(inference: Path) -> dict[str, Any]:
    """What the workers need to know of the run: its window, its greedy search's token cap,
    its base model; ``BenchmarkError`` for a run that is not a Whisper with an adapter."""
    from recipes.inference import load_inference
    from recipes.transcribe import adapted_model_of
    from recipes.whisper.ctranslate2_export import faster_whisper_max_new_tokens

    asr = load_inference(inference)
    whisper = getattr(asr.hparams, "whisper", None)
    if whisper is None:
        raise BenchmarkError(f"{inference} is not a Whisper run: give a Whisper run's folder.")
    adapted = adapted_model_of(asr)
    if adapted is None:
        raise BenchmarkError(
            f"{inference} holds a model trained in full, without an adapter: merged, unmerged "
            "and mixed serving need an adapter run (e.g. results/whisper/lora/noisy)."
        )
    window_s = float(getattr(asr.hparams, "eval_window_s", 30.0))
    tokens = int(whisper.window_frames(window_s) * asr.hparams.max_decode_ratio)
    return {
        "base_source": str(asr.hparams.base_source),
        "window_s": window_s,
        "max_tokens": tokens,
        # faster-whisper's cap for our greedy search's tokens per 30 s window, by prompt length
        "max_new_tokens": {n: faster_whisper_max_new_tokens(tokens, n) for n in (2, 4)},
        "adapter_names": list(adapted.adapter_names),
    }


def export_ctranslate2(run: Path, out: Path, quantizations: Sequence[str]) -> dict[str, str]:
    """The run exported by ``python -m recipes.export RUN --to ctranslate2`` (its function),
    one folder per weight type under ``out`` (an earlier export there is replaced)."""
    from recipes.export import export

    folders = {}
    for quantization in quantizations:
        folder = out / f"ctranslate2-{quantization}"
        print(
            f"exporting {run} --to ctranslate2 {folder} --quantization {quantization}", flush=True
        )
        folders[quantization] = str(export(run, "ctranslate2", folder, quantization=quantization))
    return folders


# ------------------------------------------------------------------ the servers
def pytorch_server(config: str, spec: dict[str, Any]) -> Callable[[], list[str]]:
    """A pass of ``recipes.transcribe`` over the recordings, served as ``config`` says."""
    import torch

    from recipes.transcribe import Item, adapted_model_of, load_model, transcribe

    torch.set_num_threads(spec["threads"])
    workdir = tempfile.mkdtemp(prefix="deploy-speed-")
    asr, _ = load_model(spec["run"], None, "cpu", workdir)
    adapted = adapted_model_of(asr)
    adapter = "default"
    adapted.set_adapter(adapter)
    if config == "merged":
        adapted.merge()
    if config == "mixed" and (reason := adapted.can_mix()) is not None:
        raise BenchmarkError(f"this run's adapters cannot serve a mixed batch: {reason}")
    recordings: list[Recording] = spec["recordings"]
    if config == "mixed":  # every other file on the base model: each batch mixes both
        names = [adapter if i % 2 == 0 else None for i in range(len(recordings))]
    else:
        names = [adapter] * len(recordings)

    def serve() -> list[str]:
        items = [Item(r.id, r.wav, name) for r, name in zip(recordings, names, strict=True)]
        transcribe(asr, items, spec["batch_size"], "fp32", spec["window_s"])
        failed = [f"{item.id}: {item.error}" for item in items if item.error]
        if failed:
            raise BenchmarkError(f"{len(failed)} file(s) failed: {'; '.join(failed[:3])}")
        return [item.text for item in items]

    return serve


def padded_audio(wav: str, window: int, pad: str):
    """The recording as faster-whisper's 16 kHz float array; with ``pad="audio"`` a clip
    shorter than the window is padded with zeros to it, as Whisper's (and our) feature
    extraction pads, so faster-whisper computes the window's features from audio instead
    of padding the clip's features with zeros (docs/deploy.md#serving-speed)."""
    import numpy as np
    from faster_whisper.audio import decode_audio

    audio = decode_audio(wav)
    if pad == "audio" and len(audio) < window:
        audio = np.pad(audio, (0, window - len(audio)))
    return audio


def ctranslate2_server(config: str, spec: dict[str, Any]) -> Callable[[], list[str]]:
    """A pass of faster-whisper over the recordings, one file at a time, decoding as our
    greedy search decodes (see the module docstring)."""
    from faster_whisper import WhisperModel

    quantization = CTRANSLATE2[config]
    if config.endswith("-batched"):
        return ctranslate2_batched_server(config, spec)
    model = WhisperModel(
        spec["ctranslate2"][quantization], device="cpu", compute_type=quantization,
        cpu_threads=spec["threads"], num_workers=1,
    )  # fmt: skip
    prompt = 4 if model.model.is_multilingual else 2  # + language and task tokens
    cap = spec["max_new_tokens"][prompt]
    recordings: list[Recording] = spec["recordings"]
    window = model.feature_extractor.n_samples

    def serve() -> list[str]:
        texts = []
        for recording in recordings:
            segments, _ = model.transcribe(
                padded_audio(recording.wav, window, spec["pad"]), language="en",
                task="transcribe", beam_size=1,
                temperature=0.0, vad_filter=False, without_timestamps=True,
                condition_on_previous_text=False, compression_ratio_threshold=None,
                log_prob_threshold=None, no_speech_threshold=None, max_new_tokens=cap,
            )  # fmt: skip
            texts.append(" ".join(s.text.strip() for s in segments if s.text.strip()))
        return texts

    return serve


def ctranslate2_batched_server(config: str, spec: dict[str, Any]) -> Callable[[], list[str]]:
    """A pass of CTranslate2's ``Whisper.generate`` over the recordings, ``batch_size`` files
    per call, each file one padded 30 s window of faster-whisper's features."""
    import ctranslate2
    import numpy as np
    from faster_whisper import WhisperModel
    from faster_whisper.audio import decode_audio, pad_or_trim
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_suppressed_tokens

    model = WhisperModel(
        spec["ctranslate2"][CTRANSLATE2[config]], device="cpu",
        compute_type=CTRANSLATE2[config], cpu_threads=spec["threads"], num_workers=1,
    )  # fmt: skip
    multilingual = model.model.is_multilingual
    tokenizer = Tokenizer(model.hf_tokenizer, multilingual, task="transcribe", language="en")
    prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    cap = spec["max_new_tokens"][4 if multilingual else 2]
    suppressed = get_suppressed_tokens(tokenizer, [-1])  # faster-whisper's default set
    frames = model.feature_extractor.nb_max_frames
    recordings: list[Recording] = spec["recordings"]
    if long := [r.id for r in recordings if r.seconds > model.feature_extractor.chunk_length]:
        raise BenchmarkError(
            f"{config} decodes one 30 s window per file; {len(long)} recording(s) are longer "
            f"({', '.join(long[:3])}): give shorter ones, or --limit."
        )

    def serve() -> list[str]:
        texts: list[str] = []
        for start in range(0, len(recordings), spec["batch_size"]):
            batch = recordings[start : start + spec["batch_size"]]
            extract = model.feature_extractor
            if spec["pad"] == "audio":  # the window's features computed on padded audio
                features = np.stack([extract(padded_audio(r.wav, extract.n_samples, "audio"),
                                             padding=0)[..., :frames] for r in batch])  # fmt: skip
            else:  # faster-whisper's way: the clip's features, padded with zeros
                features = np.stack(
                    [pad_or_trim(extract(decode_audio(r.wav))[..., :frames]) for r in batch]
                )
            results = model.model.generate(
                ctranslate2.StorageView.from_array(np.ascontiguousarray(features)),
                [prompt] * len(batch), beam_size=1, max_length=len(prompt) + cap,
                suppress_blank=True, suppress_tokens=suppressed,
            )  # fmt: skip
            texts += [tokenizer.decode(r.sequences_ids[0]).strip() for r in results]
        return texts

    return serve


def worker(config: str, spec: dict[str, Any], conn) -> None:
    """One configuration's process: load, warm up, then one timed pass per ``"run"``;
    ``"stop"`` answers the process's peak resident memory and ends it."""
    try:
        make = pytorch_server if config in PYTORCH else ctranslate2_server
        serve = make(config, spec)
        conn.send({"texts": serve()})  # the warm-up pass: its transcripts are scored
        while conn.recv() == "run":
            start = time.perf_counter()
            texts = serve()
            conn.send({"seconds": time.perf_counter() - start, "texts": texts})
        conn.send({"peak_rss_kib": rss_peak_kib()})
    except BaseException:  # noqa: BLE001 - the parent reports it and stops the others
        conn.send({"error": traceback.format_exc()})
    finally:
        conn.close()


class Worker:
    """The parent's handle on one configuration's process."""

    def __init__(self, config: str, spec: dict[str, Any]) -> None:
        context = multiprocessing.get_context("spawn")
        self.config = config
        self.texts: list[str] = []  # the warm-up's transcripts
        self.conn, child = context.Pipe()
        self.process = context.Process(target=worker, args=(config, spec, child), daemon=True)
        self.process.start()
        child.close()

    def receive(self) -> dict[str, Any]:
        """The worker's next answer; ``BenchmarkError`` with its traceback if it failed."""
        try:
            answer = self.conn.recv()
        except EOFError:
            code = self.process.exitcode
            raise BenchmarkError(f"{self.config}: the worker died (exit code {code})") from None
        if "error" in answer:
            raise BenchmarkError(f"{self.config} failed in its worker:\n{answer['error']}")
        return answer

    def timed_pass(self) -> dict[str, Any]:
        self.conn.send("run")
        return self.receive()

    def stop(self) -> int:
        """End the process; its peak resident memory (KiB)."""
        self.conn.send("stop")
        peak = self.receive()["peak_rss_kib"]
        self.process.join(timeout=60)
        return peak

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
            self.process.join(timeout=10)


# ------------------------------------------------------------------ measurement
def measure(
    spec: dict[str, Any], repeats: int, export: Callable[[], dict[str, str]]
) -> tuple[dict, list[dict], dict]:
    """Start every configuration's worker, wait for its warm-up, then time ``repeats``
    rounds, each configuration once per round, the order rotated every round.

    ``export()`` writes the CTranslate2 folders (``{quantization: folder}``) while the
    PyTorch workers load (nothing is timed until every worker has warmed up). Returns the
    warm-up transcripts by configuration, one row per timed pass, and each worker's peak
    resident memory (KiB).
    """
    workers: list[Worker] = []
    try:
        print(f"loading and warming up {', '.join(PYTORCH)} ...", flush=True)
        workers = [Worker(config, spec) for config in PYTORCH]
        spec = {**spec, "ctranslate2": export()}
        print(f"loading and warming up {', '.join(CTRANSLATE2)} ...", flush=True)
        workers += [Worker(config, spec) for config in CTRANSLATE2]
        for handle in workers:
            handle.texts = handle.receive()["texts"]
        rows = []
        for rep in range(repeats):
            shift = rep % len(workers)
            for handle in workers[shift:] + workers[:shift]:
                stall = cpu_stall_us()
                answer = handle.timed_pass()
                seconds = answer["seconds"]
                stall = (cpu_stall_us() - stall) / 1e6 / max(seconds, 1e-9)
                rows.append({"config": handle.config, "repeat": rep, "seconds": seconds,
                             "same_as_warmup": answer["texts"] == handle.texts,
                             "cpu_stall": round(stall, 3)})  # fmt: skip
            print(f"repeat {rep + 1}/{repeats} done", flush=True)
        peaks = {handle.config: handle.stop() for handle in workers}
        return {handle.config: handle.texts for handle in workers}, rows, peaks
    finally:
        for handle in workers:
            handle.kill()


def score(recordings: Sequence[Recording], texts: Sequence[str]) -> dict[str, float]:
    """WER (%) of ``texts`` overall and per manifest, normalised and scored as the recipes
    score (``normalized_words``, SpeechBrain's ``ErrorRateStats``)."""
    from speechbrain.utils.metric_stats import ErrorRateStats

    from recipes.text_normalization import normalized_words

    groups: dict[str, ErrorRateStats] = {"all": ErrorRateStats()}
    for recording, text in zip(recordings, texts, strict=True):
        for group in ("all", recording.manifest):
            stats = groups.setdefault(group, ErrorRateStats())
            stats.append(
                [recording.id], [normalized_words(text)], [normalized_words(recording.reference)]
            )
    return {group: float(stats.summarize("error_rate")) for group, stats in groups.items()}


def check_decoded(transcripts: dict[str, list[str]]) -> None:
    """Refuse to score a configuration that decoded nothing (every transcript empty)."""
    empty = [config for config, texts in transcripts.items() if not any(t.strip() for t in texts)]
    if empty:
        raise BenchmarkError(
            f"{', '.join(empty)} decoded nothing: every transcript is empty, so no WER is "
            "reported. Check the run's model (does python -m recipes.transcribe RUN FILE give "
            "text?) and the export."
        )


def summarise(
    rows: list[dict], peaks: dict[str, int], wers: dict[str, dict], audio_s: float
) -> list[dict]:
    """One entry per configuration: median pass time, real-time factor, throughput, its
    ratio to ``merged``, peak memory and WER.

    Passes during which other tasks waited for a CPU (``cpu_stall`` above ``STALL_LIMIT``)
    are left out when the configuration has clean passes.

    Example
    -------
    >>> rows = [{"config": c, "seconds": s, "cpu_stall": 0.0} for c, s in
    ...         [("merged", 2.0), ("merged", 4.0), ("merged", 3.0), ("ct2-int8", 1.0)]]
    >>> peaks = {"merged": 2048, "ct2-int8": 1024}
    >>> wers = {"merged": {"all": 10.0}, "ct2-int8": {"all": 10.5}}
    >>> [(t["config"], t["rtf"], t["audio_s_per_s"], t["speedup"], t["peak_rss_mib"])
    ...  for t in summarise(rows, peaks, wers, audio_s=6.0)]
    [('merged', 0.5, 2.0, 1.0, 2.0), ('ct2-int8', 0.1667, 6.0, 3.0, 1.0)]
    """
    table = []
    for config, peak in peaks.items():
        runs = [r for r in rows if r["config"] == config]
        clean = [r for r in runs if r["cpu_stall"] <= STALL_LIMIT] or runs
        seconds = statistics.median(r["seconds"] for r in clean)
        table.append({
            "config": config, "seconds": seconds, "rtf": round(seconds / audio_s, 4),
            "audio_s_per_s": audio_s / seconds,
            "min_audio_s_per_s": audio_s / max(r["seconds"] for r in clean),
            "max_audio_s_per_s": audio_s / min(r["seconds"] for r in clean),
            "peak_rss_mib": peak / 1024, "wer": wers[config]["all"],
            "wer_by_manifest": {k: v for k, v in wers[config].items() if k != "all"},
            "runs": len(clean), "excluded": len(runs) - len(clean),
        })  # fmt: skip
    merged = next(t["audio_s_per_s"] for t in table if t["config"] == "merged")
    for entry in table:
        entry["speedup"] = round(entry["audio_s_per_s"] / merged, 4)
    return table


def same_as_merged(transcripts: dict[str, list[str]]) -> dict[str, int]:
    """How many files each configuration transcribes as ``merged`` does (normalised text).

    Example
    -------
    >>> same_as_merged({"merged": ["Hello.", "a b"], "ct2-int8": ["hello", "a c"]})
    {'merged': 2, 'ct2-int8': 1}
    """
    from recipes.text_normalization import normalize_text

    merged = [normalize_text(t) for t in transcripts["merged"]]
    return {
        config: sum(normalize_text(t) == m for t, m in zip(texts, merged, strict=True))
        for config, texts in transcripts.items()
    }


def verdict(table: list[dict]) -> dict[str, Any]:
    """int8 faster-whisper against merged PyTorch: throughput ratio and WER difference,
    each against the issue's target."""
    entry = {t["config"]: t for t in table}
    merged, int8 = entry["merged"], entry["ct2-int8"]
    speedup = int8["audio_s_per_s"] / merged["audio_s_per_s"]
    wer_points = int8["wer"] - merged["wer"]
    batched = entry["ct2-int8-batched"]
    return {
        "int8_batched_vs_merged_throughput": round(
            batched["audio_s_per_s"] / merged["audio_s_per_s"], 3
        ),
        "int8_batched_minus_merged_wer_points": round(batched["wer"] - merged["wer"], 2),
        "int8_vs_merged_throughput": round(speedup, 3),
        "speedup_target": TARGET_SPEEDUP,
        "speedup_met": speedup >= TARGET_SPEEDUP,
        "int8_minus_merged_wer_points": round(wer_points, 2),
        "wer_target_points": TARGET_WER_POINTS,
        "wer_met": abs(wer_points) <= TARGET_WER_POINTS,
    }


# ------------------------------------------------------------------ output
def markdown(table: list[dict]) -> str:
    """The summary as a markdown table."""
    manifests = list(table[0]["wer_by_manifest"])
    lines = [
        "| configuration | RTF | throughput (audio s/s) | vs merged | spread (audio s/s) "
        "| peak RSS (MiB) | WER (%) | "
        + " | ".join(f"WER {m} (%)" for m in manifests)
        + " | files as merged | runs |",
        "|---|---|---|---|---|---|---|" + "---|" * len(manifests) + "---|---|",
    ]
    for t in table:
        runs = f"{t['runs']}" + (f" (+{t['excluded']} left out)" if t["excluded"] else "")
        by_manifest = " | ".join(f"{t['wer_by_manifest'][m]:.2f}" for m in manifests)
        lines.append(
            f"| {t['config']} | {t['rtf']:.4f} | {t['audio_s_per_s']:.2f} | {t['speedup']:.2f}x "
            f"| {t['min_audio_s_per_s']:.2f}–{t['max_audio_s_per_s']:.2f} "
            f"| {t['peak_rss_mib']:.0f} | {t['wer']:.2f} | {by_manifest} "
            f"| {t.get('same_as_merged', '-')} | {runs} |"
        )
    return "\n".join(lines)


def verdict_text(checks: dict[str, Any]) -> str:
    """The issue's two targets, measured."""
    met = {True: "met", False: "NOT met"}
    return (
        f"int8 / merged throughput: {checks['int8_vs_merged_throughput']:.2f}x "
        f"(target >= {TARGET_SPEEDUP:g}x: {met[checks['speedup_met']]}); "
        f"WER int8 - merged: {checks['int8_minus_merged_wer_points']:+.2f} points "
        f"(target within {TARGET_WER_POINTS:g}: {met[checks['wer_met']]}); "
        f"batched int8 / merged: {checks['int8_batched_vs_merged_throughput']:.2f}x, "
        f"WER {checks['int8_batched_minus_merged_wer_points']:+.2f} points"
    )


def plot(table: list[dict], title: str, paths: Sequence[Path]) -> None:
    """Throughput and peak memory per configuration (WER in the labels), saved to ``paths``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{t['config']}\nWER {t['wer']:.1f}%" for t in table]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(9, 3.2), sharey=True)
    speed.barh(labels, [t["audio_s_per_s"] for t in table], color="#4c72b0")
    merged = next(t["audio_s_per_s"] for t in table if t["config"] == "merged")
    speed.axvline(TARGET_SPEEDUP * merged, color="#c44e52", ls="--", lw=1.0,
                  label=f"target: {TARGET_SPEEDUP:g}x merged")  # fmt: skip
    speed.set_xlabel("throughput (audio s per s)")
    speed.legend(loc="lower right", fontsize=7)
    speed.invert_yaxis()
    memory.barh(labels, [t["peak_rss_mib"] for t in table], color="#55a868")
    memory.set_xlabel("peak RSS of its process (MiB)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=80)
    plt.close(fig)


def model_name(base_source: str) -> str:
    """The figure's model name: the base model's folder name, as a file name.

    Example
    -------
    >>> model_name("/work/main/pretrained/whisper-tiny.en")
    'whisper-tiny.en'
    """
    return re.sub(r"[^\w.-]+", "_", Path(base_source).name) or "whisper"


def run_name(run: Path) -> str:
    """A run folder's name for the output folder: its path under ``results/``, joined.

    Example
    -------
    >>> run_name(Path("results/whisper-base/lora/noisy"))
    'whisper-base_lora_noisy'
    >>> run_name(Path("/elsewhere/my-run"))
    'my-run'
    """
    parts = run.resolve().parts
    if "results" in parts:
        below = parts[len(parts) - parts[::-1].index("results") :]
        if below:
            return "_".join(below)
    return run.resolve().name


# ------------------------------------------------------------------ the smoke run
def build_smoke(folder: Path) -> tuple[Path, list[Path]]:
    """A tiny random Whisper run with a LoRA (random non-zero weights) and two manifests
    of three short synthetic recordings: the whole benchmark in seconds, for tests."""
    import numpy as np
    import soundfile
    import torch

    import adapters
    from recipes.inference import whisper_inference_folder
    from recipes.whisper.model import WindowedWhisper
    from recipes.whisper.random_init import save_random_whisper

    folder.mkdir(parents=True, exist_ok=True)
    base = Path(save_random_whisper(folder / "base")).resolve()
    torch.manual_seed(0)
    whisper = WindowedWhisper(str(base), str(folder / "hub"))
    adapted = adapters.AdaptedModel(
        whisper, adapters.LoRA, all_linear=True, adapter_kwargs={"rank": 4}
    )
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in adapted.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    adapter_file = folder / "adapter.safetensors"
    adapted.save_adapter(str(adapter_file))
    run = folder / "run"
    # 30 tokens per window (a random model never stops): seconds per pass, not minutes
    values = {"base_source": str(base), "max_decode_ratio": 0.02}
    whisper_inference_folder(
        run / "inference", values, adapted, {"adapter.ckpt": adapter_file}, overwrite=True
    )
    rng = np.random.default_rng(0)
    texts = ["press one for sales", "hello world", "the quick brown fox"]
    manifests = {"smoke_a": [0, 1], "smoke_b": [2]}
    for index, text in enumerate(texts):
        seconds = 1.0 + 0.5 * index
        t = np.arange(int(seconds * 16000)) / 16000
        audio = 0.3 * np.sin(2 * np.pi * (180 + 60 * index) * t) + 0.05 * rng.standard_normal(
            t.size
        )
        soundfile.write(folder / f"utt{index}.wav", audio.astype("float32"), 16000)
    paths = []
    for name, indices in manifests.items():
        path = folder / f"{name}.csv"
        with open(path, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["ID", "duration", "wav", "spk_id", "wrd"])
            for i in indices:
                writer.writerow([f"utt{i}", 1.0 + 0.5 * i, f"$data_root/utt{i}.wav", "spk0",
                                 texts[i].upper()])  # fmt: skip
        paths.append(path)
    return run, paths


# ------------------------------------------------------------------ driver
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default=DEFAULT_RUN,
                        help="a finished Whisper adapter run (results/whisper-base/lora/noisy "
                        "for base)")  # fmt: skip
    parser.add_argument("--manifests", nargs="+", default=list(DEFAULT_MANIFESTS),
                        help="real-speech manifests (ID,duration,wav,spk_id,wrd)")  # fmt: skip
    parser.add_argument("--repeats", type=int, default=3, help="timed passes per configuration")
    parser.add_argument("--threads", type=int, default=2,
                        help="threads of every configuration (torch, CTranslate2's cpu_threads)")  # fmt: skip
    parser.add_argument("--batch-size", type=int, default=8, help="PyTorch path: windows a batch")
    parser.add_argument("--pad", choices=("audio", "features"), default="audio",
                        help="CTranslate2 rows: pad a short clip's audio to the 30 s window "
                        "(as Whisper and our path do) or its features (faster-whisper's "
                        "default)")  # fmt: skip
    parser.add_argument("--limit", type=int, default=None,
                        help="the first N recordings of each manifest (default: all)")  # fmt: skip
    parser.add_argument("--output-dir", default=None,
                        help="default: results/benchmarks/deploy_speed/<run name>")  # fmt: skip
    parser.add_argument("--figure", action="store_true",
                        help="also draw docs/figures/deploy_speed_<model>.png")  # fmt: skip
    parser.add_argument("--smoke", action="store_true",
                        help="a tiny random Whisper run on three synthetic files (for tests)")  # fmt: skip
    args = parser.parse_args(argv)
    for name in ("repeats", "threads", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.limit is not None and args.limit < 1:
        parser.error("--limit must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> dict:
    args = parse_args(argv)
    started = time.time()
    if args.smoke:
        out = Path(args.output_dir or "results/benchmarks/deploy_speed/smoke")
        run, manifests = build_smoke(out / "smoke")
    else:
        run, manifests = Path(args.run), [Path(m) for m in args.manifests]
        out = Path(args.output_dir or f"results/benchmarks/deploy_speed/{run_name(run)}")
    inference = check_run(run)
    recordings = read_manifests(manifests, args.limit)
    settings = run_settings(inference)
    audio_s = sum(r.seconds for r in recordings)
    print(f"{len(recordings)} recordings, {audio_s:.1f} s of audio; {run}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    spec = {**settings, "run": str(run), "recordings": recordings, "threads": args.threads,
            "batch_size": args.batch_size, "pad": args.pad}  # fmt: skip
    quantizations = list(CTRANSLATE2.values())
    transcripts, rows, peaks = measure(
        spec, args.repeats, lambda: export_ctranslate2(run, out, quantizations)
    )
    check_decoded(transcripts)
    wers = {config: score(recordings, texts) for config, texts in transcripts.items()}
    table = summarise(rows, peaks, wers, audio_s)
    same = same_as_merged(transcripts)
    for entry in table:
        entry["same_as_merged"] = same[entry["config"]]
    checks = verdict(table)
    import torch

    meta = {"run": str(run), "base": settings["base_source"], "smoke": args.smoke,
            "manifests": [str(m) for m in manifests], "recordings": len(recordings),
            "audio_s": round(audio_s, 2), "limit": args.limit, "repeats": args.repeats,
            "threads": args.threads, "batch_size": args.batch_size, "pad": args.pad,
            "window_s": settings["window_s"], "max_tokens_per_window": settings["max_tokens"],
            "memory": "VmHWM (peak resident set) of each configuration's own spawned process",
            "cpus": os.cpu_count(), "torch": torch.__version__,
            "ctranslate2": version("ctranslate2"), "faster_whisper": version("faster-whisper"),
            "seconds": round(time.time() - started, 1)}  # fmt: skip
    data = {"meta": meta, "checks": checks, "summary": table, "runs": rows,
            "recordings": [asdict(r) for r in recordings],
            "transcripts": transcripts}  # fmt: skip
    model = model_name(settings["base_source"])
    figures = [ROOT / "docs" / "figures" / f"deploy_speed_{model}.png"] if args.figure else []
    title = f"{model}, {run_name(run)}: {len(recordings)} files, {audio_s:.0f} s, {args.threads} threads"
    write_results(
        out, "results", data, markdown(table), lambda p: plot(table, title, [p, *figures])
    )
    print(verdict_text(checks))
    return data


if __name__ == "__main__":
    try:
        main()
    except BenchmarkError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)

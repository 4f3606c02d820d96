#!/usr/bin/env python3
"""The README's figures, drawn from the benchmarks' JSON into ``docs/figures/``.

    python benchmarks/figures.py                        # results/benchmarks -> docs/figures
    python benchmarks/figures.py --results results/benchmarks --out docs/figures --runs results/whisper
    python benchmarks/figures.py --gaps results/study/tiny.en results/study/base   # gap_whisper.png only

Draws what exists, each figure a small PNG (at most 200 KB):

- ``quality_<recipe>.png``: WER on each target's test set against trainable
  parameters (log scale), one panel per target, from ``quality_<recipe>_<target>.json``
  (every configuration of the sweep, the unadapted model as a dashed line); and
  ``runs_<folder>.png``, the same from a recipe's run folders given with ``--runs``
  (``results/whisper``: the main jobs' runs, one panel per target);
- ``cost_<size>.png``: training step time and peak memory of each method relative
  to full fine-tuning and to the frozen-backward floor, with the range over
  repeats, from ``cost_<size>.json``; and the bf16/fp32 step ratio when measured;
  a run written to a sub-folder (``<folder>/cost_<size>.json``) gives
  ``cost_<size>_<folder>.png``;
- ``serving.png``: throughput of mixed-adapter batches and of switching adapters
  relative to one merged adapter, from ``serving.json``;
- ``gap_whisper.png``: each adapter's relative WER gap to full fine-tuning (mean of
  seeds) with its 95% paired bootstrap interval, per model and target, from the
  ``gaps`` of the quality JSON in each ``--gaps`` folder (one folder per model, e.g.
  ``results/study/tiny.en``), against the 5% target;
- ``curve_<recipe>_<target>.png``: validation WER after each epoch against training
  updates, one line per run of a multi-epoch sweep folder ``curve/quality_<recipe>_<target>/``
  (read from the runs' ``train_log.txt``; updates per epoch from ``--updates-per-epoch``).

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

LIMIT_BYTES = 200_000


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    _pyplot().close(fig)
    if path.stat().st_size > LIMIT_BYTES:
        raise SystemExit(f"{path} is {path.stat().st_size} bytes, over the {LIMIT_BYTES} limit")
    return path


def quality_figure(panels: list[tuple[str, list[dict]]], path: Path) -> Path:
    """Target-set WER against trainable parameters, one panel per (title, run summaries)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (title, rows) in zip(axes[0], panels, strict=True):
        runs = [r for r in rows if "target" in r.get("after", {})]
        for method in sorted({r["method"] for r in runs}):
            points = sorted(
                (r["trainable_params"], r["after"]["target"]["WER"])
                for r in runs
                if r["method"] == method
            )
            ax.plot(*zip(*points, strict=True), marker="o", ls="-" if len(points) > 1 else "",
                    label=method)  # fmt: skip
        before = next(
            (r["before"]["target"]["WER"] for r in runs if "target" in r.get("before", {})), None
        )
        if before is not None:
            ax.axhline(before, color="grey", ls="--", lw=0.8, label="no adaptation")
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters")
        ax.set_ylabel("target WER (%)")
        ax.set_title(title)
        ax.legend(fontsize=7)
    return _save(fig, path)


def recipe_panels(folder: Path) -> list[tuple[str, list[dict]]]:
    """``(target, summaries)`` of a recipe's runs ``<folder>/<method>/<target>/summary.json``."""
    by_target: dict[str, list[dict]] = {}
    for path in sorted(folder.glob("*/*/summary.json")):
        summary = json.loads(path.read_text())
        by_target.setdefault(summary.get("target") or path.parent.name, []).append(summary)
    return [(f"{folder.name}: {target}", rows) for target, rows in by_target.items()]


def cost_figure(file: Path, path: Path) -> Path:
    """Step time and peak memory against full fine-tuning and the floor, with ranges."""
    plt = _pyplot()
    data = json.loads(file.read_text())
    table = data["summary"]
    panels = [("step_ratio", "step / full fine-tuning"), ("floor_step_ratio", "step / floor"),
              ("memory_ratio", "peak memory / full"), ("floor_memory_ratio", "peak memory / floor")]  # fmt: skip
    if any("bf16_ratio" in t for t in table):
        panels.append(("bf16_ratio", "bf16 step / fp32 step"))
    panels = [(key, title) for key, title in panels if any(key in t for t in table)]
    fig, axes = plt.subplots(1, len(panels), figsize=(2.9 * len(panels) + 1.5, 0.32 * len(table) + 1.4),
                             sharey=True, squeeze=False)  # fmt: skip
    names = [t["method"] for t in table]
    for ax, (key, title) in zip(axes[0], panels, strict=True):
        values = [t.get(key, 0.0) for t in table]
        low = [v - t.get(f"{key}_range", [v, v])[0] for v, t in zip(values, table, strict=True)]
        high = [t.get(f"{key}_range", [v, v])[1] - v for v, t in zip(values, table, strict=True)]
        colors = ["#c44e52" if n == "floor" else "#4c72b0" for n in names]
        ax.barh(names, values, xerr=[low, high], color=colors, capsize=2)
        ax.axvline(1.0, color="k", lw=0.8)
        ax.set_title(title, fontsize=9)
        ax.invert_yaxis()
    meta = data.get("meta", {})
    fig.suptitle(f"training cost, {meta.get('size')} ({meta.get('device')}, "
                 f"{meta.get('repeats')} repeats; bars: median, lines: range)", fontsize=9)  # fmt: skip
    return _save(fig, path)


def serving_figure(file: Path, path: Path) -> Path:
    """Throughput of each serving configuration relative to one merged adapter."""
    plt = _pyplot()
    table = json.loads(file.read_text())["summary"]
    merged = next(t["utt_s"] for t in table if t["config"] == "merged")
    fig, ax = plt.subplots(figsize=(6, 0.3 * len(table) + 1.2))
    ratios = [t["ratio"] for t in table]
    low = [r - t["min_utt_s"] / merged for r, t in zip(ratios, table, strict=True)]
    high = [t["max_utt_s"] / merged - r for r, t in zip(ratios, table, strict=True)]
    ax.barh([t["config"] for t in table], ratios, xerr=[low, high], color="#4c72b0", capsize=2)
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_xlabel(f"throughput / one merged adapter ({merged:.2f} utt/s)")
    ax.invert_yaxis()
    return _save(fig, path)


def gap_figure(folders: list[Path], path: Path, target: float = 0.05) -> Path | None:
    """Relative WER gap to full fine-tuning with its interval, one row per model, target
    and adapter configuration (from the quality JSON's ``gaps``)."""
    rows = []
    for folder in folders:
        for file in sorted(folder.glob("quality_*.json")):
            data = json.loads(file.read_text())
            for gap in data.get("gaps", []):
                if gap["set"] == "target" and "gap" in gap:
                    label = f"{folder.name} {data['meta']['target']}: {gap['adapter']}"
                    rows.append((label, gap["gap"], gap["low"], gap["high"], gap["seeds"][0]))
    if not rows:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 0.45 * len(rows) + 1.4))
    labels = [f"{label} ({seeds} seeds)" for label, *_, seeds in rows]
    values = [100 * r[1] for r in rows]
    errors = [[100 * (r[1] - r[2]) for r in rows], [100 * (r[3] - r[1]) for r in rows]]
    ax.errorbar(values, labels, xerr=errors, fmt="o", color="#4c72b0", capsize=3)
    ax.axvline(0.0, color="k", lw=0.8)
    ax.axvline(100 * target, color="#c44e52", ls="--", lw=0.8, label=f"target: {target:.0%}")
    ax.set_xlabel("adapter WER / full WER - 1 (%); bars: 95% paired bootstrap")
    ax.invert_yaxis()
    ax.legend(fontsize=7)
    return _save(fig, path)


def epoch_curve(train_log: Path) -> list[tuple[int, float]]:
    """``(epoch, valid WER)`` of every epoch in a SpeechBrain ``train_log.txt``.

    Example
    -------
    >>> import tempfile
    >>> log = Path(tempfile.mkdtemp()) / "train_log.txt"
    >>> _ = log.write_text("epoch: 1, lr: 1e-3 - train loss: 1.1 - valid loss: 1.0, valid WER: 49.17\\n"
    ...                    "epoch: 2, lr: 9e-4 - train loss: 0.9 - valid loss: 0.9, valid WER: 44.5\\n")
    >>> epoch_curve(log)
    [(1, 49.17), (2, 44.5)]
    """
    import re

    pattern = re.compile(r"^epoch: (\d+),.*valid WER: ([-+.\deE]+)", re.MULTILINE)
    return [(int(e), float(w)) for e, w in pattern.findall(train_log.read_text())]


def curve_figure(folder: Path, path: Path, updates_per_epoch: int) -> Path:
    """Validation WER against training updates, one line per run folder."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for log in sorted(folder.glob("*/train_log.txt")):
        points = epoch_curve(log)
        if points:
            ax.plot([e * updates_per_epoch for e, _ in points], [w for _, w in points],
                    marker="o", label=log.parent.name)  # fmt: skip
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training updates")
    ax.set_ylabel("validation WER (%)")
    ax.set_title(folder.name.replace("quality_", ""))
    ax.legend(fontsize=7)
    return _save(fig, path)


def draw_all(
    results: Path,
    out: Path,
    updates_per_epoch: int = 50,
    runs: list[Path] | None = None,
    gaps: list[Path] | None = None,
) -> list[Path]:
    """Every figure whose JSON exists under ``results`` (and of the recipe run folders
    ``runs``, e.g. ``results/whisper``, and the quality studies ``gaps``); returns the
    PNGs written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if gaps and (figure := gap_figure(gaps, out / "gap_whisper.png")):
        written.append(figure)
    for recipe in ("whisper", "asr"):
        files = sorted(results.glob(f"quality_{recipe}_*.json"))
        panels = []
        for file in files:
            if not file.stem.endswith("_quick"):
                data = json.loads(file.read_text())
                meta = data.get("meta", {})
                panels.append((f"{recipe}: {meta.get('target', file.stem)}", data["runs"]))
        if panels:
            written.append(quality_figure(panels, out / f"quality_{recipe}.png"))
    for folder in runs or []:
        panels = recipe_panels(folder)
        if panels:
            written.append(quality_figure(panels, out / f"runs_{folder.name}.png"))
    for file in sorted([*results.glob("cost_*.json"), *results.glob("*/cost_*.json")]):
        kept_apart = file.parent != results  # e.g. --out results/benchmarks/bf16
        name = f"{file.stem}_{file.parent.name}" if kept_apart else file.stem
        written.append(cost_figure(file, out / f"{name}.png"))
    if (results / "serving.json").is_file():
        written.append(serving_figure(results / "serving.json", out / "serving.png"))
    for folder in sorted((results / "curve").glob("quality_*")):
        if any(folder.glob("*/train_log.txt")):
            name = f"curve_{folder.name.removeprefix('quality_')}.png"
            written.append(curve_figure(folder, out / name, updates_per_epoch))
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=None,
                        help="the benchmarks' JSON (default results/benchmarks; with --gaps "
                        "alone, only the gap figure is drawn)")  # fmt: skip
    parser.add_argument("--out", default="docs/figures")
    parser.add_argument("--updates-per-epoch", type=int, default=50,
                        help="of the learning-curve runs (Whisper's defaults: 400 / 8)")  # fmt: skip
    parser.add_argument("--runs", nargs="*", default=[],
                        help="recipe run folders to plot too (e.g. results/whisper)")  # fmt: skip
    parser.add_argument("--gaps", nargs="*", default=[],
                        help="quality-study folders, one per model (e.g. results/study/tiny.en)")  # fmt: skip
    args = parser.parse_args()
    gaps = [Path(g) for g in args.gaps]
    if args.results is None and gaps and not args.runs:  # the quality study's figure alone
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        figure = gap_figure(gaps, out / "gap_whisper.png")
        written = [figure] if figure else []
    else:
        results = Path(args.results or "results/benchmarks")
        written = draw_all(results, Path(args.out), args.updates_per_epoch,
                           [Path(r) for r in args.runs], gaps)  # fmt: skip
    if not written:
        where = args.results or ", ".join(args.gaps) or "results/benchmarks"
        raise SystemExit(f"No benchmark JSON under {where}: run the benchmarks first.")
    for path in written:
        print(f"{path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()

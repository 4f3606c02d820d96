#!/usr/bin/env python3
"""Print the results of recipe runs as a markdown table.

    python recipes/report.py results/whisper
    python recipes/report.py results/asr/lora results/asr/full --sets target source

Reads every ``summary.json`` below the given folder (written by the recipes'
``train.py``) and prints one row per run: method, trainable parameters,
training time, and for each test set its figure before -> after training: the
runs' selection metric (WER for ASR, with CER in the summaries; EER for speaker
verification, with minDCF). Test sets are those of the runs, in first-seen order.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _rate(result: dict | None, key: str = "WER", decimals: int = 1) -> str:
    if not result or key not in result:
        return "-"
    extra = [f"{k} {v:.3f}" for k, v in result.items() if k not in (key, "n", "CER")]
    return f"{result[key]:.{decimals}f}" + (f" ({', '.join(extra)})" if extra else "")


def test_set_names(summaries: list[dict]) -> list[str]:
    """Names of the test sets of the runs, in first-seen order."""
    names: dict[str, None] = {}
    for s in summaries:
        for when in ("before", "after"):
            names.update(dict.fromkeys(s.get(when, {})))
    return list(names)


def format_table(summaries: list[dict], sets: list[str] | None = None) -> str:
    """Render run summaries as a markdown table.

    Example
    -------
    >>> row = {"method": "lora", "trainable_params": 1000, "trainable_pct": 1.0,
    ...        "train_time_s": 12.0, "before": {"target": {"WER": 50.0, "CER": 20.0}},
    ...        "after": {"target": {"WER": 30.0, "CER": 10.0}, "source": {"WER": 5.0, "CER": 2.0}}}
    >>> print(format_table([row]))
    | method | trainable params | train time (s) | target WER before → after | source WER before → after |
    |---|---|---|---|---|
    | lora | 1,000 (1.00%) | 12 | 50.0 → 30.0 | - → 5.0 |
    """
    sets = test_set_names(summaries) if sets is None else sets
    targets = any(s.get("target") for s in summaries)
    header = ["method", *(["target"] if targets else []), "trainable params", "train time (s)"]
    metric = summaries[0].get("metric", "WER") if summaries else "WER"
    header += [f"{name} {metric} before → after" for name in sets]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        before, after = s.get("before", {}), s.get("after", {})
        cells = [
            s["method"],
            *([s.get("target") or "-"] if targets else []),
            f"{s['trainable_params']:,} ({s['trainable_pct']:.2f}%)",
            f"{s.get('train_time_s', 0):.0f}",
        ]
        key, places = s.get("metric", "WER"), s.get("table_decimals", 1)
        cells += [
            f"{_rate(before.get(n), key, places)} → {_rate(after.get(n), key, places)}"
            for n in sets
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", default=["results"], help="folders to search")
    parser.add_argument("--sets", nargs="*", help="test sets to show (default: all)")
    args = parser.parse_args()
    paths = sorted(p for folder in args.folders for p in Path(folder).rglob("summary.json"))
    if not paths:
        raise SystemExit(f"No summary.json below {' '.join(args.folders)}: run a recipe first.")
    order = {"pretrain": 0, "full": 1}
    summaries = [json.loads(p.read_text()) | {"path": str(p.parent)} for p in paths]
    summaries.sort(key=lambda s: (order.get(s["method"], 2), s["path"]))
    print(format_table(summaries, args.sets))


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Print the results of ASR runs as a markdown table.

    python recipes/asr/report.py results

Reads every ``summary.json`` below the given folder (written by
``recipes/asr/train.py``) and prints one row per run.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _fmt(result: dict | None, key: str) -> str:
    return f"{result[key]:.1f}" if result and key in result else "-"


def format_table(summaries: list[dict]) -> str:
    """Render run summaries as a markdown table.

    Example
    -------
    >>> row = {"method": "lora", "trainable_params": 1000, "trainable_pct": 1.0,
    ...        "train_time_s": 12.0, "before": {"target": {"WER": 50.0, "CER": 20.0}},
    ...        "after": {"target": {"WER": 30.0, "CER": 10.0}, "source": {"WER": 5.0, "CER": 2.0}}}
    >>> print(format_table([row]).splitlines()[2])
    | lora | 1,000 (1.00%) | 12 | 50.0 / 20.0 | 30.0 / 10.0 | - / - | 5.0 / 2.0 |
    """
    lines = [
        (
            "| method | trainable params | train time (s) | target WER/CER before | "
            "target WER/CER after | source WER/CER before | source WER/CER after |"
        ),
        "|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        before, after = s.get("before", {}), s.get("after", {})
        lines.append(
            f"| {s['method']} | {s['trainable_params']:,} ({s['trainable_pct']:.2f}%) | "
            f"{s.get('train_time_s', 0):.0f} | "
            f"{_fmt(before.get('target'), 'WER')} / {_fmt(before.get('target'), 'CER')} | "
            f"{_fmt(after.get('target'), 'WER')} / {_fmt(after.get('target'), 'CER')} | "
            f"{_fmt(before.get('source'), 'WER')} / {_fmt(before.get('source'), 'CER')} | "
            f"{_fmt(after.get('source'), 'WER')} / {_fmt(after.get('source'), 'CER')} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", nargs="?", default="results")
    args = parser.parse_args()
    paths = sorted(Path(args.folder).rglob("summary.json"))
    if not paths:
        raise SystemExit(f"No summary.json below {args.folder}: run a recipe first.")
    order = {"pretrain": 0, "full": 1}
    summaries = [json.loads(p.read_text()) | {"path": str(p.parent)} for p in paths]
    summaries.sort(key=lambda s: (order.get(s["method"], 2), s["path"]))
    print(format_table(summaries))


if __name__ == "__main__":
    main()

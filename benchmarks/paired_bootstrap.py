#!/usr/bin/env python3
"""How far an adapter is from full fine-tuning, with a paired bootstrap interval.

Both methods are scored on the same test utterances, so their difference is
resampled over utterances, in pairs: each resample draws utterances with
replacement and takes the relative WER difference ``WER_adapter / WER_full - 1``
on the same draw. Several seeds of a method are averaged per utterance first,
which gives the mean-of-seeds WER (every seed scores the same words).

Per-utterance errors come from the runs' SpeechBrain ``ErrorRateStats`` files,
``<run>/details/<set>_after.txt``::

    python benchmarks/paired_bootstrap.py \\
        --adapter results/study/quality_whisper_noisy/lora_r4_s{1234,1235,1236} \\
        --full results/study/quality_whisper_noisy/full_s{1234,1235,1236} --set target

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

_LINE = re.compile(r"^(\S+), %WER [-\d.]+ \[ (\d+) / (\d+),", re.MULTILINE)


def utterance_errors(details: str | Path) -> dict[str, tuple[int, int]]:
    """``{utterance ID: (word errors, reference words)}`` from an ``ErrorRateStats`` file.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "target_after.txt"
    >>> _ = path.write_text("%WER 50.00 [ 1 / 2, 0 ins, 0 del, 1 sub ]\\n===\\n"
    ...                     "utt-1, %WER 100.00 [ 1 / 1, 0 ins, 0 del, 1 sub ]\\n a \\n S \\n b \\n"
    ...                     "utt-2, %WER 0.00 [ 0 / 1, 0 ins, 0 del, 0 sub ]\\n")
    >>> utterance_errors(path)
    {'utt-1': (1, 1), 'utt-2': (0, 1)}
    """
    text = Path(details).read_text()
    found = {m[1]: (int(m[2]), int(m[3])) for m in _LINE.finditer(text)}
    if not found:
        raise ValueError(
            f"{details} lists no utterance (expected lines like 'ID, %WER x [ errors / words, "
            "...'): is it a SpeechBrain ErrorRateStats file of a finished run?"
        )
    return found


def seed_mean(runs: list[Path], test_set: str) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Utterance IDs, errors averaged over the runs (seeds), and reference words.

    Every run must have scored the same utterances with the same references; otherwise
    the comparison would not be paired, and this refuses it.
    """
    tables = [utterance_errors(Path(run) / "details" / f"{test_set}_after.txt") for run in runs]
    ids = sorted(tables[0])
    for run, table in zip(runs, tables, strict=True):
        if sorted(table) != ids or any(table[i][1] != tables[0][i][1] for i in ids):
            raise ValueError(
                f"{run} scored other utterances (or other references) on '{test_set}' than "
                f"{runs[0]}: the runs are not comparable; run them on the same test set."
            )
    errors = np.array([[t[i][0] for i in ids] for t in tables], dtype=float).mean(axis=0)
    words = np.array([tables[0][i][1] for i in ids], dtype=float)
    return ids, errors, words


def relative_gap(
    adapter_errors: np.ndarray,
    full_errors: np.ndarray,
    resamples: int = 10_000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float, float]:
    """``WER_adapter / WER_full - 1`` and its paired bootstrap interval (percentiles).

    The two arrays hold each utterance's errors (same utterances, same order); the
    reference words cancel in the ratio.

    Example
    -------
    >>> a = np.array([2.0, 1.0, 1.0, 0.0] * 50)
    >>> b = np.array([1.0, 1.0, 1.0, 1.0] * 50)
    >>> gap, low, high = relative_gap(a, b, resamples=2000)
    >>> gap, low < 0 < high
    (0.0, True)
    >>> relative_gap(b * 2, b)[0]
    1.0
    """
    if adapter_errors.shape != full_errors.shape or adapter_errors.ndim != 1:
        raise ValueError("relative_gap takes two 1-D arrays of the same utterances")
    if full_errors.sum() == 0:
        raise ValueError("full fine-tuning made no error: a relative gap is undefined")
    rng = np.random.default_rng(seed)
    n = len(adapter_errors)
    gaps = np.empty(resamples)
    for start in range(0, resamples, 1000):  # a thousand resamples at a time
        draw = rng.integers(0, n, size=(min(1000, resamples - start), n))
        full = full_errors[draw].sum(axis=1)
        gaps[start : start + len(draw)] = (
            adapter_errors[draw].sum(axis=1) / np.maximum(full, 1e-9) - 1
        )
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(gaps, [tail, 100 - tail])
    gap = adapter_errors.sum() / full_errors.sum() - 1
    return round(float(gap), 4), round(float(low), 4), round(float(high), 4)


def compare(
    adapter_runs: list[Path], full_runs: list[Path], test_set: str = "target", **kwargs
) -> dict:
    """Mean-of-seeds WER of each method on ``test_set`` and the paired relative gap.

    Returns ``{"utterances", "adapter_wer", "full_wer", "gap", "low", "high"}`` with WERs
    in percent and the gap as a fraction (0.05 = the adapter is 5% relative behind).
    """
    ids_a, errors_a, words = seed_mean(adapter_runs, test_set)
    ids_f, errors_f, words_f = seed_mean(full_runs, test_set)
    if ids_a != ids_f or not np.array_equal(words, words_f):
        raise ValueError(
            f"The adapter runs ({adapter_runs[0]}) and the full runs ({full_runs[0]}) scored "
            f"different utterances on '{test_set}': a paired comparison needs the same test set."
        )
    gap, low, high = relative_gap(errors_a, errors_f, **kwargs)
    return {
        "utterances": len(ids_a),
        "adapter_wer": round(100 * errors_a.sum() / words.sum(), 2),
        "full_wer": round(100 * errors_f.sum() / words.sum(), 2),
        "gap": gap,
        "low": low,
        "high": high,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--adapter", nargs="+", type=Path, required=True, help="run folders")
    parser.add_argument("--full", nargs="+", type=Path, required=True, help="run folders")
    parser.add_argument("--set", default="target", help="test set name (details/<set>_after.txt)")
    parser.add_argument("--resamples", type=int, default=10_000)
    args = parser.parse_args()
    try:
        result = compare(args.adapter, args.full, args.set, resamples=args.resamples)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    print(
        f"{result['utterances']} utterances; WER adapter {result['adapter_wer']:.2f} "
        f"({len(args.adapter)} runs), full {result['full_wer']:.2f} ({len(args.full)} runs); "
        f"adapter vs full: {100 * result['gap']:+.1f}% relative "
        f"(95% paired bootstrap: {100 * result['low']:+.1f}% to {100 * result['high']:+.1f}%)"
    )


if __name__ == "__main__":
    main()

"""Find the speech in recordings with what a run of ``recipes/vad/train.py`` trained.

    python -m recipes.segment results/vad/lora/noisy meeting.wav
    python -m recipes.segment results/vad/lora/noisy recordings/ calls.csv \\
        --output segments.csv --manifest speech.csv

RUN is a run folder or its ``inference/`` folder. AUDIO is files, folders (their audio
files, recursively) or CSV manifests (a ``wav`` column). Each recording is read by the
recipes' loader, scored chunk by chunk (32 ms) as the recipe's evaluation scored it, and
cut into speech segments with the run's threshold and Silero's smoothing (see
``hparams/inference/vad.yaml``; ``--threshold`` sets another). Writes one row per
segment (``ID, wav, start, end`` in seconds) to ``--output`` (``.csv`` or ``.jsonl``) or
standard output, and with ``--manifest`` one row per recording in the format the recipe
reads (``ID, duration, wav, speech`` with ``speech`` as ``START-END ...``), so detected
segments can label data for training. Outputs are written atomically; an existing one
is refused unless ``--overwrite``. A recording that cannot be read gets one error line;
the others are still segmented, and the exit status is 1.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from recipes.audio import AudioError, audio_inputs, check_audio
from recipes.inference import load_task_interface
from recipes.io import write_text
from recipes.vad.model import format_segments


@dataclass
class Recording:
    """One recording, its ID (its file name, unique among the inputs) and its segments."""

    path: Path
    uid: str
    duration: float = 0.0
    segments: list[tuple[float, float]] = field(default_factory=list)
    error: str | None = None


def unique_ids(paths: list[Path]) -> list[str]:
    """IDs from file names without suffix; names shared by several inputs get ``-2``, ``-3``.

    Example
    -------
    >>> unique_ids([Path("a/x.wav"), Path("b/x.flac"), Path("y.wav")])
    ['x', 'x-2', 'y']
    """
    seen: dict[str, int] = {}
    ids = []
    for path in paths:
        seen[path.stem] = seen.get(path.stem, 0) + 1
        ids.append(path.stem if seen[path.stem] == 1 else f"{path.stem}-{seen[path.stem]}")
    return ids


def segment_all(detector, recordings: list[Recording], threshold: float | None) -> list[str]:
    """Segment each recording in place; return one error line per recording that failed."""
    errors = []
    for item in tqdm(recordings, desc="segmenting", unit="file", file=sys.stderr, disable=None):
        try:
            item.duration = check_audio(str(item.path)).seconds
            found = detector.get_speech_segments(str(item.path), threshold=threshold)
            item.segments = [(round(float(a), 3), round(float(b), 3)) for a, b in found.tolist()]
        except (AudioError, OSError, RuntimeError, ValueError) as err:
            item.error = (str(err).splitlines() or [type(err).__name__])[0]
            errors.append(f"error: {item.path}: {item.error}")
    return errors


def segments_text(recordings: list[Recording], suffix: str) -> str:
    """One row per segment, as CSV or (``suffix`` ``.jsonl``) JSON lines."""
    rows = [
        {"ID": r.uid, "wav": str(r.path), "start": a, "end": b}
        for r in recordings
        if r.error is None
        for a, b in r.segments
    ]
    if suffix == ".jsonl":
        return "".join(json.dumps(row) + "\n" for row in rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["ID", "wav", "start", "end"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def manifest_text(recordings: list[Recording]) -> str:
    """The recordings as a manifest of the recipe (``ID, duration, wav, speech``)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["ID", "duration", "wav", "speech"])
    for r in recordings:
        if r.error is None:
            writer.writerow([r.uid, f"{r.duration:.3f}", str(r.path), format_segments(r.segments)])
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.segment", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("run", help="a VAD run's output folder (or its inference/ folder)")
    parser.add_argument("audio", nargs="+", help="audio files, folders or CSV manifests")
    parser.add_argument("--output", help="segments, one row each (.csv or .jsonl)")
    parser.add_argument("--manifest", help="a manifest with a speech column (.csv)")
    parser.add_argument("--threshold", type=float, help="speech probability (default: the run's)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.output and Path(args.output).suffix not in (".csv", ".jsonl"):
        parser.error("--output must end in .csv or .jsonl")
    if args.manifest and Path(args.manifest).suffix != ".csv":
        parser.error("--manifest must end in .csv")
    for out in (args.output, args.manifest):
        if out and Path(out).exists() and not args.overwrite:
            parser.error(f"{out} exists: choose another name, or give --overwrite")
    try:
        paths = audio_inputs(args.audio)
        detector = load_task_interface(
            args.run, "SpeechDetector", "recipes/vad/train.py", args.device
        )
    except (ValueError, OSError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    recordings = [Recording(p, uid) for p, uid in zip(paths, unique_ids(paths))]
    errors = segment_all(detector, recordings, args.threshold)
    for line in errors:
        print(line, file=sys.stderr)
    text = segments_text(recordings, Path(args.output).suffix if args.output else ".csv")
    if args.output:
        write_text(args.output, text)
    else:
        sys.stdout.write(text)
    if args.manifest:
        write_text(args.manifest, manifest_text(recordings))
    found = sum(len(r.segments) for r in recordings)
    print(f"{found} speech segments in {len(recordings) - len(errors)} of {len(recordings)} "
          "recordings", file=sys.stderr)  # fmt: skip
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

"""Find the speech in recordings with what a run of ``recipes/vad/train.py`` trained.

    python -m recipes.segment results/vad/lora/noisy meeting.wav
    python -m recipes.segment results/vad/lora/noisy recordings/ calls.csv \\
        --output segments.csv --manifest speech.csv
    python -m recipes.segment adapter.safetensors meeting.wav --base silero.safetensors
    python -m recipes.segment results/vad/lora/noisy calls.csv \\
        --adapter phone=results/vad/lora/telephone/adapter.safetensors --adapter_column adapter

SOURCE is a run folder, its ``inference/`` folder, or an adapter file with ``--base``
(the base checkpoint it was trained on, or the folder of a run on that base: its
thresholds are then used). AUDIO is files, folders (their audio
files, recursively) or CSV manifests (a ``wav`` column). Each recording is read by the
recipes' loader, scored chunk by chunk (32 ms) as the recipe's evaluation scored it
(``--batch_size`` recordings at once, padded: the model is causal, so padding changes
no chunk of a recording), and
cut into speech segments with the run's threshold and Silero's smoothing (see
``hparams/inference/vad.yaml``; ``--threshold`` sets another). Writes one row per
segment (``ID, wav, start, end`` in seconds) to ``--output`` (``.csv`` or ``.jsonl``) or
standard output, and with ``--manifest`` one row per recording in the format the recipe
reads (``ID, duration, wav, speech`` with ``speech`` as ``START-END ...``), so detected
segments can label data for training. Outputs are written atomically; an existing one
is refused unless ``--overwrite``. A recording that cannot be read gets one error line;
the others are still segmented, and the exit status is 1.

``--adapter NAME=PATH`` (repeatable) loads adapter sets onto the base; a manifest's
``--adapter_column`` chooses one per recording, ``--adapter NAME`` the one the others
use (``default``: the source's own adapter, ``none``: the base model). A batch whose
recordings chose different sets runs as one mixed batch (see :mod:`recipes.adapter_sets`).
A recording that chose a set that is not loaded gets one error line.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from recipes.adapter_sets import (
    adapted_model_of,
    add_source_arguments,
    assign_adapters,
    batches,
    can_mix,
    inputs_with_choices,
    load_adapter_sets,
    load_task_source,
)
from recipes.audio import AudioError, check_audio, load_audio
from recipes.io import write_text
from recipes.vad.model import CHUNK, format_segments

RECIPE = "recipes/vad/train.py"


@dataclass
class Recording:
    """One recording, its ID (its file name, unique among the inputs) and its segments."""

    path: Path
    uid: str
    duration: float = 0.0
    segments: list[tuple[float, float]] = field(default_factory=list)
    error: str | None = None
    adapter: str | None = None
    wav: torch.Tensor | None = field(default=None, repr=False)


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


def segment_all(
    detector, recordings: list[Recording], threshold: float | None, batch_size: int = 1
) -> list[str]:
    """Segment each recording in place, ``batch_size`` at a time, each with its adapter set
    (``Recording.adapter``; a recording with an error is skipped); return one error line
    per recording that failed."""
    for item in recordings:
        if item.error is None:
            try:
                item.duration = check_audio(str(item.path)).seconds
                item.wav = load_audio(str(item.path), detector.hparams.sample_rate)
            except (AudioError, OSError, RuntimeError, ValueError) as err:
                item.error = (str(err).splitlines() or [type(err).__name__])[0]
    adapted = adapted_model_of(detector)
    todo = [item for item in recordings if item.error is None]
    groups = batches(todo, batch_size, lambda item: item.adapter, can_mix(adapted))
    for group in tqdm(groups, desc="segmenting", unit="batch", file=sys.stderr, disable=None):
        try:
            _segment_batch(detector, group, threshold, adapted is not None)
        except (RuntimeError, ValueError):  # find the recording: each alone
            for item in group:
                try:
                    _segment_batch(detector, [item], threshold, adapted is not None)
                except (RuntimeError, ValueError) as err:
                    item.error = (str(err).splitlines() or [type(err).__name__])[0]
    for item in recordings:
        item.wav = None
    return [f"error: {r.path}: {r.error}" for r in recordings if r.error is not None]


def _segment_batch(detector, group: list[Recording], threshold: float | None, adapters: bool):
    """The segments of a batch of recordings: one padded pass, each row cut to its chunks."""
    padded = torch.nn.utils.rnn.pad_sequence([item.wav for item in group], batch_first=True)
    names = [item.adapter for item in group] if adapters else None
    probabilities = detector.get_speech_prob_chunk(padded, adapters=names)[:, :, 0].cpu()
    rate = detector.hparams.sample_rate
    for row, item in enumerate(group):
        chunks = -(-len(item.wav) // CHUNK)
        found = detector.segments_of(probabilities[row, :chunks], len(item.wav) / rate, threshold)
        item.segments = [(round(float(a), 3), round(float(b), 3)) for a, b in found.tolist()]


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
    add_source_arguments(parser)
    parser.add_argument("audio", nargs="+", help="audio files, folders or CSV manifests")
    parser.add_argument("--output", help="segments, one row each (.csv or .jsonl)")
    parser.add_argument("--manifest", help="a manifest with a speech column (.csv)")
    parser.add_argument("--threshold", type=float, help="speech probability (default: the run's)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--batch_size", type=int, default=8, help="recordings scored at once")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.output and Path(args.output).suffix not in (".csv", ".jsonl"):
        parser.error("--output must end in .csv or .jsonl")
    if args.manifest and Path(args.manifest).suffix != ".csv":
        parser.error("--manifest must end in .csv")
    for out in (args.output, args.manifest):
        if out and Path(out).exists() and not args.overwrite:
            parser.error(f"{out} exists: choose another name, or give --overwrite")
    with tempfile.TemporaryDirectory() as workdir:
        try:
            inputs = inputs_with_choices(args.audio, args.adapter_column)
            detector, own_file = load_task_source(
                args.source, args.base, "SpeechDetector", RECIPE, workdir, args.device
            )
            adapted = adapted_model_of(detector)
            default, failed = load_adapter_sets(adapted, args.adapter, own_file)
        except (ValueError, OSError, RuntimeError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    assign_adapters(inputs, adapted, default)
    paths = [item.path for item in inputs]
    recordings = [
        Recording(item.path, uid, error=item.error or None, adapter=item.adapter)
        for item, uid in zip(inputs, unique_ids(paths), strict=True)
    ]
    errors = segment_all(detector, recordings, args.threshold, args.batch_size)
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
    return 1 if errors or failed else 0


if __name__ == "__main__":
    sys.exit(main())

"""Speaker verification with what a run of ``recipes/speaker/train.py`` trained.

    python -m recipes.verify results/speaker/lora/telephone a.wav b.wav
    python -m recipes.verify results/speaker/lora/telephone \\
        --trials results/speaker/lora/telephone/trials/target.txt \\
        --audio-root data/corpus/telephone/test --output scores.csv
    python -m recipes.verify results/speaker/lora/telephone a.wav b.wav --adapter none
    python -m recipes.verify adapter.safetensors a.wav b.wav --base encoder.safetensors
    python -m recipes.verify results/speaker/lora/telephone a.wav b.wav \\
        --adapter noisy=results/speaker/lora/noisy/adapter.safetensors --adapter noisy

SOURCE is a run folder, its ``inference/`` folder, or an adapter file with ``--base``
(the base checkpoint it was trained on, or the folder of a run on that base: its
threshold is then used). With two files, prints their cosine
score and the decision at the threshold the run chose on its validation trials
(``--threshold`` sets another). With ``--trials``, reads a VoxCeleb-style list, one
trial a line: ``label enrol test`` (label 1: same speaker, 0: not) or ``enrol test``;
paths are relative to ``--audio-root`` (an utterance ID without suffix names ``ID.wav``, so
the lists a run writes under ``trials/`` work as they are). Each recording is embedded
once, ``--batch_size`` at a time. Writes one
row per trial (``enrol, test, score, same`` and ``label`` when given) to ``--output``
(``.csv`` or ``.jsonl``) or standard output, and with labels prints the list's equal
error rate. A recording that cannot be read gets one error line; the trials that do
not need it are still scored, and the exit status is 1.

``--adapter NAME=PATH`` (repeatable) loads adapter sets onto the base, ``--adapter NAME``
chooses the one every recording is embedded with (``default``: the source's own
adapter, ``none``: the base model; see :mod:`recipes.adapter_sets`). A set whose file
cannot be loaded gets one error line (exit status 1); choosing a set that is not
loaded is an error before any work (exit status 2).

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
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from recipes.adapter_sets import (
    adapted_model_of,
    add_source_arguments,
    batches,
    choice_error,
    load_adapter_sets,
    load_task_source,
)
from recipes.audio import AudioError
from recipes.inference import load_task_interface
from recipes.io import write_text

RECIPE = "recipes/speaker/train.py"


@dataclass
class Trial:
    """One pair to verify, its label if the list gives one, and its outcome."""

    enrol: str
    test: str
    label: int | None = None
    score: float | None = None
    same: bool | None = None


def read_trial_list(path: str | Path) -> list[Trial]:
    """``label enrol test`` or ``enrol test`` lines; a malformed line names itself.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "t.txt"
    >>> _ = path.write_text("1 a.wav b.wav\\n\\nc.wav d.wav\\n")
    >>> [(t.label, t.enrol, t.test) for t in read_trial_list(path)]
    [(1, 'a.wav', 'b.wav'), (None, 'c.wav', 'd.wav')]
    """
    trials = []
    for number, line in enumerate(Path(path).read_text().splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) == 3 and fields[0] in ("0", "1"):
            trials.append(Trial(fields[1], fields[2], int(fields[0])))
        elif len(fields) == 2:
            trials.append(Trial(fields[0], fields[1]))
        else:
            raise ValueError(
                f"Trial list {path}, line {number}: expected 'label enrol test' (label 0 or 1) "
                f"or 'enrol test', got {line.strip()!r}."
            )
    return trials


def load_verifier(run: str | Path, device: str = "cpu"):
    """The ``SpeakerVerifier`` of a speaker run (or its inference folder)."""
    return load_task_interface(run, "SpeakerVerifier", RECIPE, device)


def resolve_audio(root: Path, entry: str) -> Path:
    """The file a trial list names: ``root/entry``, or ``root/entry.wav`` when the list
    names utterance IDs (as the recipe's own lists do).

    Example
    -------
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "spk1-utt1.wav").write_bytes(b"")
    >>> resolve_audio(root, "spk1-utt1").name, resolve_audio(root, "x.flac").name
    ('spk1-utt1.wav', 'x.flac')
    """
    path = root / entry
    if not path.exists() and (root / f"{entry}.wav").exists():
        return root / f"{entry}.wav"
    return path


def score_trials(
    verifier,
    trials: list[Trial],
    root: Path,
    threshold: float,
    adapter: str | None = "default",
    batch_size: int = 8,
) -> list[str]:
    """Score ``trials`` in place (each recording embedded once, with the adapter set
    ``adapter``, None: the base model); return one error line per recording that could
    not be embedded (its trials keep no score)."""
    embeddings = embed_files(verifier, sorted({p for t in trials for p in (t.enrol, t.test)}),
                             root, adapter, batch_size)  # fmt: skip
    errors = [f"error: {root / path}: {e}" for path, e in embeddings.items() if isinstance(e, str)]
    for trial in trials:
        a, b = embeddings[trial.enrol], embeddings[trial.test]
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            trial.score = float(torch.nn.functional.cosine_similarity(a, b, dim=0))
            trial.same = trial.score > threshold
    return errors


def embed_files(
    verifier, paths: list[str], root: Path, adapter: str | None, batch_size: int
) -> dict[str, torch.Tensor | str]:
    """Each recording's embedding, or why it could not be embedded (one line)."""
    adapted = adapted_model_of(verifier)
    found: dict[str, torch.Tensor | str] = {}
    wavs: dict[str, torch.Tensor] = {}
    for path in paths:
        try:
            wavs[path] = verifier.load_audio(resolve_audio(root, path))
        except (AudioError, OSError, RuntimeError, ValueError) as err:
            found[path] = (str(err).splitlines() or [type(err).__name__])[0]
    names = None if adapted is None else [adapter]
    groups = batches(list(wavs), batch_size, lambda _: adapter, mixable=False)
    for group in tqdm(groups, desc="embedding", unit="batch", file=sys.stderr, disable=None):
        try:
            found.update(zip(group, _embed([wavs[p] for p in group], verifier, names), strict=True))
        except (RuntimeError, ValueError):  # find the recording: each alone
            for path in group:
                try:
                    found[path] = _embed([wavs[path]], verifier, names)[0]
                except (RuntimeError, ValueError) as err:
                    found[path] = (str(err).splitlines() or [type(err).__name__])[0]
    return found


def _embed(signals: list[torch.Tensor], verifier, names: list[str | None] | None) -> torch.Tensor:
    """The embeddings of recordings, in one padded batch, with the adapter set of ``names``."""
    lengths = torch.tensor([len(w) for w in signals], dtype=torch.float)
    padded = torch.nn.utils.rnn.pad_sequence(signals, batch_first=True)
    rows = None if names is None else names * len(signals)
    return verifier.encode_batch(padded, lengths / lengths.max(), adapters=rows)[:, 0].cpu()


def equal_error_rate(trials: list[Trial]) -> float | None:
    """EER (%) over the scored, labelled trials; None without both kinds."""
    from speechbrain.utils.metric_stats import EER

    scored = [t for t in trials if t.score is not None and t.label is not None]
    positive = torch.tensor([t.score for t in scored if t.label == 1])
    negative = torch.tensor([t.score for t in scored if t.label == 0])
    if len(positive) == 0 or len(negative) == 0:
        return None
    return 100.0 * float(EER(positive, negative)[0])


def rows_text(trials: list[Trial], suffix: str) -> str:
    """The trials as CSV (``suffix`` ``.csv``, also for standard output) or JSON lines."""
    labelled = any(t.label is not None for t in trials)
    keys = ["enrol", "test", "score", "same"] + (["label"] if labelled else [])
    rows = [
        {
            "enrol": t.enrol,
            "test": t.test,
            "score": None if t.score is None else round(t.score, 6),
            "same": t.same,
            **({"label": t.label} if labelled else {}),
        }
        for t in trials
    ]
    if suffix == ".jsonl":
        return "".join(json.dumps(row) + "\n" for row in rows)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.verify", description=__doc__.split("\n\n")[0]
    )
    add_source_arguments(parser, column=False)
    parser.add_argument("files", nargs="*", help="two recordings to compare")
    parser.add_argument("--trials", help="a trial list: 'label enrol test' or 'enrol test' lines")
    parser.add_argument("--audio-root", default=".", help="folder the trial list's paths are in")
    parser.add_argument("--output", help="write the scores here (.csv or .jsonl)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument("--threshold", type=float, help="decision threshold (default: the run's)")
    parser.add_argument("--batch_size", type=int, default=8, help="recordings embedded at once")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if bool(args.trials) == bool(args.files) or (args.files and len(args.files) != 2):
        parser.error("give two recordings, or --trials LIST")
    if args.output and Path(args.output).suffix not in (".csv", ".jsonl"):
        parser.error("--output must end in .csv or .jsonl")
    if args.output and Path(args.output).exists() and not args.overwrite:
        parser.error(f"{args.output} exists: choose another --output, or give --overwrite")
    with tempfile.TemporaryDirectory() as workdir:
        try:
            verifier, own_file = load_task_source(
                args.source, args.base, "SpeakerVerifier", RECIPE, workdir, args.device
            )
            adapted = adapted_model_of(verifier)
            adapter, failed = load_adapter_sets(adapted, args.adapter, own_file)
            if choice_error(adapted, adapter):
                raise ValueError(f"--adapter {adapter}: {choice_error(adapted, adapter)}")
            trials = [Trial(*args.files)] if args.files else read_trial_list(args.trials)
        except (ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    threshold = verifier.hparams.threshold if args.threshold is None else args.threshold
    root = Path(args.audio_root) if args.trials else Path(".")
    errors = score_trials(verifier, trials, root, threshold, adapter, args.batch_size)
    for line in errors:
        print(line, file=sys.stderr)
    text = rows_text(trials, Path(args.output).suffix if args.output else ".csv")
    if args.output:
        write_text(args.output, text)
        print(f"{len(trials)} trials scored into {args.output} (threshold {threshold:g})")
    else:
        sys.stdout.write(text)
    eer = equal_error_rate(trials)
    if eer is not None:
        print(f"EER {eer:.2f}% over {sum(t.score is not None for t in trials)} labelled trials")
    return 1 if errors or failed else 0


if __name__ == "__main__":
    sys.exit(main())

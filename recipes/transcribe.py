"""Transcribe audio with what a run trained: Whisper or the Conformer CTC, any adapter.

    python -m recipes.transcribe results/whisper/lora/noisy speech.wav more/*.wav
    python -m recipes.transcribe results/whisper/lora/noisy recordings/ --output out.csv
    python -m recipes.transcribe results/whisper/lora/noisy speech.wav --adapter none
    python -m recipes.transcribe adapter.safetensors speech.wav --base pretrained/whisper-tiny.en
    python -m recipes.transcribe results/whisper/lora/noisy calls.csv \\
        --adapter voices=results/whisper/lora/voices/adapter.safetensors --adapter_column adapter

SOURCE is a run folder, its ``inference/`` folder, or an adapter file with ``--base``
(a Whisper transformers folder, or a run/inference folder of the same base). AUDIO is
files, folders (searched for audio files) or CSV manifests (``ID``, ``wav`` and, for a
per-file adapter choice, the ``--adapter_column``). Audio goes through the recipes'
loader (resampled, downmixed); recordings longer than ``--chunk_s`` are cut into
windows whose transcripts are joined (see ``plan_windows``: evenly sized, each cut in
the quietest tenth of a second near its place, so no short tail and no cut through a
word where there is a pause). A file's ID is its name without extension, or its
manifest ``ID``; names that collide keep their extension, then their path. Text goes to
stdout as ``ID<TAB>text``; ``--output`` writes CSV or JSON lines. A file that cannot be
transcribed (unreadable or too short audio, an unknown adapter name, a model error on
it) gets one line on stderr; the others are still transcribed and written, and the exit
status is 1.

Several ``--adapter NAME=PATH`` load adapter sets onto one base (``--adapter NAME``
chooses the one files use unless their manifest row chooses); a batch whose files chose
different adapters runs as one mixed batch (``AdaptedModel.mixed_adapters``), see
:mod:`recipes.adapter_sets`. ``default`` names the source's own adapter, ``none`` the
base model.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import logging
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from recipes.adapter_sets import (
    adapted_model_of,
    adapter_spec,
    add_source_arguments,
    batches,
    can_mix,
    choice_error,
    load_adapter_sets,
    resolve_choice,
    using_adapters,
)
from recipes.audio import AUDIO_SUFFIXES, ShortAudioError, load_audio
from recipes.inference import load_inference, whisper_inference_folder

__all__ = ["Item", "adapted_model_of", "collect_items", "load_model", "main", "transcribe"]
logger = logging.getLogger(__name__)
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: A recording shorter than this holds no word; it is reported, not decoded.
MIN_AUDIO_S = 0.1
#: The shortest ``--chunk_s``: the windows of a long recording are at least a quarter of it.
MIN_CHUNK_S = 1.0
#: How far a cut between windows may move from its evenly spaced place (at most a
#: sixth of the window) to land in a pause.
CUT_SLACK_S = 5.0
#: A cut lands in the middle of the quietest stretch this long (a pause between words),
#: looked for every ``CUT_HOP_S``.
PAUSE_S = 0.1
CUT_HOP_S = 0.01


@dataclass
class Item:
    """One file to transcribe, its adapter choice, and what became of it."""

    id: str
    wav: str
    adapter: str | None = None
    reference: str = ""
    text: str = ""
    error: str = ""
    seconds: float = 0.0
    chunks: list[torch.Tensor] = field(default_factory=list, repr=False)
    #: More specific IDs to fall back on, in order, when this one is not unique.
    longer_ids: list[str] = field(default_factory=list, repr=False)


def _path_ids(path: Path, relative: Path | None = None) -> tuple[str, list[str]]:
    """A file's ID and its fallbacks: the name without extension, with it, then the path
    (relative to the folder it was found in, else as given)."""
    shown = (relative if relative is not None else path).as_posix()
    short = relative.with_suffix("").as_posix() if relative is not None else path.stem
    name = relative.as_posix() if relative is not None else path.name
    return short, [name, shown, str(path.resolve())]


def unique_ids(items: list[Item]) -> None:
    """Make the IDs of ``items`` unique, the same for the same inputs in the same order.

    Items that share an ID move to their next fallback together (``congrats.mp3`` and
    ``congrats.flac`` instead of two ``congrats``; then their paths) until they differ;
    IDs that still repeat (a file given twice, a manifest repeating an ID) get ``#2``,
    ``#3``... after the first.

    Example
    -------
    >>> paths = [Path("a/x.mp3"), Path("a/x.flac"), Path("y.wav")]
    >>> items = [Item(_path_ids(p)[0], str(p), longer_ids=_path_ids(p)[1]) for p in paths]
    >>> items.append(Item("y.wav", "other.wav"))  # a manifest's ID
    >>> unique_ids(items)
    >>> [item.id for item in items]
    ['x.mp3', 'x.flac', 'y', 'y.wav']
    """
    while True:
        seen: dict[str, list[Item]] = {}
        for item in items:
            seen.setdefault(item.id, []).append(item)
        clashing = [group for group in seen.values() if len(group) > 1]
        movable = [g for g in clashing if any(item.longer_ids for item in g)]
        if not movable:
            break
        for group in movable:
            for item in group:
                if item.longer_ids:
                    item.id = item.longer_ids.pop(0)
    taken = {item.id for item in items}
    counts: dict[str, int] = {}
    for item in items:
        counts[item.id] = counts.get(item.id, 0) + 1
        if counts[item.id] > 1:
            number = counts[item.id]
            while f"{item.id}#{number}" in taken:
                number += 1
            item.id = f"{item.id}#{number}"
            taken.add(item.id)


def collect_items(audio: list[str], adapter_column: str) -> list[Item]:
    """Files, folders (recursively) and CSV manifests, in the order given, with unique IDs."""
    items: list[Item] = []
    for entry in audio:
        path = Path(entry)
        if path.suffix.lower() == ".csv" and path.is_file():
            with open(path, encoding="utf-8-sig", newline="") as handle:
                rows = list(csv.DictReader(handle))
            if rows and "wav" not in rows[0]:
                raise ValueError(f"{path} has no 'wav' column: give one path per row in 'wav'.")
            for number, row in enumerate(rows, start=2):
                # $data_root and relative paths: the manifest's folder, from any working directory
                wav = row["wav"].replace("$data_root", str(path.parent.resolve()))
                wav = wav if Path(wav).is_absolute() else str(path.parent.resolve() / wav)
                choice = (row.get(adapter_column) or "").strip() or None
                uid = row.get("ID") or f"{path.stem}:{number}"
                items.append(Item(uid, wav, choice, reference=row.get("wrd") or ""))
        elif path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
            for file in found:
                uid, longer = _path_ids(file, file.relative_to(path))
                items.append(Item(uid, str(file), longer_ids=longer))
        else:
            uid, longer = _path_ids(path)
            items.append(Item(uid, str(path), longer_ids=longer))
    unique_ids(items)
    return items


def _whisper_folder_for(adapter_file: Path, base: Path, folder: Path) -> Path:
    """An inference folder for an adapter file on a Whisper transformers folder."""
    values = {"base_source": str(base.resolve())}
    spec = adapter_spec(adapter_file)
    return whisper_inference_folder(folder, values, spec, {"adapter.ckpt": adapter_file})


def load_model(
    source: str, base: str | None, device: str, workdir: str, window_s: float | None = None
):
    """The SpeechBrain interface for SOURCE (see the module docstring)."""
    path = Path(source)
    overrides = {} if window_s is None else {"eval_window_s": window_s}
    if path.is_file():
        if base is None:
            raise ValueError(
                f"{source} is an adapter file: name the base it was trained on with --base (a "
                "Whisper transformers folder, or a run folder of a run on that base)."
            )
        if (Path(base) / "config.json").is_file():
            folder = _whisper_folder_for(path, Path(base), Path(workdir) / "inference")
            return load_inference(folder, device, overrides), None
        return load_inference(base, device, overrides), path
    if not path.is_dir():
        raise FileNotFoundError(f"{source} is neither a run folder nor an adapter file.")
    return load_inference(path, device, overrides), None


def pause_power(signal: torch.Tensor, span: int, hop: int) -> torch.Tensor:
    """Mean power of ``signal[j * hop : j * hop + span]`` for every ``j`` that fits.

    Example
    -------
    >>> pause_power(torch.tensor([1.0, 1.0, 0.0, 0.0, 2.0]), span=2, hop=1)
    tensor([1.0000, 0.5000, 0.0000, 2.0000])
    """
    power = signal.float().square().view(1, 1, -1)
    return torch.nn.functional.avg_pool1d(power, span, hop).view(-1)


def _quietest(signal: torch.Tensor, target: int, radius: int, span: int, hop: int) -> int:
    """The sample within ``radius`` of ``target`` in the middle of the quietest ``span``
    samples (of stretches equally quiet, the one nearest ``target``).

    Example
    -------
    >>> signal = torch.ones(100)
    >>> signal[60:70] = 0.0
    >>> _quietest(signal, target=50, radius=20, span=4, hop=1)  # [60, 64) is the first quiet
    62
    >>> _quietest(signal, target=50, radius=5, span=4, hop=1)  # no pause near: the target
    50
    """
    start = max(0, target - radius - span // 2)
    piece = signal[start : min(signal.numel(), target + radius + span)]
    if piece.numel() < span:
        return target
    centres = start + span // 2 + hop * torch.arange((piece.numel() - span) // hop + 1)
    power = pause_power(piece, span, hop)
    near = (centres - target).abs() <= radius
    power, centres = power[near], centres[near]
    if not bool(near.any()) or bool(power.max() == power.min()):
        return target
    quiet = centres[power == power.min()]
    return int(quiet[(quiet - target).abs().argmin()])


def plan_windows(signal: torch.Tensor, rate: int, window_s: float) -> list[tuple[int, int]]:
    """Where to cut a recording into windows no longer than ``window_s``: ``(start, end)``.

    A recording that fits is one window. A longer one gets the fewest windows of at
    most ``window_s - slack`` (slack: ``CUT_SLACK_S``, at most a sixth of the window),
    cut evenly, and each cut then moves by at most half the slack to the middle of
    the quietest ``PAUSE_S`` around it, so that it falls in a pause, not in a word.
    Every window is at most ``window_s`` long and at least a quarter of it: no short
    tail is left to decode on its own (Whisper invents text for a fraction of a
    second of audio). Windows do not overlap, so no transcript has to be stitched.

    Example
    -------
    >>> rate = 100
    >>> [(a / rate, b / rate) for a, b in plan_windows(torch.ones(3028), rate, 30.0)]
    [(0.0, 15.14), (15.14, 30.28)]
    >>> speech = torch.ones(6000)  # 60 s: three windows of 20 s
    >>> speech[2150:2210] = 0.0  # a pause 1.5 s after the first even cut
    >>> plan_windows(speech, rate, 30.0)
    [(0, 2155), (2155, 4000), (4000, 6000)]
    """
    total, window = signal.numel(), int(window_s * rate)
    if total <= window:
        return [(0, total)]
    slack = min(int(CUT_SLACK_S * rate), window // 6)
    count = math.ceil(total / (window - slack))
    span, hop = max(1, int(PAUSE_S * rate)), max(1, int(CUT_HOP_S * rate))
    cuts = [0]
    cuts += [_quietest(signal, k * total // count, slack // 2, span, hop) for k in range(1, count)]
    cuts.append(total)
    return list(itertools.pairwise(cuts))


def _load_audio(item: Item, sample_rate: int, chunk_s: float) -> None:
    """Read ``item``'s recording into its windows (``item.chunks``); raise
    ``ShortAudioError`` for audio too short to hold a word."""
    signal = load_audio(item.wav, sample_rate)
    item.seconds = signal.numel() / sample_rate
    if item.seconds < MIN_AUDIO_S:
        raise ShortAudioError(
            f"it holds {item.seconds:.3f} s of audio, less than the {MIN_AUDIO_S} s a word "
            "needs: there is nothing to transcribe (check the file, or leave it out)."
        )
    item.chunks = [signal[a:b] for a, b in plan_windows(signal, sample_rate, chunk_s)]


def transcribe(asr, items: list[Item], batch_size: int, precision: str, chunk_s: float) -> None:
    """Fill in ``text`` (or ``error``) of every item, in batches of chunks."""
    from tqdm import tqdm

    adapted = adapted_model_of(asr)
    rate = asr.hparams.sample_rate
    for item in items:
        if item.error:
            continue
        try:
            _load_audio(item, rate, chunk_s)
        except ShortAudioError as err:  # readable, but empty or too short
            item.error = str(err)
        except Exception as err:  # noqa: BLE001 - a reader's failure is this file's, not the run's
            item.error = f"unreadable audio: {_one_line(err)}"
    chunks = [(item, i) for item in items if not item.error for i in range(len(item.chunks))]
    dtype = PRECISIONS[precision]
    pieces: dict[tuple[int, int], str] = {}
    groups = _batches(chunks, batch_size, mixable=can_mix(adapted))
    for batch in tqdm(groups, desc="transcribing", disable=len(groups) < 4 or None):
        try:
            texts = _decode(asr, adapted, batch, dtype)
        except Exception:  # noqa: BLE001 - find the file: each alone (transcripts do not change)
            texts = [_decode_alone(asr, adapted, chunk, dtype) for chunk in batch]
        for (item, i), text in zip(batch, texts, strict=True):
            if text is not None:
                pieces[id(item), i] = text
    for item in items:
        if not item.error:
            parts = [pieces[id(item), i].strip() for i in range(len(item.chunks))]
            item.text = " ".join(p for p in parts if p)
        item.chunks = []


def _decode(asr, adapted, batch: list[tuple[Item, int]], dtype: torch.dtype | None) -> list[str]:
    """The transcripts of a batch of windows, each with its file's adapter."""
    wavs = [item.chunks[i] for item, i in batch]
    lengths = torch.tensor([w.numel() for w in wavs], dtype=torch.float)
    padded = torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True)
    names = [item.adapter for item, _ in batch]
    autocast = torch.autocast(asr.device_type, dtype=dtype, enabled=dtype is not None)
    with torch.no_grad(), using_adapters(adapted, names), autocast:
        texts, _ = asr.transcribe_batch(padded, lengths / lengths.max())
    return [text if isinstance(text, str) else " ".join(text) for text in texts]


def _decode_alone(asr, adapted, chunk: tuple[Item, int], dtype: torch.dtype | None) -> str | None:
    """One window's transcript, or ``None`` with the error set on its file."""
    item, index = chunk
    if item.error:
        return None
    try:
        return _decode(asr, adapted, [chunk], dtype)[0]
    except Exception as err:  # noqa: BLE001 - this file's failure must not stop the others
        where = f" (window {index + 1} of {len(item.chunks)})" if len(item.chunks) > 1 else ""
        item.error = (
            f"the model failed on this file{where}: {type(err).__name__}: {_one_line(err)}; "
            "the other files were transcribed (check that it plays, e.g. with ffmpeg -i)."
        )
        return None


def _one_line(err: BaseException) -> str:
    """The first line of an error's message."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def _batches(chunks: list, size: int, mixable: bool) -> list[list]:
    """Batches of ``size`` chunks; without mixing, each batch holds one adapter's chunks."""
    return batches(chunks, size, lambda chunk: chunk[0].adapter, mixable)


def write_output(items: list[Item], path: str) -> None:
    """CSV or JSON lines, by the file's suffix, written whole or not at all."""
    from recipes.io import write_text

    rows = [
        {"ID": it.id, "wav": it.wav, "adapter": it.adapter or "none", "text": it.text,
         "seconds": round(it.seconds, 3), "error": it.error}
        for it in items
    ]  # fmt: skip
    if path.endswith(".jsonl"):
        write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
        return
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["ID"])
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.transcribe",
        description="Transcribe audio with a run's model (its adapters, or none).",
    )
    add_source_arguments(parser)
    parser.add_argument("audio", nargs="+", help="audio files, folders or CSV manifests")
    parser.add_argument("--output", help="write results to a .csv or .jsonl file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    parser.add_argument(
        "--compare", action="store_true",
        help="transcribe each file with the base model and with its adapter, side by side",
    )  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    parser.add_argument(
        "--window_s", type=float, default=None,
        help="Whisper: seconds of audio the encoder sees (default: the run's, or 30)",
    )  # fmt: skip
    parser.add_argument(
        "--chunk_s", type=float, default=None,
        help="audio longer than this is cut into chunks (default: Whisper's window, or 30 s)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.output and not args.output.endswith((".csv", ".jsonl")):
        parser.error("--output must end in .csv or .jsonl")
    if args.output and Path(args.output).exists() and not args.overwrite:
        parser.error(f"{args.output} exists: choose another --output, or give --overwrite")
    if args.chunk_s is not None and args.chunk_s < MIN_CHUNK_S:
        parser.error(f"--chunk_s must be at least {MIN_CHUNK_S:g} s (windows are cut in pauses)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    with tempfile.TemporaryDirectory() as workdir:
        try:
            asr, own_file = load_model(args.source, args.base, args.device, workdir, args.window_s)
            adapted = adapted_model_of(asr)
            default, failed = load_adapter_sets(adapted, args.adapter, own_file)
            items = collect_items(args.audio, args.adapter_column)
        except (ValueError, FileNotFoundError, KeyError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        if args.compare:  # each file twice: with the base model, then with its adapter
            items = [
                Item(it.id, it.wav, adapter, it.reference)
                for it in items
                for adapter in ("none", it.adapter)
            ]
        for item in items:
            item.adapter = resolve_choice(item.adapter, default)
            item.error = choice_error(adapted, item.adapter)
        window = getattr(asr.hparams, "eval_window_s", 30.0)
        chunk_s = min(args.chunk_s, window) if args.chunk_s else window
        transcribe(asr, items, args.batch_size, args.precision, chunk_s)
    if args.compare:
        _print_side_by_side(items)
    else:
        for item in items:
            if item.error:
                print(f"error: {item.id} ({item.wav}): {item.error}", file=sys.stderr)
            else:
                print(f"{item.id}\t{item.text}")
    if args.output:
        write_output(items, args.output)
    return 1 if failed or any(item.error for item in items) else 0


def _print_side_by_side(items: list[Item]) -> None:
    """Base and adapted transcripts of each file (pairs of items), with the reference."""
    for base, adapted in zip(items[::2], items[1::2], strict=True):
        print(f"{base.id}")
        if base.reference:
            print(f"  reference  {base.reference}")
        name = {None: "base", "default": "adapter"}.get(adapted.adapter, adapted.adapter)
        for label, item in (("base", base), (name, adapted)):
            text = f"error: {item.error}" if item.error else item.text
            print(f"  {label:<10} {text}")


if __name__ == "__main__":
    sys.exit(main())

"""Voice activity scenes: the corpus's utterances placed between silences and noise, with timelines.

A scene joins a few consecutive utterances of one domain and split (the same
texts, voices and settings as the ASR corpus) with pauses of 0.3-1.5 s between
them and 0.5-2 s before the first and after the last. Each utterance is
reverberated in its own room like the domain's; the domain's noise then covers
the whole scene, its SNR measured over the speech (so pauses hold noise only),
and telephone scenes go through the channel as a whole.

Labels come from the dry synthesis, before room and noise: 10 ms frames within
:data:`FLOOR_DB` of the utterance's loudest frame are speech, and pauses shorter
than :data:`BRIDGE_S` inside it count as speech (the pauses between words; a VAD
should not switch off there). They are written as segments in seconds,
``"0.512-1.873 2.100-3.450"``, in the ``speech`` column of
``{domain}_vad_{split}.csv`` (``ID,duration,wav,speech``).

Real recordings get the same treatment (:func:`prepare_real_scenes`): Asterisk
prompts, studio recordings with 50-90 ms of near silence (about -80 dBFS)
before and after the voice, are joined into scenes with the same pauses; their
labels come from the same energy rule applied to each clean recording. Two
versions are written: as recorded (pauses of digital silence) and degraded like
a target domain (its room, noise and channel), the labels unchanged.

Usage::

    python -m recipes.corpus.scenes --data-folder data/corpus --domain noisy --size tiny

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import logging
import os
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from . import augment, texts
from .prepare import (
    DOMAINS,
    SPLITS,
    Utterance,
    _prepare_split,
    _read_stamp,
    _Synthesizer,
    _wav_bytes,
    _write_atomic,
    _write_json,
    plan_corpus,
    plan_utterance,
    resolve_size,
    split_fingerprint,
)
from .tts import SAMPLE_RATE, ESpeak, espeak_version, to_pcm16

logger = logging.getLogger(__name__)

UTTERANCES_PER_SCENE = 3
EDGE_S = (0.5, 2.0)
"""Pause before the first and after the last utterance of a scene, in seconds."""
GAP_S = (0.3, 1.5)
"""Pause between utterances, in seconds."""
FRAME_S = 0.01
FLOOR_DB = 40.0
"""Frames more than this below the loudest frame of a recording are not speech."""
BRIDGE_S = 0.2
"""Pauses shorter than this inside speech are speech."""
LABEL_RULE = f"energy {FRAME_S}s frames, -{FLOOR_DB} dB from peak, pauses < {BRIDGE_S}s bridged"
SEGMENTS_SUFFIX = ".segments.json"
MANIFEST_COLUMNS = ("ID", "duration", "wav", "speech")


def speech_segments(
    audio: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    floor_db: float = FLOOR_DB,
    bridge_s: float = BRIDGE_S,
) -> list[tuple[float, float]]:
    """Speech segments ``(start_s, end_s)`` of a clean recording, by frame energy.

    Example
    -------
    >>> t = np.arange(16000) / 16000
    >>> audio = np.where((t > 0.25) & (t < 0.5), np.sin(2 * np.pi * 200 * t), 0.0)
    >>> speech_segments(audio)
    [(0.25, 0.5)]
    >>> audio[5000:5600] = 0.0  # a 37 ms pause inside: bridged
    >>> speech_segments(audio)
    [(0.25, 0.5)]
    """
    frame = round(FRAME_S * sample_rate)
    count = len(audio) // frame
    if count == 0:
        return []
    frames = np.asarray(audio[: count * frame], dtype=np.float64).reshape(count, frame)
    energy = 10 * np.log10(np.mean(frames**2, axis=1) + 1e-20)
    active = energy > energy.max() - floor_db
    if energy.max() <= -190:  # digital silence
        return []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], active.astype(np.int8), [0]])))
    runs = [[int(start), int(end)] for start, end in zip(edges[::2], edges[1::2])]
    merged = runs[:1]
    for start, end in runs[1:]:
        if (start - merged[-1][1]) * FRAME_S < bridge_s:
            merged[-1][1] = end
        else:
            merged.append([start, end])
    return [(round(s * FRAME_S, 3), round(e * FRAME_S, 3)) for s, e in merged]


def format_segments(segments: Sequence[tuple[float, float]]) -> str:
    """``"0.25-0.5 1.0-1.75"`` (the manifest's ``speech`` column).

    Example
    -------
    >>> format_segments([(0.25, 0.5), (1.0, 1.75)])
    '0.250-0.500 1.000-1.750'
    """
    return " ".join(f"{start:.3f}-{end:.3f}" for start, end in segments)


def parse_segments(text: str) -> list[tuple[float, float]]:
    """The segments of a ``speech`` column; raises ValueError on a malformed one.

    Example
    -------
    >>> parse_segments("0.250-0.500 1.000-1.750")
    [(0.25, 0.5), (1.0, 1.75)]
    >>> parse_segments("")
    []
    """
    segments = []
    for item in text.split():
        start, sep, end = item.partition("-")
        if not sep or float(end) < float(start):
            raise ValueError(f"malformed speech segment {item!r}: expected START-END in seconds")
        segments.append((float(start), float(end)))
    return segments


@dataclasses.dataclass(frozen=True)
class Scene:
    """Everything that determines one VAD scene.

    Attributes
    ----------
    uid : str
        ``{domain}_vad-{split}-{index:05d}``.
    domain, split : str
        ``{domain}_vad`` and the split of the utterances.
    utterances : tuple of Utterance
        What is spoken, in order, with its voice, room and noise settings.
    pauses_s : tuple of float
        Silence before each utterance, then after the last.
    labels : str
        The labelling rule (part of the fingerprint).
    """

    uid: str
    domain: str
    split: str
    utterances: tuple[Utterance, ...]
    pauses_s: tuple[float, ...]
    labels: str = LABEL_RULE

    @property
    def voices(self) -> tuple[str, ...]:
        return tuple(u.voice for u in self.utterances)


def draw_pauses(count: int, rng: np.random.Generator) -> tuple[float, ...]:
    """Pauses before ``count`` recordings and after the last (edges longer), in seconds."""
    inner = [round(float(rng.uniform(*GAP_S)), 2) for _ in range(count - 1)]
    first, last = (round(float(rng.uniform(*EDGE_S)), 2) for _ in range(2))
    return (first, *inner, last)


def plan_scenes(utterances: Sequence[Utterance], seed: int) -> list[Scene]:
    """Scenes of :data:`UTTERANCES_PER_SCENE` consecutive utterances (the last may be shorter).

    Example
    -------
    >>> us = [plan_utterance("noisy", "test", i, "HELLO", 1) for i in range(4)]
    >>> [(s.uid, len(s.utterances), len(s.pauses_s)) for s in plan_scenes(us, 1)]
    [('noisy_vad-test-00000', 3, 4), ('noisy_vad-test-00001', 1, 2)]
    """
    scenes = []
    for index, start in enumerate(range(0, len(utterances), UTTERANCES_PER_SCENE)):
        group = tuple(utterances[start : start + UTTERANCES_PER_SCENE])
        domain, split = f"{group[0].domain}_vad", group[0].split
        uid = f"{domain}-{split}-{index:05d}"
        rng = np.random.default_rng([zlib.crc32(f"{seed}-{uid}".encode()), 0])
        scenes.append(Scene(uid, domain, split, group, draw_pauses(len(group), rng)))
    return scenes


def join_recordings(
    recordings: Sequence[np.ndarray],
    segments: Sequence[Sequence[tuple[float, float]]],
    pauses_s: Sequence[float],
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Recordings placed after their pauses; their segments shifted to the joined timeline."""
    pieces, timeline, position = [], [], 0
    for recording, spans, pause in zip(recordings, segments, pauses_s):
        gap = round(pause * SAMPLE_RATE)
        pieces += [np.zeros(gap), np.asarray(recording, dtype=np.float64)]
        position += gap
        offset = position / SAMPLE_RATE
        timeline += [(round(s + offset, 3), round(e + offset, 3)) for s, e in spans]
        position += len(recording)
    pieces.append(np.zeros(round(pauses_s[-1] * SAMPLE_RATE)))
    return np.concatenate(pieces), timeline


def degrade(
    scene: np.ndarray,
    segments: Sequence[tuple[float, float]],
    settings: Utterance,
    rng: np.random.Generator,
) -> np.ndarray:
    """The domain's noise (SNR over the speech) and channel over a joined scene."""
    if settings.snr_db is not None:
        active = np.zeros(len(scene), dtype=bool)
        for start, end in segments:
            active[int(start * SAMPLE_RATE) : int(end * SAMPLE_RATE)] = True
        scene = augment.add_noise(scene, settings.snr_db, rng, settings.noise_color or "white",
                                  active=active)  # fmt: skip
    if settings.domain.startswith("telephone"):
        scene = augment.telephone_channel(scene, SAMPLE_RATE)
    return scene


def render_scene(engine: ESpeak, scene: Scene) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Synthesise a scene: ``int16`` samples and its speech segments (seconds)."""
    recordings, segments = [], []
    for u in scene.utterances:
        dry = engine.synthesize(u.text.lower() + ".", u.voice, u.rate, u.pitch, seed=u.seed)
        segments.append(speech_segments(dry))
        room = np.random.default_rng([u.seed, 1])
        recordings.append(augment.reverberate(dry, u.rt60, room) if u.rt60 else dry)
    audio, timeline = join_recordings(recordings, segments, scene.pauses_s)
    rng = np.random.default_rng([scene.utterances[0].seed, 2])
    audio = degrade(audio, timeline, scene.utterances[0], rng)
    return to_pcm16(augment.limit_peak(audio)), timeline


def _make_scene(engine: ESpeak, scene: Scene, path: Path) -> None:
    samples, timeline = render_scene(engine, scene)
    _write_atomic(path.with_name(path.stem + SEGMENTS_SUFFIX), json.dumps(timeline).encode())
    _write_atomic(path, _wav_bytes(samples))


def _scene_manifest(scenes: Sequence[Scene], frames: Sequence[int], wavs: Sequence[Path]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for scene, n, wav in zip(scenes, frames, wavs):
        timeline = json.loads(wav.with_name(wav.stem + SEGMENTS_SUFFIX).read_text())
        relative = f"$data_root/{scene.domain}/{scene.split}/{scene.uid}.wav"
        writer.writerow([scene.uid, f"{n / SAMPLE_RATE:.3f}", relative, format_segments(timeline)])
    return buffer.getvalue().encode()


def prepare_scenes(
    data_folder: str | os.PathLike,
    domain: str = "noisy",
    size: str | Mapping[str, Mapping[str, int]] = "default",
    seed: int = 1234,
    num_workers: int = 2,
    vocab_size: int = 2000,
    splits: Sequence[str] = SPLITS,
) -> dict[str, str]:
    """Write the VAD scenes of a domain's ``splits`` (resumable, skipped when up to date).

    The utterances are the ASR corpus's of the same ``size`` and ``seed``.

    Returns
    -------
    dict
        ``"{domain}_vad_{split}"`` -> manifest path (``ID,duration,wav,speech``).
    """
    if domain not in DOMAINS or not set(splits) <= set(SPLITS):
        raise ValueError(
            f"unknown domain {domain!r} or splits {splits}: choose from {DOMAINS}, {SPLITS}"
        )
    plan = plan_corpus(resolve_size(size), texts.load_sentences(vocab_size), seed)
    espeak = espeak_version()
    data_folder = Path(data_folder)
    manifests = {}
    synthesizer = _Synthesizer(num_workers, make=_make_scene)
    try:
        for split in splits:
            scenes = plan_scenes(plan[domain, split], seed)
            fingerprint = split_fingerprint(scenes, espeak)
            _prepare_split(data_folder, scenes, fingerprint, synthesizer, _scene_manifest)
            manifests[f"{domain}_vad_{split}"] = str(data_folder / f"{domain}_vad_{split}.csv")
    finally:
        synthesizer.close()
    return manifests


def prepare_real_scenes(
    data_folder: str | os.PathLike,
    manifest: str | os.PathLike,
    domain: str = "noisy",
    seed: int = 1234,
) -> dict[str, str]:
    """VAD scenes of real recordings (a manifest with ``ID``, ``wav``), as recorded and degraded.

    Recordings are taken in ID order, :data:`UTTERANCES_PER_SCENE` per scene;
    labels come from :func:`speech_segments` of each recording. Written under
    ``data_folder/real/vad``; returns ``{"<name>_vad": path, "<name>_vad_<domain>":
    path}`` where ``<name>`` is the manifest's file name without ``.csv``.
    Rewritten only when the inputs change (sizes and names of the recordings,
    domain, seed, rule).
    """
    from recipes.audio import load_audio

    data_folder, manifest = Path(data_folder), Path(manifest)
    with open(manifest, newline="") as handle:
        rows = sorted(csv.DictReader(handle), key=lambda row: row["ID"])
    for row in rows:  # paths relative to the manifest's folder, as the recipes read them
        row["wav"] = row["wav"].replace("$data_root", str(manifest.parent.absolute()))
    if not rows:
        raise ValueError(f"{manifest} lists no recording: nothing to build VAD scenes from.")
    name = manifest.stem
    folder = data_folder / "real" / "vad"
    outputs = {f"{name}_vad": data_folder / f"{name}_vad.csv",
               f"{name}_vad_{domain}": data_folder / f"{name}_vad_{domain}.csv"}  # fmt: skip
    config = {
        "recordings": [(row["ID"], os.path.getsize(row["wav"])) for row in rows],
        "domain": domain, "seed": seed, "labels": LABEL_RULE,
        "per_scene": UTTERANCES_PER_SCENE, "pauses": [EDGE_S, GAP_S],
    }  # fmt: skip
    config = json.loads(json.dumps(config))  # as read back from the stamp
    stamp_path = folder / f"{name}.json"
    stamp = _read_stamp(stamp_path)
    if stamp == config and all(path.is_file() for path in outputs.values()):
        return {key: str(path) for key, path in outputs.items()}
    folder.mkdir(parents=True, exist_ok=True)
    tables = {key: [] for key in outputs}
    for index, start in enumerate(range(0, len(rows), UTTERANCES_PER_SCENE)):
        group = rows[start : start + UTTERANCES_PER_SCENE]
        uid = f"{name}_vad-{index:05d}"
        recordings = [load_audio(row["wav"], SAMPLE_RATE).double().numpy() for row in group]
        segments = [speech_segments(recording) for recording in recordings]
        rng = np.random.default_rng([zlib.crc32(f"{seed}-{uid}".encode()), 0])
        audio, timeline = join_recordings(recordings, segments, draw_pauses(len(group), rng))
        settings = plan_utterance(domain, "real", index, "", seed)  # the domain's room and noise
        room = np.random.default_rng([settings.seed, 1])
        wet = augment.reverberate(audio, settings.rt60, room) if settings.rt60 else audio
        noisy = degrade(wet, timeline, settings, np.random.default_rng([settings.seed, 2]))
        for key, signal in ((f"{name}_vad", audio), (f"{name}_vad_{domain}", noisy)):
            path = folder / f"{uid}{key[len(name) + 4 :]}.wav"
            _write_atomic(path, _wav_bytes(to_pcm16(augment.limit_peak(signal))))
            tables[key].append(
                [uid, f"{len(signal) / SAMPLE_RATE:.3f}", str(path.absolute()),
                 format_segments(timeline)]
            )  # fmt: skip
    for key, path in outputs.items():
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerows([MANIFEST_COLUMNS, *tables[key]])
        _write_atomic(path, buffer.getvalue().encode())
    _write_json(stamp_path, config)
    logger.info(
        "VAD scenes of %d real recordings: %s", len(rows), ", ".join(map(str, outputs.values()))
    )
    return {key: str(path) for key, path in outputs.items()}


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point; see ``--help``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-folder", required=True, help="the corpus folder")
    parser.add_argument("--domain", default="noisy", choices=DOMAINS)
    parser.add_argument("--size", default="default", help="size preset of the corpus")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--real", help="a real-speech manifest (e.g. real_asterisk.csv) to add")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    manifests = prepare_scenes(args.data_folder, args.domain, args.size, args.seed,
                               args.num_workers)  # fmt: skip
    if args.real:
        manifests.update(prepare_real_scenes(args.data_folder, args.real, args.domain, args.seed))
    logger.info("manifests: %s", ", ".join(manifests.values()))


if __name__ == "__main__":
    main()

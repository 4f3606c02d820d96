"""Generate the synthetic domain-shift ASR corpus and its SpeechBrain manifests.

The corpus has a clean ``source`` domain and three target domains:

``source``
    Clean espeak-ng speech: accents en-us, en-gb and en-gb-x-rp with twenty voice
    variants, 140-185 words per minute, pitch 35-65.
``noisy``
    Source-style voices, reverberation (RT60 0.3-0.7 s) and white or pink noise
    at 5-15 dB SNR.
``voices``
    Held-out accents and voice variants, none of which occurs in ``source``.
``telephone``
    Source-style voices with mild noise (20-30 dB SNR) through a 300-3400 Hz,
    8 kHz mu-law telephone channel.

Every domain has ``train``, ``valid`` and ``test`` splits. Transcripts are WordNet
example sentences (see :mod:`recipes.corpus.texts`) dealt into six disjoint
pools: source train/valid/test and target train/valid/test, the target domains
sharing the target pools, so no sentence occurs in two splits.

Everything is derived from the global seed and each utterance's ID, so the
output is byte-identical across runs, worker counts and interrupted runs.

Layout under ``data_folder``::

    {domain}/{split}/{uid}.wav   16 kHz mono 16-bit audio
    {domain}/{split}/split.json  config fingerprint and statistics of the split
    {domain}_{split}.csv         manifest: ID,duration,wav,spk_id,wrd
    corpus.json                  versions, seed, sizes and statistics

Usage::

    python -m recipes.corpus.prepare --data-folder data/corpus --size tiny
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import functools
import hashlib
import importlib.metadata
import io
import json
import logging
import multiprocessing
import multiprocessing.pool
import os
import platform
import time
import wave
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import augment, texts
from .tts import SAMPLE_RATE, ESpeak, espeak_version, to_pcm16

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1
"""Bump whenever a code change alters the generated audio: it invalidates old splits."""

DOMAINS = ("source", "noisy", "voices", "telephone")
TARGET_DOMAINS = DOMAINS[1:]
SPLITS = ("train", "valid", "test")
MANIFEST_COLUMNS = ("ID", "duration", "wav", "spk_id", "wrd")

SIZES: dict[str, dict[str, dict[str, int]]] = {
    "tiny": {
        "source": {"train": 24, "valid": 8, "test": 8},
        "target": {"train": 12, "valid": 6, "test": 6},
    },
    "small": {
        "source": {"train": 600, "valid": 100, "test": 100},
        "target": {"train": 200, "valid": 50, "test": 100},
    },
    "default": {
        "source": {"train": 2400, "valid": 200, "test": 300},
        "target": {"train": 600, "valid": 100, "test": 300},
    },
}
"""Utterances per split: ``source`` for the source domain, ``target`` for each target domain."""

SOURCE_ACCENTS = ("en-us", "en-gb", "en-gb-x-rp")
SOURCE_VARIANTS = (
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4",
    "adam", "john", "linda", "max", "paul", "robert", "steph", "david", "edward",
)  # fmt: skip
HELD_OUT_ACCENTS = ("en-gb-scotland", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
HELD_OUT_VARIANTS = (
    "klatt", "klatt2", "klatt3", "klatt4", "whisper", "croak", "f5", "m8",
    "Annie", "Andy", "grandma", "grandpa", "belinda", "benjamin", "norbert", "quincy",
)  # fmt: skip
RATE_WPM = (140, 185)
PITCH = (35, 65)
NOISY_SNR_DB = (5.0, 15.0)
RT60_S = (0.3, 0.7)
TELEPHONE_SNR_DB = (20.0, 30.0)

STAMP_NAME = "split.json"
TEMP_SUFFIX = ".tmp"


@dataclasses.dataclass(frozen=True)
class Utterance:
    """Everything that determines one generated utterance.

    Attributes
    ----------
    uid : str
        Utterance ID, ``{domain}-{split}-{index:05d}``.
    domain, split : str
        Where the utterance belongs.
    text : str
        Normalised upper-case transcript.
    voice : str
        espeak-ng voice ``accent+variant``; also the speaker ID.
    rate, pitch : int
        Speaking rate (words per minute) and base pitch of espeak-ng.
    seed : int
        Per-utterance seed, from the global seed and ``uid``.
    snr_db : float or None
        SNR of the added noise, if any.
    noise_color : str or None
        ``"white"`` or ``"pink"``, if noise is added.
    rt60 : float or None
        Reverberation time in seconds, if reverberated.
    """

    uid: str
    domain: str
    split: str
    text: str
    voice: str
    rate: int
    pitch: int
    seed: int
    snr_db: float | None = None
    noise_color: str | None = None
    rt60: float | None = None


def resolve_size(size: str | Mapping[str, Mapping[str, int]]) -> dict[str, dict[str, int]]:
    """Validate a size preset name or an explicit ``{"source"|"target": {split: count}}`` dict.

    Parameters
    ----------
    size : str or Mapping
        A key of :data:`SIZES` or explicit counts.

    Returns
    -------
    dict
        Counts per group (``source``, ``target``) and split.
    """
    if isinstance(size, str):
        if size not in SIZES:
            raise ValueError(f"unknown size preset {size!r}; choose one of {sorted(SIZES)}")
        return {group: dict(counts) for group, counts in SIZES[size].items()}
    if set(size) != {"source", "target"}:
        raise ValueError(
            f"explicit sizes need exactly the keys 'source' and 'target', got {sorted(size)}"
        )
    resolved = {}
    for group, counts in size.items():
        if set(counts) != set(SPLITS) or not all(
            isinstance(n, int) and n > 0 for n in counts.values()
        ):
            raise ValueError(
                f"sizes[{group!r}] must map each of {SPLITS} to a positive int, got {dict(counts)}"
            )
        resolved[group] = {split: counts[split] for split in SPLITS}
    return resolved


def sentence_pools(
    sentences: Sequence[str], counts: Mapping[str, Mapping[str, int]], seed: int
) -> dict[tuple[str, str], list[str]]:
    """Deal shuffled sentences into the six disjoint pools.

    Parameters
    ----------
    sentences : Sequence of str
        Distinct candidate sentences.
    counts : Mapping
        Output of :func:`resolve_size`.
    seed : int
        Seed of the shuffle.

    Returns
    -------
    dict
        ``(group, split) -> sentences`` for groups ``source`` and ``target``.
    """
    needed = sum(n for group in counts.values() for n in group.values())
    if needed > len(sentences):
        raise ValueError(
            f"the corpus size needs {needed} distinct sentences but only {len(sentences)} are "
            "available; use a smaller size or a larger vocab_size"
        )
    order = np.random.default_rng(seed).permutation(len(sentences))
    pools, start = {}, 0
    for group in ("source", "target"):
        for split in SPLITS:
            stop = start + counts[group][split]
            pools[group, split] = [sentences[i] for i in order[start:stop]]
            start = stop
    return pools


def _uniform(rng: np.random.Generator, bounds: tuple[float, float], decimals: int) -> float:
    return round(float(rng.uniform(*bounds)), decimals)


def plan_utterance(domain: str, split: str, index: int, text: str, seed: int) -> Utterance:
    """Draw the voice and degradation settings of one utterance.

    Parameters
    ----------
    domain, split : str
        Where the utterance belongs.
    index : int
        Position in the split.
    text : str
        Transcript.
    seed : int
        Global seed.

    Returns
    -------
    Utterance
        The settings, a pure function of the arguments.
    """
    uid = f"{domain}-{split}-{index:05d}"
    utt_seed = zlib.crc32(f"{seed}-{uid}".encode())
    rng = np.random.default_rng([utt_seed, 0])
    accents, variants = (
        (HELD_OUT_ACCENTS, HELD_OUT_VARIANTS)
        if domain == "voices"
        else (SOURCE_ACCENTS, SOURCE_VARIANTS)
    )
    voice = f"{accents[rng.integers(len(accents))]}+{variants[rng.integers(len(variants))]}"
    rate = int(rng.integers(RATE_WPM[0], RATE_WPM[1] + 1))
    pitch = int(rng.integers(PITCH[0], PITCH[1] + 1))
    degradation: dict[str, float | str] = {}
    if domain == "noisy":
        degradation = {
            "snr_db": _uniform(rng, NOISY_SNR_DB, 2),
            "noise_color": "pink" if rng.random() < 0.5 else "white",
            "rt60": _uniform(rng, RT60_S, 3),
        }
    elif domain == "telephone":
        degradation = {"snr_db": _uniform(rng, TELEPHONE_SNR_DB, 2), "noise_color": "white"}
    return Utterance(uid, domain, split, text, voice, rate, pitch, utt_seed, **degradation)


def plan_corpus(
    counts: Mapping[str, Mapping[str, int]], sentences: Sequence[str], seed: int
) -> dict[tuple[str, str], list[Utterance]]:
    """Plan every utterance of every domain and split.

    Parameters
    ----------
    counts : Mapping
        Output of :func:`resolve_size`.
    sentences : Sequence of str
        Candidate sentences.
    seed : int
        Global seed.

    Returns
    -------
    dict
        ``(domain, split) -> utterances``.
    """
    pools = sentence_pools(sentences, counts, seed)
    plan = {}
    for domain in DOMAINS:
        group = "source" if domain == "source" else "target"
        for split in SPLITS:
            pool = pools[group, split]
            plan[domain, split] = [
                plan_utterance(domain, split, i, text, seed) for i, text in enumerate(pool)
            ]
    return plan


def render_utterance(engine: ESpeak, utterance: Utterance) -> np.ndarray:
    """Synthesise and degrade one utterance.

    Parameters
    ----------
    engine : ESpeak
        Synthesiser.
    utterance : Utterance
        Settings from :func:`plan_utterance`.

    Returns
    -------
    numpy.ndarray
        ``int16`` samples at 16 kHz.
    """
    audio = engine.synthesize(
        utterance.text.lower() + ".", utterance.voice, utterance.rate, utterance.pitch,
        seed=utterance.seed,
    )  # fmt: skip
    rng = np.random.default_rng([utterance.seed, 1])
    if utterance.rt60 is not None:
        audio = augment.reverberate(audio, utterance.rt60, rng, SAMPLE_RATE)
    if utterance.snr_db is not None:
        audio = augment.add_noise(audio, utterance.snr_db, rng, utterance.noise_color or "white")
    if utterance.domain.split("_")[0] == "telephone":  # also its clean references
        audio = augment.telephone_channel(audio, SAMPLE_RATE)
    return to_pcm16(augment.limit_peak(audio))


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file, so ``path`` is always complete."""
    temporary = path.with_name(path.name + TEMP_SUFFIX)
    temporary.write_bytes(data)
    os.replace(temporary, path)


def _wav_bytes(samples: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        wav.writeframes(samples.astype("<i2").tobytes())
    return buffer.getvalue()


def _wav_frames(path: Path) -> int:
    with wave.open(str(path), "rb") as wav:
        return wav.getnframes()


def _make_wav(engine: ESpeak, utterance: Utterance, path: Path) -> None:
    _write_atomic(path, _wav_bytes(render_utterance(engine, utterance)))


_worker_engine: ESpeak | None = None


def _init_worker() -> None:
    global _worker_engine
    _worker_engine = ESpeak()


def _make_in_worker(make: Callable[[ESpeak, Any, Path], None], job: tuple[Any, Path]) -> None:
    assert _worker_engine is not None, "worker not initialised"
    make(_worker_engine, *job)


class _Synthesizer:
    """Writes files, in-process or with a pool of workers created on first use.

    ``make(engine, item, path)`` writes one file (default: an utterance's wav); it
    must be a module-level function, so that workers can receive it.
    """

    def __init__(
        self, num_workers: int, make: Callable[[ESpeak, Any, Path], None] = _make_wav
    ) -> None:
        self.num_workers = num_workers
        self.make = make
        self._engine: ESpeak | None = None
        self._pool: multiprocessing.pool.Pool | None = None

    def run(self, jobs: list[tuple[Any, Path]]) -> None:
        if self.num_workers == 1:
            self._engine = self._engine or ESpeak()
            for item, path in jobs:
                self.make(self._engine, item, path)
            return
        if self._pool is None:
            self._pool = multiprocessing.Pool(self.num_workers, initializer=_init_worker)
        task = functools.partial(_make_in_worker, self.make)
        for _ in self._pool.imap_unordered(task, jobs, chunksize=4):
            pass

    def close(self) -> None:
        """Stop the workers (they are idle unless a job failed)."""
        if self._pool is not None:
            self._pool.terminate()
            self._pool.join()


def split_fingerprint(utterances: Sequence[Utterance], espeak: str) -> str:
    """Hash of everything that determines a split's files.

    Parameters
    ----------
    utterances : Sequence of Utterance
        The split's plan.
    espeak : str
        espeak-ng version.

    Returns
    -------
    str
        Hex SHA-256 digest.
    """
    config = {
        "generator": GENERATOR_VERSION,
        "espeak-ng": espeak,
        "utterances": [dataclasses.asdict(u) for u in utterances],
    }
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _read_stamp(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_json(path: Path, content: dict) -> None:
    _write_atomic(path, (json.dumps(content, indent=2, sort_keys=True) + "\n").encode())


def _manifest_bytes(
    utterances: Sequence[Utterance], frames: Sequence[int], wavs: Sequence[Path]
) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for utterance, n in zip(utterances, frames):
        wav = f"$data_root/{utterance.domain}/{utterance.split}/{utterance.uid}.wav"
        writer.writerow(
            [utterance.uid, f"{n / SAMPLE_RATE:.3f}", wav, utterance.voice, utterance.text]
        )
    return buffer.getvalue().encode()


def _prepare_split(
    data_folder: Path,
    utterances: Sequence[Any],
    fingerprint: str,
    synthesizer: _Synthesizer,
    manifest_bytes: Callable[[Sequence[Any], Sequence[int], Sequence[Path]], bytes] = (
        _manifest_bytes
    ),
) -> dict:
    """Generate a split's missing wavs and its manifest; returns the split's statistics.

    ``utterances`` are :class:`Utterance` or anything with ``uid``, ``domain``,
    ``split`` and ``voices`` (a recording of several utterances) that the
    synthesizer's ``make`` writes; files beside a wav named ``<uid>.*.json`` are
    its sidecars, written before it.
    """
    domain, split = utterances[0].domain, utterances[0].split
    name = f"{domain}/{split}"
    wav_dir = data_folder / domain / split
    manifest = data_folder / f"{domain}_{split}.csv"
    stamp_path = wav_dir / STAMP_NAME
    wavs = [wav_dir / f"{u.uid}.wav" for u in utterances]
    stamp = _read_stamp(stamp_path)
    current = stamp is not None and stamp.get("fingerprint") == fingerprint
    if current and "summary" in stamp and manifest.is_file() and all(p.is_file() for p in wavs):
        logger.info("%s: up to date (%d recordings)", name, len(utterances))
        return stamp["summary"]

    wav_dir.mkdir(parents=True, exist_ok=True)
    for stray in wav_dir.glob(f"*{TEMP_SUFFIX}"):  # left by an interrupted run
        stray.unlink()
    if not current:  # files of another configuration, or of unknown origin
        manifest.unlink(missing_ok=True)
        for old in [*wav_dir.glob("*.wav"), *wav_dir.glob("*.*.json")]:
            old.unlink()
        _write_json(stamp_path, {"fingerprint": fingerprint})
    jobs = [(u, p) for u, p in zip(utterances, wavs) if not p.is_file()]
    logger.info("%s: synthesising %d of %d utterances", name, len(jobs), len(utterances))
    start = time.perf_counter()
    synthesizer.run(jobs)
    seconds = time.perf_counter() - start

    frames = [_wav_frames(p) for p in wavs]
    _write_atomic(manifest, manifest_bytes(utterances, frames, wavs))
    voices = {v for u in utterances for v in getattr(u, "voices", None) or (u.voice,)}
    summary = {
        "manifest": manifest.name,
        "utterances": len(utterances),
        "hours": round(sum(frames) / SAMPLE_RATE / 3600, 4),
        "voices": sorted(voices),
    }
    _write_json(stamp_path, {"fingerprint": fingerprint, "summary": summary})
    logger.info(
        "%s: wrote %s (%d recordings, %.2f h) after %.1f s of synthesis",
        name, manifest.name, len(utterances), summary["hours"], seconds,
    )  # fmt: skip
    return summary


def _versions(espeak: str) -> dict[str, str]:
    return {
        "corpus_generator": str(GENERATOR_VERSION),
        "espeak-ng": espeak,
        "espeakng-loader": importlib.metadata.version("espeakng-loader"),
        "numpy": np.__version__,
        "scipy": importlib.metadata.version("scipy"),
        "python": platform.python_version(),
    }


def _domain_settings() -> dict[str, dict]:
    source_voices = {"accents": list(SOURCE_ACCENTS), "variants": list(SOURCE_VARIANTS)}
    speech = {"rate_wpm": list(RATE_WPM), "pitch": list(PITCH)}
    return {
        "source": {**source_voices, **speech},
        "noisy": {**source_voices, **speech, "snr_db": list(NOISY_SNR_DB), "rt60_s": list(RT60_S)},
        "voices": {"accents": list(HELD_OUT_ACCENTS), "variants": list(HELD_OUT_VARIANTS), **speech},
        "telephone": {
            **source_voices, **speech, "snr_db": list(TELEPHONE_SNR_DB),
            "band_hz": list(augment.TELEPHONE_BAND), "codec": "8 kHz 8-bit mu-law",
        },
    }  # fmt: skip


def prepare_corpus(
    data_folder: str | os.PathLike,
    size: str | Mapping[str, Mapping[str, int]] = "default",
    seed: int = 1234,
    domains: Iterable[str] | None = None,
    num_workers: int = 2,
    vocab_size: int = 2000,
) -> dict[str, str]:
    """Generate (or complete) the synthetic corpus and its manifests.

    Splits whose manifest exists and whose recorded fingerprint matches the
    current configuration are skipped; existing wav files of an unfinished
    split are reused, so an interrupted run resumes where it stopped.

    Parameters
    ----------
    data_folder : str or os.PathLike
        Output folder.
    size : str or Mapping
        A preset of :data:`SIZES` (``"tiny"``, ``"small"``, ``"default"``) or
        explicit counts ``{"source": {"train": n, "valid": n, "test": n},
        "target": {...}}``.
    seed : int
        Global seed: the same seed gives byte-identical files.
    domains : Iterable of str, optional
        Domains to generate (default: all of :data:`DOMAINS`). The selection
        does not change the content of the generated domains.
    num_workers : int
        Synthesis processes; the output does not depend on it.
    vocab_size : int
        Transcripts only use this many of WordNet's most frequent example words.

    Returns
    -------
    dict
        ``"{domain}_{split}"`` -> manifest path, for the generated domains.
        Load a manifest with ``DynamicItemDataset.from_csv(path,
        replacements={"data_root": data_folder})``.

    Raises
    ------
    FileNotFoundError
        If WordNet (Debian package ``wordnet-base``) is not installed.
    ValueError
        For an unknown domain or size, or if there are too few sentences.
    """
    selected = list(DOMAINS if domains is None else domains)
    unknown = sorted(set(selected) - set(DOMAINS))
    if unknown:
        raise ValueError(f"unknown domains {unknown}; choose from {DOMAINS}")
    if num_workers < 1:
        raise ValueError(f"num_workers must be at least 1, got {num_workers}")
    counts = resolve_size(size)
    sentences = texts.load_sentences(vocab_size)
    plan = plan_corpus(counts, sentences, seed)
    espeak = espeak_version()
    data_folder = Path(data_folder)
    data_folder.mkdir(parents=True, exist_ok=True)

    manifests, summaries = {}, {}
    synthesizer = _Synthesizer(num_workers)
    try:
        for (domain, split), utterances in plan.items():
            fingerprint = split_fingerprint(utterances, espeak)
            key = f"{domain}_{split}"
            if domain in selected:
                summaries[key] = _prepare_split(data_folder, utterances, fingerprint, synthesizer)
                manifests[key] = str(data_folder / f"{key}.csv")
            else:  # report splits generated earlier with the same configuration
                stamp = _read_stamp(data_folder / domain / split / STAMP_NAME)
                if stamp and stamp.get("fingerprint") == fingerprint and "summary" in stamp:
                    summaries[key] = stamp["summary"]
    finally:
        synthesizer.close()

    _write_json(
        data_folder / "corpus.json",
        {
            "versions": _versions(espeak),
            "seed": seed,
            "size": size if isinstance(size, str) else "custom",
            "counts": counts,
            "text_source": {
                "name": "WordNet 3.0 gloss examples (Debian package wordnet-base)",
                "path": str(texts.WORDNET_DIR),
                "vocab_size": vocab_size,
                "sentences_available": len(sentences),
            },
            "domains": _domain_settings(),
            "splits": summaries,
        },
    )
    return manifests


def clean_reference(utterance: Utterance) -> Utterance:
    """The same utterance without its added noise: what speech enhancement should output.

    Reverberation (same room response) and the telephone channel are kept; the
    reference lives in the domain ``<domain>_clean`` under the same ID.

    Example
    -------
    >>> u = plan_utterance("noisy", "test", 0, "HELLO", seed=1)
    >>> ref = clean_reference(u)
    >>> ref.domain, ref.uid == u.uid, ref.snr_db, ref.rt60 == u.rt60
    ('noisy_clean', True, None, True)
    """
    return dataclasses.replace(
        utterance, domain=f"{utterance.domain}_clean", snr_db=None, noise_color=None
    )


def prepare_references(
    data_folder: str | os.PathLike,
    domain: str = "noisy",
    size: str | Mapping[str, Mapping[str, int]] = "default",
    seed: int = 1234,
    num_workers: int = 2,
    vocab_size: int = 2000,
) -> dict[str, str]:
    """Clean references of a target domain's utterances (see :func:`clean_reference`).

    Written like the corpus itself (resumable, skipped when up to date), as
    ``<domain>_clean_<split>.csv`` with the IDs of ``<domain>_<split>.csv``: noisy
    and clean files pair by ID. The same ``size`` and ``seed`` as the corpus
    must be given, or the references belong to other utterances.

    Returns
    -------
    dict
        ``"{domain}_clean_{split}"`` -> manifest path.
    """
    if domain not in TARGET_DOMAINS:
        raise ValueError(
            f"references exist for the target domains {TARGET_DOMAINS}, not {domain!r}"
        )
    counts = resolve_size(size)
    plan = plan_corpus(counts, texts.load_sentences(vocab_size), seed)
    espeak = espeak_version()
    data_folder = Path(data_folder)
    manifests = {}
    synthesizer = _Synthesizer(num_workers)
    try:
        for split in SPLITS:
            references = [clean_reference(u) for u in plan[domain, split]]
            if not references:
                continue
            fingerprint = split_fingerprint(references, espeak)
            _prepare_split(data_folder, references, fingerprint, synthesizer)
            manifests[f"{domain}_clean_{split}"] = str(data_folder / f"{domain}_clean_{split}.csv")
    finally:
        synthesizer.close()
    return manifests


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point; see ``--help``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-folder", required=True, help="output folder")
    parser.add_argument("--size", default="default", choices=sorted(SIZES), help="size preset")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--domains", nargs="+", choices=DOMAINS, help="default: all")
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--vocab-size", type=int, default=2000)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    manifests = prepare_corpus(
        args.data_folder, args.size, args.seed, args.domains, args.num_workers, args.vocab_size
    )
    logger.info("manifests: %s", ", ".join(manifests.values()))


if __name__ == "__main__":
    main()

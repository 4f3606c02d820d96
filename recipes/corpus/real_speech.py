"""Manifests of real recorded English speech, for evaluating models beyond the synthetic corpus.

Two small, freely licensed sources are supported. Both are optional: an
unavailable source is skipped with a log message (or an error with
``required=True``).

``asterisk``
    The English prompts of the Asterisk PBX, recorded by one female speaker
    (Allison Smith; CC-BY-SA 3.0): 8 kHz mono 16-bit telephone prompts such
    as "Please enter your password followed by the pound key.". Audio comes
    from the Debian package ``asterisk-core-sounds-en-wav``
    (:data:`ASTERISK_SOUNDS`), transcripts from ``asterisk-core-sounds-en``
    (:data:`ASTERISK_TRANSCRIPTS`, lines ``name: transcript``). Dropped are
    comments (``;``), entries without a wav file, bracketed non-speech
    descriptions (``[ascending tones]``, ``(1 second of silence)``),
    transcripts with characters that cannot be spoken unambiguously (``*``,
    ``#``, ``@``, brackets; see :func:`is_speakable`) and transcripts shorter
    than ``min_words``. The IDs are ``asterisk-`` plus the prompt name with
    ``/`` replaced by ``-`` (``digits/1`` is ``asterisk-digits-1``).
``librivox``
    Five utterances of a LibriVox reading of *Sense and Sensibility* (public
    domain; 16 kHz mono), with lower-case transcripts, from the test data of
    the pocketsphinx source distribution (:data:`POCKETSPHINX_REQUIREMENT`,
    folder ``test/data/librivox``). The sdist is fetched with ``pip download``
    (or passed as ``sdist``) and only those wav and txt files are extracted,
    to ``{data_folder}/real/librivox/``.

Layout under ``data_folder``::

    real_asterisk.csv        manifest: ID,duration,wav,spk_id,wrd (absolute wav paths)
    real_librivox.csv        manifest, wav paths as $data_root/real/librivox/{id}.wav
    real/{source}.json       stamp: configuration and statistics of the manifest
    real/librivox/           the extracted LibriVox wav and txt files

The ``wrd`` column holds the transcript as written (cased and punctuated, runs
of whitespace collapsed), for scoring after :func:`recipes.text_normalization.normalize_text`.
A second call with the same arguments finds the stamp and redoes nothing; every
file is written to a temporary name first and then renamed.

Usage::

    python -m recipes.corpus.real_speech --data-folder data/corpus --max-asterisk 100

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import logging
import os
import re
import tarfile
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import NamedTuple, TypeVar

import soundfile

# Package-internal helpers of the synthetic-corpus preparation: atomic writes and JSON stamps.
from recipes.packages import PackageError, pip_download

from .prepare import MANIFEST_COLUMNS, _read_stamp, _write_atomic, _write_json

logger = logging.getLogger(__name__)

STAMP_VERSION = 1
"""Bump whenever a code change alters the manifests: it invalidates old stamps."""

SOURCES = ("asterisk", "librivox")
ASTERISK_SOUNDS = "/usr/share/asterisk/sounds/en_US_f_Allison"
"""Folder of the Asterisk prompts (``{name}.wav``), from ``asterisk-core-sounds-en-wav``."""
ASTERISK_TRANSCRIPTS = "/usr/share/doc/asterisk-core-sounds-en/core-sounds-en.txt.gz"
"""Prompt list ``name: transcript`` (gzip or plain text), from ``asterisk-core-sounds-en``."""
ASTERISK_SPEAKER = "allison"
POCKETSPHINX_REQUIREMENT = "pocketsphinx==5.1.1"
"""The source distribution holding the LibriVox test clips."""
LIBRIVOX_MEMBER_DIR = ("test", "data", "librivox")
"""Folder of the clips inside the sdist, below its top-level ``pocketsphinx-{version}/``."""
LIBRIVOX_FILEIDS = "fileids"

# Letters, digits, spaces and punctuation that is not read aloud.
_SPEAKABLE = re.compile(r"[A-Za-z0-9 .,;:!?'\"-]*[A-Za-z0-9][A-Za-z0-9 .,;:!?'\"-]*")
_NON_SPEECH = re.compile(r"[\[(<].*[\])>]")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")

T = TypeVar("T")


class Utterance(NamedTuple):
    """One manifest row before its duration is known.

    Attributes
    ----------
    uid : str
        Utterance ID.
    path : Path
        The wav file.
    wav : str
        The ``wav`` column: ``path`` or a ``$data_root`` form of it.
    spk_id : str
        Speaker ID.
    text : str
        Transcript, cased and punctuated.
    """

    uid: str
    path: Path
    wav: str
    spk_id: str
    text: str


class SourceUnavailableError(FileNotFoundError):
    """Raised, with ``required=True``, when a requested source cannot be prepared."""


def is_speakable(text: str) -> bool:
    """Whether a transcript has only letters, digits and punctuation that is not spoken.

    Symbols such as ``*``, ``#``, ``@``, ``$``, ``+``, ``/``, brackets and
    non-ASCII characters make the spoken words ambiguous ("star" or
    "asterisk"?), so such transcripts are not used.

    Parameters
    ----------
    text : str
        A transcript.

    Returns
    -------
    bool
        True if it has at least one letter or digit and only ASCII letters,
        digits, spaces and ``. , ; : ! ? ' " -``.

    Example
    -------
    >>> is_speakable("Please press 1, or hang up.")
    True
    >>> is_speakable("press * to toggle pause")
    False
    >>> is_speakable("...")
    False
    """
    return _SPEAKABLE.fullmatch(text) is not None


def read_asterisk_transcripts(path: str | os.PathLike[str]) -> dict[str, str]:
    """Read the Asterisk prompt list.

    Parameters
    ----------
    path : str or PathLike
        Text file, gzip-compressed if its name ends in ``.gz``, with lines
        ``name: transcript``; blank lines and lines starting with ``;`` are
        ignored, and so are lines without ``:``.

    Returns
    -------
    dict of str to str
        Prompt name (e.g. ``digits/1``) to transcript, stripped and with runs
        of whitespace collapsed, in file order; the first line of a repeated
        name wins.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     path = Path(folder) / "prompts.txt"
    ...     _ = path.write_text("; comment\\nagent-pass:  Please  enter. \\ndigits/1: one\\n")
    ...     read_asterisk_transcripts(path)
    {'agent-pass': 'Please enter.', 'digits/1': 'one'}
    """
    opener = gzip.open if str(path).endswith(".gz") else open
    transcripts: dict[str, str] = {}
    with opener(path, "rt", encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if not line.strip() or line.lstrip().startswith(";"):
                continue
            name, colon, text = line.partition(":")
            name = name.strip()
            if not colon or not name:
                continue
            if name in transcripts:
                logger.warning("%s: prompt %s is listed twice; keeping the first", path, name)
                continue
            transcripts[name] = " ".join(text.split())
    return transcripts


def _is_relative_name(name: str) -> bool:
    """Whether a prompt name stays inside the sounds folder (no ``..``, not absolute)."""
    posix = PurePosixPath(name)
    return not posix.is_absolute() and ".." not in posix.parts and "\\" not in name


def evenly_spaced(items: Sequence[T], count: int | None) -> list[T]:
    """Pick ``count`` items spread evenly over a sequence, deterministically.

    Parameters
    ----------
    items : Sequence
        The candidates, in a fixed order.
    count : int, optional
        How many to keep; None, or a count of at least ``len(items)``, keeps all.

    Returns
    -------
    list
        ``items[i * len(items) // count]`` for ``i`` in ``range(count)``.

    Example
    -------
    >>> evenly_spaced("abcdefghij", 3)
    ['a', 'd', 'g']
    >>> evenly_spaced([1, 2], 5)
    [1, 2]
    """
    if count is None or count >= len(items):
        return list(items)
    if count < 0:
        raise ValueError(f"count must not be negative, got {count}")
    return [items[i * len(items) // count] for i in range(count)]


def asterisk_utterances(
    sounds: str | os.PathLike[str],
    transcripts: str | os.PathLike[str],
    max_items: int | None = None,
    min_words: int = 1,
) -> tuple[list[Utterance], Counter[str]]:
    """Select the usable Asterisk prompts.

    Parameters
    ----------
    sounds : str or PathLike
        Folder of ``{name}.wav`` files (names may contain subfolders).
    transcripts : str or PathLike
        Prompt list, see :func:`read_asterisk_transcripts`.
    max_items : int, optional
        Keep at most this many: the usable prompts are sorted by name and
        :func:`evenly_spaced` ones are kept, so a subset covers all the
        prompt families (``digits/``, ``letters/``, ``vm-`` ...).
    min_words : int
        Drop transcripts with fewer whitespace-separated words.

    Returns
    -------
    list of Utterance
        The usable prompts, sorted by name.
    Counter
        How many prompts were dropped, per reason: ``non-speech``,
        ``symbols``, ``too-short``, ``missing-wav``, ``duplicate-id``.
    """
    sounds = Path(sounds).absolute()
    dropped: Counter[str] = Counter()
    utterances = {}
    for name, text in sorted(read_asterisk_transcripts(transcripts).items()):
        path = sounds / f"{name}.wav"
        uid = "asterisk-" + name.replace("/", "-")
        if _NON_SPEECH.fullmatch(text):
            dropped["non-speech"] += 1
        elif not is_speakable(text):
            dropped["symbols"] += 1
        elif len(text.split()) < min_words:
            dropped["too-short"] += 1
        elif not _is_relative_name(name) or not path.is_file():
            dropped["missing-wav"] += 1
        elif uid in utterances:
            dropped["duplicate-id"] += 1
        else:
            utterances[uid] = Utterance(uid, path, str(path), ASTERISK_SPEAKER, text)
    return evenly_spaced(list(utterances.values()), max_items), dropped


def extract_librivox(sdist: str | os.PathLike[str], target: str | os.PathLike[str]) -> list[str]:
    """Extract the LibriVox clips from a pocketsphinx source distribution.

    Only regular files directly in ``{top}/test/data/librivox/`` are
    considered, and of those only ``fileids`` and the ``{id}.wav`` and
    ``{id}.txt`` files of the IDs it lists. Each file is written to
    ``target/{basename}`` (names are checked against ``[A-Za-z0-9_.-]``), so
    no archive member can write outside ``target``; links and devices are
    ignored. ``fileids`` is written last and lists only the complete IDs.

    Parameters
    ----------
    sdist : str or PathLike
        The ``.tar.gz`` source distribution.
    target : str or PathLike
        Output folder, created if needed.

    Returns
    -------
    list of str
        The extracted utterance IDs.

    Raises
    ------
    ValueError
        If the archive has no usable clip.
    """
    target = Path(target)
    with tarfile.open(sdist, "r:*") as archive:
        members = {}
        for member in archive:
            parts = PurePosixPath(member.name).parts
            if len(parts) == 5 and parts[1:4] == LIBRIVOX_MEMBER_DIR and member.isfile():
                members[parts[4]] = member
        if LIBRIVOX_FILEIDS not in members:
            raise ValueError(f"{sdist} has no {'/'.join(LIBRIVOX_MEMBER_DIR)}/{LIBRIVOX_FILEIDS}")
        ids = _read_member(archive, members[LIBRIVOX_FILEIDS]).decode().split()
        complete = [
            uid
            for uid in ids
            if _SAFE_NAME.fullmatch(uid) and f"{uid}.wav" in members and f"{uid}.txt" in members
        ]
        if len(complete) < len(ids):
            logger.warning("%s: skipping incomplete or oddly named clips", sdist)
        if not complete:
            raise ValueError(f"{sdist} has no complete LibriVox clip")
        target.mkdir(parents=True, exist_ok=True)
        wanted = [members[f"{uid}{suffix}"] for uid in complete for suffix in (".wav", ".txt")]
        for member in sorted(wanted, key=lambda member: member.offset):  # no backward seeks
            _write_atomic(target / PurePosixPath(member.name).name, _read_member(archive, member))
    _write_atomic(target / LIBRIVOX_FILEIDS, ("\n".join(complete) + "\n").encode())
    return complete


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo) -> bytes:
    handle = archive.extractfile(member)
    assert handle is not None, "regular members always have contents"
    with handle:
        return handle.read()


def librivox_ids(folder: str | os.PathLike[str]) -> list[str] | None:
    """The IDs of a complete extracted LibriVox folder.

    Parameters
    ----------
    folder : str or PathLike
        A folder written by :func:`extract_librivox`.

    Returns
    -------
    list of str or None
        The IDs in ``fileids``, or None if ``fileids`` or any listed wav or
        txt file is missing.

    Example
    -------
    >>> librivox_ids("/nonexistent") is None
    True
    """
    folder = Path(folder)
    try:
        ids = (folder / LIBRIVOX_FILEIDS).read_text().split()
    except FileNotFoundError:
        return None
    files = [folder / f"{uid}{suffix}" for uid in ids for suffix in (".wav", ".txt")]
    if not ids or not all(_SAFE_NAME.fullmatch(uid) for uid in ids):
        return None
    return ids if all(path.is_file() for path in files) else None


def download_pocketsphinx_sdist(download_dir: str | os.PathLike[str]) -> Path | None:
    """Download the pocketsphinx source distribution from PyPI with pip.

    Runs ``python -m pip download pocketsphinx==5.1.1 --no-binary pocketsphinx
    --no-deps -d download_dir`` with the running interpreter.

    Parameters
    ----------
    download_dir : str or PathLike
        Where pip saves the ``.tar.gz``.

    Returns
    -------
    Path or None
        The downloaded archive, or None (with a warning) if pip failed.
    """
    logger.info("Downloading %s (source distribution) with pip", POCKETSPHINX_REQUIREMENT)
    try:
        pip_download(POCKETSPHINX_REQUIREMENT, download_dir, no_binary="pocketsphinx")
    except PackageError as err:
        logger.warning("Could not download %s: %s", POCKETSPHINX_REQUIREMENT, err)
        return None
    name = POCKETSPHINX_REQUIREMENT.replace("==", "-")
    archives = sorted(Path(download_dir).glob(f"{name}.tar.gz"))
    if not archives:
        logger.warning("pip saved no %s.tar.gz in %s", name, download_dir)
        return None
    return archives[0]


def _unavailable(source: str, reason: str, required: bool) -> None:
    message = f"Real speech source {source!r} is not available: {reason}"
    if required:
        raise SourceUnavailableError(message)
    logger.warning("%s; skipping it", message)


def _manifest_bytes(rows: Sequence[tuple[Utterance, float]]) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for utterance, duration in rows:
        writer.writerow(
            [utterance.uid, f"{duration:.3f}", utterance.wav, utterance.spk_id, utterance.text]
        )
    return buffer.getvalue().encode()


def _is_up_to_date(stamp: dict | None, config: dict, manifest: Path, data_root: Path) -> bool:
    """Whether the stamp matches ``config`` and the manifest and all its wavs exist."""
    if stamp is None or stamp.get("config") != config or not manifest.is_file():
        return False
    try:
        with manifest.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        wavs = [row["wav"].replace("$data_root", str(data_root)) for row in rows]
    except (KeyError, AttributeError, csv.Error, UnicodeDecodeError):  # not a manifest of ours
        return False
    return all(os.path.isfile(wav) for wav in wavs)


def _write_manifest(
    source: str, utterances: Sequence[Utterance], manifest: Path, stamp: Path, config: dict
) -> dict:
    """Measure the wavs and write the manifest, then the stamp; returns the statistics."""
    rows = [(u, soundfile.info(str(u.path)).duration) for u in utterances]
    stamp.parent.mkdir(parents=True, exist_ok=True)  # the manifest's folder, too
    _write_atomic(manifest, _manifest_bytes(rows))
    summary = {
        "manifest": manifest.name,
        "utterances": len(rows),
        "hours": round(sum(duration for _, duration in rows) / 3600, 4),
    }
    _write_json(stamp, {"config": config, "summary": summary})
    logger.info(
        "%s: wrote %s (%d utterances, %.3f h)", source, manifest, len(rows), summary["hours"]
    )
    return summary


def _prepare_asterisk(
    data_folder: Path,
    sounds: Path,
    transcripts: Path,
    max_items: int | None,
    min_words: int,
    required: bool,
) -> Path | None:
    manifest = data_folder / "real_asterisk.csv"
    stamp = data_folder / "real" / "asterisk.json"
    missing = [str(path) for path in (sounds, transcripts) if not path.exists()]
    if missing:
        _unavailable(
            "asterisk",
            f"{' and '.join(missing)} not found (Debian packages asterisk-core-sounds-en-wav "
            "and asterisk-core-sounds-en)",
            required,
        )
        return None
    info = transcripts.stat()
    config = {
        "version": STAMP_VERSION,
        "sounds": str(sounds.absolute()),
        "transcripts": str(transcripts.absolute()),
        "transcripts_size": info.st_size,
        "transcripts_mtime_ns": info.st_mtime_ns,
        "max_asterisk": max_items,
        "min_words": min_words,
    }
    if _is_up_to_date(_read_stamp(stamp), config, manifest, data_folder):
        logger.info("asterisk: %s is up to date", manifest)
        return manifest
    utterances, dropped = asterisk_utterances(sounds, transcripts, max_items, min_words)
    logger.info("asterisk: %d usable prompts; dropped %s", len(utterances), dict(dropped))
    if not utterances:
        _unavailable("asterisk", f"no usable prompt in {transcripts}", required)
        return None
    _write_manifest("asterisk", utterances, manifest, stamp, config)
    return manifest


def _prepare_librivox(
    data_folder: Path, min_words: int, download: bool, sdist: Path | None, required: bool
) -> Path | None:
    manifest = data_folder / "real_librivox.csv"
    stamp = data_folder / "real" / "librivox.json"
    folder = data_folder / "real" / "librivox"
    config = {"version": STAMP_VERSION, "sdist": POCKETSPHINX_REQUIREMENT, "min_words": min_words}
    if _is_up_to_date(_read_stamp(stamp), config, manifest, data_folder):
        logger.info("librivox: %s is up to date", manifest)
        return manifest
    if librivox_ids(folder) is None:
        if sdist is not None:
            if not sdist.is_file():
                raise FileNotFoundError(f"The pocketsphinx sdist {sdist} does not exist.")
            extract_librivox(sdist, folder)
        elif download:
            data_folder.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="download-", dir=data_folder) as tmp:
                archive = download_pocketsphinx_sdist(tmp)
                if archive is None:
                    _unavailable(
                        "librivox", f"downloading {POCKETSPHINX_REQUIREMENT} failed", required
                    )
                    return None
                extract_librivox(archive, folder)
        else:
            _unavailable("librivox", f"{folder} is not extracted and download=False", required)
            return None
    utterances = []
    for uid in librivox_ids(folder) or []:
        text = " ".join((folder / f"{uid}.txt").read_text(encoding="utf-8").split())
        if is_speakable(text) and len(text.split()) >= min_words:
            wav = f"$data_root/real/librivox/{uid}.wav"
            speaker = uid.rsplit("-", 1)[0]
            utterances.append(
                Utterance(f"librivox-{uid}", folder / f"{uid}.wav", wav, speaker, text)
            )
    logger.info("librivox: %d usable clips in %s", len(utterances), folder)
    if not utterances:
        _unavailable("librivox", f"no usable clip in {folder}", required)
        return None
    _write_manifest("librivox", utterances, manifest, stamp, config)
    return manifest


def prepare_real_speech(
    data_folder: str | os.PathLike[str],
    sources: Sequence[str] = SOURCES,
    max_asterisk: int | None = None,
    min_words: int = 1,
    download: bool = True,
    *,
    asterisk_sounds: str | os.PathLike[str] | None = None,
    asterisk_transcripts: str | os.PathLike[str] | None = None,
    sdist: str | os.PathLike[str] | None = None,
    required: bool = False,
) -> dict[str, str]:
    """Write the manifests of the available real-speech sources.

    Parameters
    ----------
    data_folder : str or PathLike
        Output folder, created if needed; use it as ``data_root`` when
        loading the manifests.
    sources : Sequence of str
        Any of ``"asterisk"`` and ``"librivox"``.
    max_asterisk : int, optional
        Keep at most this many Asterisk prompts, chosen evenly from the usable
        prompts sorted by name (deterministic; see :func:`asterisk_utterances`).
    min_words : int
        Drop transcripts with fewer words (whitespace-separated, as written).
    download : bool
        Whether the pocketsphinx sdist may be downloaded with pip when the
        LibriVox clips are not extracted yet and no ``sdist`` is given.
    asterisk_sounds, asterisk_transcripts : str or PathLike, optional
        Override :data:`ASTERISK_SOUNDS` and :data:`ASTERISK_TRANSCRIPTS`.
    sdist : str or PathLike, optional
        A local pocketsphinx source distribution to extract the LibriVox clips
        from instead of downloading it; it must exist when it is needed (the
        clips are not extracted yet).
    required : bool
        Raise :class:`SourceUnavailableError` instead of skipping a requested
        source that cannot be prepared.

    Returns
    -------
    dict of str to str
        Source name to manifest path, for the prepared sources only.

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     prepare_real_speech(folder, ["asterisk"], asterisk_sounds=f"{folder}/none")
    {}
    """
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise ValueError(f"Unknown real speech sources {unknown}; choose from {list(SOURCES)}.")
    if min_words < 1:
        raise ValueError(f"min_words must be at least 1, got {min_words}")
    folder = Path(data_folder).absolute()
    manifests: dict[str, str] = {}
    for source in dict.fromkeys(sources):
        if source == "asterisk":
            manifest = _prepare_asterisk(
                folder,
                Path(asterisk_sounds or ASTERISK_SOUNDS),
                Path(asterisk_transcripts or ASTERISK_TRANSCRIPTS),
                max_asterisk,
                min_words,
                required,
            )
        else:
            path = Path(sdist).absolute() if sdist is not None else None
            manifest = _prepare_librivox(folder, min_words, download, path, required)
        if manifest is not None:
            manifests[source] = str(manifest)
    return manifests


def manifest_statistics(path: str | os.PathLike[str]) -> tuple[int, float]:
    """Count the rows and hours of a manifest.

    Parameters
    ----------
    path : str or PathLike
        A CSV manifest with a ``duration`` column in seconds.

    Returns
    -------
    tuple of (int, float)
        Number of utterances and total duration in hours.
    """
    with open(path, newline="") as handle:
        durations = [float(row["duration"]) for row in csv.DictReader(handle)]
    return len(durations), sum(durations) / 3600


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point; see ``--help``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-folder", required=True, help="output folder")
    parser.add_argument("--sources", nargs="+", choices=SOURCES, default=list(SOURCES))
    parser.add_argument("--max-asterisk", type=int, help="evenly spaced subset of the prompts")
    parser.add_argument("--min-words", type=int, default=1)
    parser.add_argument("--no-download", action="store_true", help="never run pip download")
    parser.add_argument("--sdist", help="local pocketsphinx sdist instead of a download")
    parser.add_argument("--required", action="store_true", help="fail on an unavailable source")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    manifests = prepare_real_speech(
        args.data_folder,
        args.sources,
        args.max_asterisk,
        args.min_words,
        not args.no_download,
        sdist=args.sdist,
        required=args.required,
    )
    for source in args.sources:
        if source in manifests:
            count, hours = manifest_statistics(manifests[source])
            print(f"{source}: {count} utterances, {hours:.4f} h -> {manifests[source]}")
        else:
            print(f"{source}: not available")


if __name__ == "__main__":
    main()

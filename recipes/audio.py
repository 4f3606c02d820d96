"""The one audio loader of the collection: training, evaluation and inference read audio here.

Audio as users have it: any sample rate (resampled to the model's), any channel count
(downmixed by averaging the channels, noted once per process), any format libsndfile reads.
A file that cannot be read, or holds no audio or less than ``min_seconds`` of it, raises
``AudioError`` naming the file. ``check_audio`` reads headers only, so a manifest of
thousands of files is checked in a second before any training starts.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass
from pathlib import Path

import soundfile
import torch
import torchaudio

logger = logging.getLogger(__name__)
_NOTED: set[str] = set()


class AudioError(ValueError):
    """An audio file that cannot be used as it is; the message names it and the fix."""


class ShortAudioError(AudioError):
    """An audio file that is readable but empty or shorter than the minimum."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file's header says: its length in frames, sample rate and channel count."""

    frames: int
    sample_rate: int
    channels: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def check_audio(path: str, min_seconds: float = 0.0) -> AudioInfo:
    """Read the header of ``path``; raise ``AudioError`` if it is unreadable, empty or too short.

    Example
    -------
    >>> import tempfile, numpy
    >>> path = tempfile.mktemp(suffix=".wav")
    >>> soundfile.write(path, numpy.zeros((800, 2)), 8000)
    >>> check_audio(path)
    AudioInfo(frames=800, sample_rate=8000, channels=2)
    >>> check_audio(path, min_seconds=0.5)
    Traceback (most recent call last):
        ...
    recipes.audio.ShortAudioError: ... holds 0.100 s of audio, less than the 0.5 s minimum ...
    """
    try:
        info = soundfile.info(path)
    except Exception as err:  # libsndfile raises several types
        raise AudioError(
            f"Cannot read audio file {path}: {err}. Check that it exists and is a WAV/FLAC/OGG "
            "file (convert other formats, e.g. with ffmpeg), or remove it from the manifest."
        ) from err
    found = AudioInfo(int(info.frames), int(info.samplerate), int(info.channels))
    if found.frames == 0:
        raise ShortAudioError(
            f"Audio file {path} is empty (0 samples): remove it from the manifest."
        )
    if found.seconds < min_seconds:
        raise ShortAudioError(
            f"Audio file {path} holds {found.seconds:.3f} s of audio, less than the "
            f"{min_seconds:g} s minimum (min_audio_s): remove it from the manifest or lower "
            "min_audio_s."
        )
    return found


def load_audio(path: str, sample_rate: int, min_seconds: float = 0.0) -> torch.Tensor:
    """``path`` as a 1-D float32 waveform at ``sample_rate``: resampled and downmixed as needed.

    Example
    -------
    >>> import tempfile, numpy
    >>> path = tempfile.mktemp(suffix=".wav")
    >>> tone = numpy.sin(numpy.arange(8000) / 8000 * 2 * numpy.pi * 440)
    >>> soundfile.write(path, numpy.stack([tone, tone], axis=1), 8000)
    >>> load_audio(path, 16000).shape  # 1 s of stereo at 8 kHz -> mono at 16 kHz
    torch.Size([16000])
    """
    info = check_audio(path, min_seconds)
    audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
    signal = (
        torch.from_numpy(audio).mean(dim=1) if info.channels > 1 else torch.from_numpy(audio[:, 0])
    )
    if info.channels > 1 and "downmix" not in _NOTED:
        _NOTED.add("downmix")
        logger.warning(
            "Audio with %d channels is downmixed to mono (first: %s).", info.channels, path
        )
    if not bool(torch.isfinite(signal).all()):
        raise AudioError(f"Audio file {path} holds NaN or infinite samples: it is corrupt.")
    if rate != sample_rate:
        signal = torchaudio.functional.resample(signal, rate, sample_rate)
    return signal.contiguous()


def crop_starts(lengths: list[int], ids: list[str], size: int, salt: str) -> list[int]:
    """Where to cut a ``size``-sample crop from each utterance: a hash of (salt, ID).

    Training on crops keeps batches short; a hash instead of a random draw makes
    a resumed run cut the same crops (pass the seed and the epoch in ``salt``).
    Utterances shorter than ``size`` start at 0.

    Example
    -------
    >>> crop_starts([100, 10], ["a", "b"], size=20, salt="1234-1")
    [11, 0]
    """
    import zlib

    return [
        zlib.crc32(f"{salt}-{uid}".encode()) % (max(0, length - size) + 1)
        for length, uid in zip(lengths, ids)
    ]


def crop_batch(
    wavs: torch.Tensor, lengths: list[int], starts: list[int], size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(batch, size)`` crops at ``starts`` (zero-padded past each utterance's end) and
    their relative lengths.

    Example
    -------
    >>> crops, lens = crop_batch(torch.arange(12.0).reshape(2, 6), [6, 3], [2, 0], size=4)
    >>> crops, lens
    (tensor([[2., 3., 4., 5.],
            [6., 7., 8., 0.]]), tensor([1.0000, 0.7500]))
    """
    crops = torch.zeros(wavs.shape[0], size, device=wavs.device, dtype=wavs.dtype)
    kept = []
    for row, (start, length) in enumerate(zip(starts, lengths)):
        piece = wavs[row, start : min(start + size, length)]
        crops[row, : piece.shape[0]] = piece
        kept.append(piece.shape[0] / size)
    return crops, torch.tensor(kept, device=wavs.device)


#: What a folder given as input is searched for.
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".mp3", ".opus", ".aiff", ".aif")


def manifest_files(path: Path) -> list[Path]:
    """The ``wav`` column of a CSV manifest, ``$data_root`` and relative paths taken as the
    manifest's folder.

    Example
    -------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "m.csv").write_text("ID,wav\\na,$data_root/a.wav\\nb,sub/b.flac\\n")
    >>> [str(p.relative_to(folder)) for p in manifest_files(folder / "m.csv")]
    ['a.wav', 'sub/b.flac']
    """
    root = path.parent.resolve()
    with open(path, encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, skipinitialspace=True)
        if "wav" not in [name.strip() for name in reader.fieldnames or []]:
            raise ValueError(
                f"The manifest {path} has no 'wav' column: give the audio paths in a column "
                "named wav (one file a row), or pass the audio files or their folder instead."
            )
        rows = [{key.strip(): value for key, value in row.items() if key} for row in reader]
    files = [Path(row["wav"].strip().replace("$data_root", str(root))) for row in rows]
    return [p if p.is_absolute() else root / p for p in files]


def audio_inputs(entries: list[str]) -> list[Path]:
    """Files, folders (their audio files, recursively, sorted) and manifests, in the order
    given. A name that is neither a folder nor a manifest is taken as a file (one that
    does not exist fails on its own, later)."""
    files: list[Path] = []
    for entry in entries:
        path = Path(entry)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES
            )
            if not found:
                raise ValueError(
                    f"The folder {path} holds no audio file ({', '.join(AUDIO_SUFFIXES)}): "
                    "give the folder the recordings are in, or the files themselves."
                )
            files += found
        elif path.suffix.lower() == ".csv" and path.is_file():
            files += manifest_files(path)
        else:
            files.append(path)
    return files

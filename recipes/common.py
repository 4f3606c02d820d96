"""Helpers shared by the recipes: input checks, strict loading, run summaries.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from typing import Any

import torch

MANIFEST_COLUMNS = ("ID", "duration", "wav", "wrd")


def check_manifest(path: str, data_root: str | None = None, hint: str = "") -> int:
    """Fail early and clearly on a missing, empty or malformed manifest.

    Arguments
    ---------
    path : str
        A SpeechBrain CSV manifest with at least ``ID, duration, wav, wrd``.
    data_root : str, optional
        Value of ``$data_root`` in the ``wav`` column.
    hint : str
        What to run or fix, appended to the error message.

    Returns
    -------
    int
        The number of rows.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Manifest {path} does not exist. {hint}".strip())
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in MANIFEST_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(
                f"Manifest {path} lacks the columns {missing}; it needs {list(MANIFEST_COLUMNS)} "
                "(plus optional spk_id)."
            )
        rows = list(reader)
    if not rows:
        raise ValueError(f"Manifest {path} is empty: the split has no utterance. {hint}".strip())
    absent = []
    for row in rows:
        wav = row["wav"].replace("$data_root", data_root) if data_root else row["wav"]
        if not os.path.isfile(wav):
            absent.append(wav)
    if absent:
        raise FileNotFoundError(
            f"{len(absent)} audio files listed in {path} are missing, e.g. {absent[:3]}. "
            f"Regenerate the corpus or fix the wav column. {hint}".strip()
        )
    return len(rows)


def strict_transfer(module: torch.nn.Module, path: str) -> None:
    """Load a plain checkpoint into ``module``, failing on any key mismatch.

    SpeechBrain's default transfer only warns when keys are missing, which
    can leave a randomly initialised model behind; a base model must load
    completely. Use as a ``Pretrainer`` custom hook.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise RuntimeError(
            f"The checkpoint {path} does not fit the model defined in the YAML. Use the same "
            f"model hyperparameters as the run that produced it. Details: {err}"
        ) from err


def write_json(path: str, data: Mapping[str, Any]) -> None:
    """Write ``data`` as indented JSON, atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")
    os.replace(tmp, path)

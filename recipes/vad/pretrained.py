"""Silero VAD v6's pretrained weights, from the ``silero-vad`` wheel's ONNX file to safetensors.

``silero-vad==6.2.3`` (MIT) ships the v6 model as ``silero_vad_op18_ifless.onnx``,
whose initializers carry readable names (``model.encoder.0.reparam_conv.weight``
...; ``model_8k.*`` is the 8 kHz twin, not used). This module downloads the wheel
with pip (nothing installed, no onnxruntime), checks the file's SHA-256, maps the
16 kHz weights onto :class:`recipes.vad.model.SileroVAD` (the LSTM cell's weights
become the single-layer ``nn.LSTM``'s ``*_l0``: same gate order), loads them
strictly and writes safetensors::

    python -m recipes.vad.pretrained --output pretrained/silero_vad

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from recipes.onnx_weights import onnx_initializers
from recipes.packages import PackageError, convert_pinned_file, converter_main, save_weights
from recipes.vad.model import SileroVAD

PACKAGE = "silero-vad==6.2.3"
MEMBER = "silero_vad/data/silero_vad_op18_ifless.onnx"
SHA256 = "7671cd04b004e9076da0d4a7b1a5aec36adf161c39230c1cb94a4fd5db6bbd28"
WEIGHTS = "silero_vad.safetensors"

#: SileroVAD parameter -> initializer of the pinned ONNX file.
NAMES = {
    "stft_basis": "model.stft.forward_basis_buffer",
    **{
        f"encoder.{2 * i}.{kind}": f"model.encoder.{i}.reparam_conv.{kind}"
        for i in range(4)
        for kind in ("weight", "bias")
    },
    **{
        f"rnn.{kind}_l0": f"model.decoder.rnn.{kind}"
        for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    },
    "head.weight": "model.decoder.decoder.2.weight",
    "head.bias": "model.decoder.decoder.2.bias",
}

logger = logging.getLogger(__name__)


def silero_state(initializers: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map the pinned file's 16 kHz initializers onto :class:`SileroVAD`'s names."""
    return {name: torch.from_numpy(initializers[onnx]) for name, onnx in NAMES.items()}


def convert_onnx(onnx_path: str | os.PathLike, output: str | os.PathLike) -> Path:
    """``output/silero_vad.safetensors`` from the v6 ONNX file (strict load checked)."""
    try:
        state = silero_state(onnx_initializers(onnx_path))
    except KeyError as err:
        raise PackageError(
            f"{onnx_path} lacks the weight {err}: not silero-vad's v6 op18_ifless model"
        ) from None
    return save_weights(SileroVAD(), state, Path(output) / WEIGHTS, str(onnx_path))


def prepare_pretrained(output: str | os.PathLike, wheel: str | os.PathLike | None = None) -> Path:
    """``output/silero_vad.safetensors`` from the pinned wheel (downloaded unless given).

    Kept when ``output/converted_from.json`` records the expected source hash.
    """
    return convert_pinned_file(output, WEIGHTS, PACKAGE, MEMBER, SHA256, convert_onnx, wheel)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; see ``--help``."""
    converter_main(
        argv,
        __doc__,
        "pretrained/silero_vad",
        "a downloaded silero-vad 6.2.3 wheel",
        prepare_pretrained,
    )


if __name__ == "__main__":
    main()

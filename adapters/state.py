"""Adapter-only files: safetensors tensors with JSON metadata and a base fingerprint.

A file holds only what was trained. Its metadata records how the adapter was
built and a fingerprint of the frozen base (parameter names, shapes, dtypes and
a SHA-256 of their values), so that loading onto another base model is refused
instead of silently producing garbage.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

FORMAT = "speech-adapters/1"
_META_KEY = "speech_adapters"


def base_fingerprint(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Fingerprint a set of frozen tensors.

    Arguments
    ---------
    state : mapping of str to torch.Tensor
        The frozen base tensors by name.

    Returns
    -------
    dict
        ``layout`` hashes names, shapes and dtypes, ``values`` hashes the
        bytes too, ``num_parameters`` counts elements.

    Example
    -------
    >>> a = base_fingerprint({"w": torch.zeros(2, 3)})
    >>> b = base_fingerprint({"w": torch.ones(2, 3)})
    >>> a["layout"] == b["layout"], a["values"] == b["values"], a["num_parameters"]
    (True, False, 6)
    """
    layout, values = hashlib.sha256(), hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        header = f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode()
        layout.update(header)
        values.update(header)
        values.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return {
        "layout": layout.hexdigest(),
        "values": values.hexdigest(),
        "num_parameters": sum(t.numel() for t in state.values()),
    }


def save_adapter_file(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    base_state: Mapping[str, torch.Tensor],
) -> None:
    """Write ``tensors`` to a safetensors file whose header carries ``meta``.

    The file is written to a temporary name and renamed, so a crash never
    leaves a half-written adapter behind.
    """
    header = {"format": FORMAT, **meta, "base": base_fingerprint(base_state)}
    data = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    tmp = f"{os.fspath(path)}.tmp"
    save_file(data, tmp, metadata={_META_KEY: json.dumps(header, default=repr)})
    os.replace(tmp, path)


def read_adapter_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Return the JSON metadata stored in an adapter file."""
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(_META_KEY)
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(
            f"{path} is not an adapter file of this library (safetensors expected): {err}"
        ) from err
    if raw is None:
        raise ValueError(f"{path} has no {_META_KEY!r} metadata: it was not saved by AdaptedModel.")
    return json.loads(raw)


def load_adapter_file(
    path: str | os.PathLike,
    base_state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
) -> dict[str, torch.Tensor]:
    """Read an adapter file after checking it belongs to this base and layout.

    Arguments
    ---------
    path : str or os.PathLike
        The adapter file.
    base_state : mapping
        The frozen tensors of the model it is loaded into.
    expected : mapping
        The adapter state of the model it is loaded into (names and shapes
        the file must provide).

    Returns
    -------
    dict
        The tensors, ready for ``load_state_dict(..., strict=False)``.
    """
    meta = read_adapter_metadata(path)
    here = base_fingerprint(base_state)
    saved = meta.get("base", {})
    if saved.get("layout") != here["layout"]:
        raise ValueError(
            f"{path} was trained on another base model (different parameter names or shapes: "
            f"{saved.get('num_parameters')} vs {here['num_parameters']} frozen parameters). "
            "Load the base model the adapter was trained on, with the same adapter settings."
        )
    if saved.get("values") != here["values"]:
        raise ValueError(
            f"{path} was trained on a base model with the same layout but other weights "
            "(fingerprints differ). Load the pretrained checkpoint the adapter was trained on "
            "before loading the adapter."
        )
    with safe_open(os.fspath(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is no dict)
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in tensors if k in expected and tensors[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} does not fit this adapted model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shape {wrong[:5]}. Build the AdaptedModel with the "
            f"settings it was saved with: {meta.get('adapter_class')} {meta.get('adapter_kwargs')}."
        )
    return tensors

"""The weights of an ONNX model file, read without the ``onnx`` package or onnxruntime.

An ONNX file is a protobuf ``ModelProto``; its graph's initializers are the
weights. This small reader walks the protobuf wire format and returns the
float32 initializers by name, which is all a converter to PyTorch needs.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np


class OnnxFormatError(ValueError):
    """The file is not an ONNX model this reader understands."""


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def _fields(data: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """``(field number, wire type, value)`` of a protobuf message."""
    pos = 0
    while pos < len(data):
        key, pos = _varint(data, pos)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos)
        elif wire == 2:
            size, pos = _varint(data, pos)
            value, pos = data[pos : pos + size], pos + size
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            value, pos = data[pos : pos + size], pos + size
        else:
            raise OnnxFormatError(f"unsupported protobuf wire type {wire}: not an ONNX file")
        yield number, wire, value


def _tensor(message: bytes) -> tuple[str, np.ndarray | None]:
    """Name and values of an ONNX ``TensorProto`` (values None unless float32)."""
    dims, name, raw, floats, dtype = [], "", None, [], None
    for number, wire, value in _fields(message):
        if number == 1:  # dims: packed or one varint each
            if wire == 2:
                pos = 0
                while pos < len(value):
                    dim, pos = _varint(value, pos)
                    dims.append(dim)
            else:
                dims.append(value)
        elif number == 2:
            dtype = value
        elif number == 4:  # float_data
            floats += (
                list(struct.unpack(f"<{len(value) // 4}f", value))
                if wire == 2
                else [struct.unpack("<f", value)[0]]
            )
        elif number == 8:
            name = value.decode()
        elif number == 9:
            raw = value
    if dtype != 1:  # shapes and indices (int64): not weights
        return name, None
    array = np.frombuffer(raw, dtype="<f4") if raw is not None else np.asarray(floats, "<f4")
    return name, array.reshape(dims).copy()


def onnx_initializers(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """The float32 initializers (weights) of an ONNX model, by name.

    Example
    -------
    >>> def field(number, payload):  # a length-delimited protobuf field
    ...     return bytes([number << 3 | 2, len(payload)]) + payload
    >>> tensor = field(1, bytes([2, 1])) + bytes([2 << 3, 1]) + field(8, b"w") + field(
    ...     9, np.array([1.5, -2.0], "<f4").tobytes())
    >>> import tempfile
    >>> path = tempfile.mktemp(suffix=".onnx")
    >>> _ = open(path, "wb").write(field(7, field(5, tensor)))
    >>> onnx_initializers(path)["w"]
    array([[ 1.5],
           [-2. ]], dtype=float32)
    """
    data = Path(path).read_bytes()
    graphs = [value for number, wire, value in _fields(data) if number == 7 and wire == 2]
    if len(graphs) != 1:
        raise OnnxFormatError(f"{path} holds {len(graphs)} graphs: not an ONNX model file")
    tensors = [_tensor(v) for number, wire, v in _fields(graphs[0]) if number == 5 and wire == 2]
    return {name: array for name, array in tensors if array is not None}

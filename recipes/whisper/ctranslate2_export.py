"""Export a Whisper run to CTranslate2, the format faster-whisper serves.

:func:`export_ctranslate2` merges the run's adapters into the weights, writes the merged
model as a transformers folder (:func:`recipes.whisper.export.export_transformers`) and
converts that folder with CTranslate2's own converter
(``ctranslate2.converters.TransformersConverter``), optionally quantizing the weights.
The result loads with ``faster_whisper.WhisperModel(folder, device="cpu",
compute_type=...)``. CTranslate2 runs Whisper's plain architecture only, so an adapter
that does not fold into the weights (Houlsby) is refused: :func:`check_mergeable`.

Needs the optional extra ``ctranslate2`` (``pip install -e ".[ctranslate2]"``).

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

from torch import nn

from recipes.io import check_target, replace_folder
from recipes.whisper.export import ExportError, export_transformers

#: Weight types ``--quantization`` accepts (CTranslate2's names). ``float32`` keeps the
#: trained weights as they are; ``int8`` is the usual choice for CPU serving.
QUANTIZATIONS = ("int8", "int8_float32", "float16", "float32")
#: Files faster-whisper reads beside ``model.bin``: the tokenizer and the feature settings.
FASTER_WHISPER_FILES = ("tokenizer.json", "preprocessor_config.json")


def check_quantization(quantization: str) -> str:
    """Return ``quantization`` if the export offers it, else raise ``ValueError``.

    Example
    -------
    >>> check_quantization("int8")
    'int8'
    >>> check_quantization("int4")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: Quantization 'int4' is not offered ...; choose one of int8, int8_float32, ...
    """
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"Quantization {quantization!r} is not offered by the CTranslate2 export; choose one "
            f"of {', '.join(QUANTIZATIONS)}."
        )
    return quantization


def unmergeable_adapters(adapted_model: nn.Module | None) -> dict[str, str]:
    """``{layer name: adapter class name}`` for the adapters that cannot fold into weights.

    Our adapters say whether they merge with ``mergeable``; foreign (PEFT) ones by having
    a ``merge`` method. None (a model trained in full) has none.

    Example
    -------
    >>> import torch
    >>> from adapters import AdaptedModel, Houlsby, LoRA
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
    >>> unmergeable_adapters(AdaptedModel(net, LoRA, all_linear=True, adapter_kwargs={"rank": 1}))
    {}
    >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
    >>> unmergeable_adapters(
    ...     AdaptedModel(net, Houlsby, all_linear=True, adapter_kwargs={"projection_size": 2})
    ... )
    {'0': 'Houlsby'}
    """
    return {} if adapted_model is None else adapted_model.unmergeable_adapters()


def check_mergeable(adapted_model: nn.Module | None, target: str = "CTranslate2") -> None:
    """Refuse, with the reason, a model whose adapters cannot be folded into its weights.

    Arguments
    ---------
    adapted_model : adapters.AdaptedModel or None
        The run's adapted model (None for a model trained in full: nothing to refuse).
    target : str
        The format asked for, named in the message.

    Raises
    ------
    recipes.whisper.export.ExportError
        When one adapter or more is not mergeable (e.g. Houlsby).
    """
    refused = unmergeable_adapters(adapted_model)
    if not refused:
        return
    kinds = ", ".join(sorted(set(refused.values())))
    first = next(iter(refused))
    more = f" and {len(refused) - 1} more" if len(refused) > 1 else ""
    raise ExportError(
        f"Cannot export to {target}: the run's {kinds} adapters (at {first}{more}) cannot be "
        "merged into the weights. A bottleneck adapter such as Houlsby adds a small network "
        "with a nonlinearity after the layer; its output is not a linear map of the layer's "
        "input, so no change of the base weights reproduces it, and the exported model holds "
        "only the base model's own layers. Serve this run with the PyTorch path (python -m "
        "recipes.transcribe ... --adapter NAME=PATH), or train a mergeable adapter (LoRA, "
        "DoRA, PoolLoRA) to export it."
    )


def faster_whisper_max_new_tokens(tokens: int, prompt_length: int = 2) -> int:
    """The ``max_new_tokens`` that lets faster-whisper generate ``tokens`` tokens per window.

    CTranslate2's Whisper decodes at most half of ``max_length`` (as openai-whisper's
    ``sample_len``), and faster-whisper sets ``max_length = prompt + max_new_tokens``: a
    cap of ``max_new_tokens=n`` yields at most ``(prompt_length + n) // 2`` tokens. The
    prompt of an English-only model without timestamps is ``<|startoftranscript|>
    <|notimestamps|>`` (2 tokens); a multilingual one adds language and task (4).

    Example
    -------
    >>> faster_whisper_max_new_tokens(30)  # our greedy search's 30 steps
    58
    >>> (2 + 58) // 2
    30
    """
    return 2 * tokens - prompt_length


def transformers_converter() -> type:
    """CTranslate2's ``TransformersConverter``; ``ImportError`` saying how to install it."""
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError as err:
        raise ImportError(
            "The CTranslate2 export needs the package ctranslate2, which is not installed: "
            'install the optional extra with pip install -e ".[ctranslate2]" (it pins '
            "ctranslate2 and faster-whisper), then export again."
        ) from err
    return TransformersConverter


def convert_transformers_folder(
    transformers_folder: str | os.PathLike, output_folder: str | os.PathLike, quantization: str
) -> Path:
    """Convert a transformers Whisper folder with CTranslate2's converter into a new folder.

    ``output_folder`` must not exist; it receives ``model.bin``, ``config.json``,
    ``vocabulary.json`` and :data:`FASTER_WHISPER_FILES` copied from ``transformers_folder``.
    """
    output = Path(output_folder)
    if output.exists():
        raise FileExistsError(f"{output} exists: convert_transformers_folder writes a new folder.")
    converter = transformers_converter()(
        str(transformers_folder), copy_files=list(FASTER_WHISPER_FILES)
    )
    converter.convert(str(output), quantization=check_quantization(quantization))
    return output


def export_ctranslate2(
    whisper: nn.Module,
    adapted_model: nn.Module | None,
    tokenizer_source_folder: str | os.PathLike,
    output_folder: str | os.PathLike,
    quantization: str = "float32",
    overwrite: bool = False,
    sources: Iterable[str | os.PathLike] = (),
) -> Path:
    """Write a Whisper run, adapters merged, as a CTranslate2 folder for faster-whisper.

    Arguments
    ---------
    whisper : torch.nn.Module
        SpeechBrain's Whisper (e.g. ``WindowedWhisper``) of the run.
    adapted_model : adapters.AdaptedModel or None
        The ``AdaptedModel`` wrapping ``whisper``; its adapters are merged (all must be
        mergeable, see :func:`check_mergeable`). None for a model trained in full.
    tokenizer_source_folder : str or PathLike
        Local transformers folder the run's Whisper was loaded from (tokenizer and
        feature-extractor files are taken from it).
    output_folder : str or PathLike
        Folder to write, through :func:`recipes.io.replace_folder` (built aside, swapped in).
    quantization : str
        Weight type, one of :data:`QUANTIZATIONS`.
    overwrite : bool
        Replace an ``output_folder`` holding files this project did not write.
    sources : iterable of str or PathLike
        Folders the export is made from: an ``output_folder`` inside or around one of them
        is refused (``tokenizer_source_folder`` is always one).

    Returns
    -------
    Path
        ``output_folder``, for ``faster_whisper.WhisperModel(output_folder)``.
    """
    check_quantization(quantization)
    output, source = Path(output_folder), Path(tokenizer_source_folder)
    guarded = [source, *sources]
    check_target(output, guarded, overwrite, option="overwrite=True")  # before any work
    check_mergeable(adapted_model)
    transformers_converter()  # installed, before any work
    with tempfile.TemporaryDirectory(prefix="ctranslate2-export-") as work:
        merged = export_transformers(whisper, adapted_model, source, Path(work) / "transformers")
        converted = convert_transformers_folder(merged, Path(work) / "ctranslate2", quantization)
        with replace_folder(output, guarded, overwrite, option="overwrite=True") as tmp:
            for path in sorted(converted.iterdir()):
                shutil.move(str(path), str(tmp / path.name))
    return output

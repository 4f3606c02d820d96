"""Export a Whisper run as a merged transformers folder.

:func:`export_transformers` folds the adapters of a run into the weights and
writes a ``WhisperForConditionalGeneration`` folder (weights, tokenizer,
feature extractor, generation config) that
``transformers.pipeline("automatic-speech-recognition", model=folder)`` runs
as the recipe decodes (:mod:`recipes.whisper.generation`). LoRA adapters in
PEFT's format: :mod:`adapters.peft_format`.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import copy
import os
from collections.abc import Iterable
from pathlib import Path

from torch import nn

from adapters.base import Adapter
from recipes.io import check_target, replace_folder
from recipes.whisper.generation import declare_special_tokens, whisper_generation_config


class ExportError(ValueError):
    """A model that cannot be exported faithfully."""


def _has_adapters(module: nn.Module) -> bool:
    return any(
        isinstance(m, Adapter) or "param_adapters" in m._modules or hasattr(m, "lora_A")
        for m in module.modules()
    )


def export_transformers(
    whisper: nn.Module,
    adapted_model: nn.Module | None,
    tokenizer_source_folder: str | os.PathLike,
    output_folder: str | os.PathLike,
    max_new_tokens: int | None = None,
    overwrite: bool = False,
    sources: Iterable[str | os.PathLike] = (),
) -> Path:
    """Write a Whisper run as a plain transformers ``WhisperForConditionalGeneration`` folder.

    Arguments
    ---------
    whisper : torch.nn.Module
        SpeechBrain's Whisper (e.g. ``WindowedWhisper``) of the run.
    adapted_model : adapters.AdaptedModel or None
        The ``AdaptedModel`` wrapping ``whisper``: its adapters are merged into
        the weights (all must be mergeable). None for a model trained in full.
    tokenizer_source_folder : str or PathLike
        Local folder the tokenizer and feature extractor are copied from (the
        run's ``whisper_source`` folder); its ``alignment_heads`` are kept.
    output_folder : str or PathLike
        Folder to write; built in a temporary sibling, then swapped in
        (:func:`recipes.io.replace_folder`).
    max_new_tokens : int, optional
        Generation cap written to the generation config (e.g. 150 for the
        recipe's ``max_decode_ratio: 0.1`` of a 30 s window).
    overwrite : bool
        Replace an ``output_folder`` that holds files this project did not write.
    sources : iterable of str or PathLike
        Folders the export is made from: an ``output_folder`` equal to, inside or
        around one of them is refused (``tokenizer_source_folder`` is always one).

    Returns
    -------
    Path
        ``output_folder``, ready for ``from_pretrained`` and the ASR pipeline.
    """
    from transformers import (
        AutoTokenizer,
        GenerationConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
    )

    source, output = Path(tokenizer_source_folder), Path(output_folder)
    if not source.is_dir():
        raise FileNotFoundError(
            f"Tokenizer source folder {source} does not exist: pass the local transformers folder "
            "the run's Whisper was loaded from (its tokenizer and preprocessor files are copied)."
        )
    check_target(output, [source, *sources], overwrite, option="overwrite=True")
    if adapted_model is not None:
        if adapted_model.adapted_model is not whisper:
            raise ExportError(
                "adapted_model does not wrap this whisper: pass the AdaptedModel built on it "
                "(the run's adapted_model), or None for a model trained in full."
            )
        model = adapted_model.export_plain().model
    elif _has_adapters(whisper):
        raise ExportError(
            "whisper holds inserted adapters but adapted_model is None: pass the AdaptedModel "
            "that wraps it, so that its adapters are merged into the exported weights."
        )
    else:
        model = whisper.model

    # SpeechBrain computes Whisper's logits with the token embedding: tie proj_out to it.
    config = copy.deepcopy(model.config)
    config.tie_word_embeddings = True
    hf_model = WhisperForConditionalGeneration(config)
    hf_model.model.load_state_dict(model.state_dict())
    hf_model.tie_weights()
    embed = hf_model.model.decoder.embed_tokens.weight
    if hf_model.proj_out.weight.data_ptr() != embed.data_ptr():
        hf_model.proj_out.weight = embed  # transformers versions that tie lazily
    tokenizer = declare_special_tokens(AutoTokenizer.from_pretrained(source))
    language = getattr(whisper, "language", None) or "en"
    generation = whisper_generation_config(
        tokenizer, config, language, getattr(whisper, "task", "transcribe"), max_new_tokens
    )
    if (source / "generation_config.json").is_file():
        heads = getattr(GenerationConfig.from_pretrained(source), "alignment_heads", None)
        if heads:
            generation.alignment_heads = heads
    hf_model.generation_config = generation

    with replace_folder(output, [source, *sources], overwrite, option="overwrite=True") as tmp:
        hf_model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        WhisperFeatureExtractor.from_pretrained(source).save_pretrained(tmp)
    return output

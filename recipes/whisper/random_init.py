"""Randomly initialised Whisper folders, built from a config with no download.

Tests and benchmarks need Whisper models that go through exactly the same
``source`` path as a hub snapshot: a folder with ``config.json``, weights,
tokenizer and feature-extractor files. :func:`save_random_whisper` writes one
from a size preset, with the English tokenizer of the packaged tiny.en.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from recipes.whisper.pretrained import packaged_model_dir, whisper_tokenizer

#: Sizes of the presets. ``tiny-test`` is for unit tests (about 3.5M
#: parameters, most of them the English vocabulary); ``base`` and ``small`` have the
#: dimensions of Whisper base and small (about 72M and 240M parameters), for timing
#: where the real weights cannot be brought (a GPU machine without network).
PRESETS: dict[str, dict[str, int]] = {
    "tiny-test": {"d_model": 64, "layers": 2, "heads": 2, "ffn": 128},
    "base": {"d_model": 512, "layers": 6, "heads": 8, "ffn": 2048},
    "small": {"d_model": 768, "layers": 12, "heads": 12, "ffn": 3072},
}
ENGLISH_VOCAB = 51864


def save_random_whisper(folder: str | os.PathLike, preset: str = "tiny-test", seed: int = 0) -> str:
    """Write a randomly initialised English-only Whisper to ``folder``.

    Arguments
    ---------
    folder : str or PathLike
        Output folder (created). Reused when it already holds a model.
    preset : str
        A key of :data:`PRESETS`.
    seed : int
        Seed of the random initialisation.

    Returns
    -------
    str
        The folder, usable as ``source`` of SpeechBrain's ``Whisper``.

    Example
    -------
    >>> import tempfile
    >>> from transformers import WhisperForConditionalGeneration
    >>> folder = save_random_whisper(tempfile.mkdtemp())
    >>> WhisperForConditionalGeneration.from_pretrained(folder).config.d_model
    64
    """
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    config = random_config(preset)
    folder = Path(folder)
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return str(folder)
    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(config)
    model.save_pretrained(folder)
    whisper_tokenizer(
        packaged_model_dir() / "tokenizer.json", config.max_target_positions
    ).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=config.num_mel_bins).save_pretrained(folder)
    return str(folder)


def random_config(preset: str):
    """The ``WhisperConfig`` of an English-only Whisper with a preset's dimensions.

    Example
    -------
    >>> import torch
    >>> from transformers import WhisperForConditionalGeneration
    >>> with torch.device("meta"):  # counted, not allocated
    ...     model = WhisperForConditionalGeneration(random_config("base"))
    >>> round(sum(p.numel() for p in model.parameters()) / 1e6, 1)  # Whisper base: 72.6M
    72.6
    """
    from transformers import WhisperConfig

    if preset not in PRESETS:
        raise ValueError(f"unknown Whisper preset {preset!r}; choose one of {sorted(PRESETS)}")
    size = PRESETS[preset]
    return WhisperConfig(
        vocab_size=ENGLISH_VOCAB,
        num_mel_bins=80,
        max_source_positions=1500,
        max_target_positions=448,
        bos_token_id=50256,
        eos_token_id=50256,
        pad_token_id=50256,
        decoder_start_token_id=50257,
        d_model=size["d_model"],
        encoder_layers=size["layers"],
        decoder_layers=size["layers"],
        encoder_attention_heads=size["heads"],
        decoder_attention_heads=size["heads"],
        encoder_ffn_dim=size["ffn"],
        decoder_ffn_dim=size["ffn"],
    )

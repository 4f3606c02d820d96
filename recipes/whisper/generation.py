"""Whisper's generation settings as the recipe decodes: greedy, the prompt, the suppressed
tokens and the first step of SpeechBrain's ``S2SWhisperGreedySearcher``, for the
transformers folders the converter and the export write.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


def declare_special_tokens(tokenizer):
    """Declare Whisper's ``<|...|>`` control tokens special, as hub tokenizers do; return it.

    A tokenizer built from a bare ``tokenizer.json`` knows them as added tokens
    only. transformers' ASR pipeline then writes a ``<|notimestamps|>`` the
    model emits into the text, and takes the first timestamp to follow
    ``<|endoftext|>``: it skips, and counts from, the declared ones.

    Example
    -------
    >>> from recipes.whisper.pretrained import packaged_model_dir, whisper_tokenizer
    >>> tokenizer = whisper_tokenizer(packaged_model_dir() / "tokenizer.json")
    >>> len(tokenizer.all_special_ids)
    1
    >>> tokenizer = declare_special_tokens(tokenizer)
    >>> len(tokenizer.all_special_ids), tokenizer.all_special_tokens[-1]
    (107, '<|notimestamps|>')
    """
    control = [
        token.content
        for _, token in sorted(tokenizer.added_tokens_decoder.items())
        if token.special and token.content.startswith("<|") and token.content.endswith("|>")
    ]
    tokenizer.add_special_tokens({"extra_special_tokens": control})
    return tokenizer


def greedy_suppress_tokens(tokenizer) -> list[int]:
    """The tokens SpeechBrain's ``S2SWhisperGreedySearcher`` never emits (by default).

    Its default ``suppress_tokens="-1"`` stands for SpeechBrain's non-speech
    symbols; the task, start-of-transcript and prompt tokens are added to them.

    Arguments
    ---------
    tokenizer : transformers tokenizer
        A Whisper tokenizer.

    Returns
    -------
    list of int
        Sorted token ids.
    """
    from speechbrain.integrations.huggingface.whisper import Whisper

    # SpeechBrain's own list (a cached property that only reads ``self.tokenizer``).
    non_speech = Whisper.non_speech_tokens.func(SimpleNamespace(tokenizer=tokenizer))
    specials = ("<|transcribe|>", "<|translate|>", "<|startoftranscript|>")
    specials += ("<|startofprev|>", "<|startoflm|>")
    return sorted(set(non_speech) | {tokenizer.convert_tokens_to_ids(t) for t in specials})


def whisper_generation_config(
    tokenizer,
    config,
    language: str | None = None,
    task: str = "transcribe",
    max_new_tokens: int | None = None,
):
    """A generation config under which transformers decodes as the recipe does.

    ``generate`` and the ASR pipeline then prompt with ``<|startoftranscript|>``
    (language and task tokens for multilingual models) and ``<|notimestamps|>``,
    suppress the tokens of :func:`greedy_suppress_tokens`, forbid a blank or
    end of text as first token, and search greedily: without ``num_beams=1``
    the pipeline of transformers 5 would run a beam search of 5.

    ``return_timestamps`` is left unset: a clip of up to 30 s is decoded without
    timestamps, as the recipe does, and a longer one with transformers' long-form
    decoding, which predicts timestamps to move from window to window (set to
    False, it refuses such clips: "more than 3000 mel input features").

    Arguments
    ---------
    tokenizer : transformers tokenizer
        The model's Whisper tokenizer.
    config : transformers.WhisperConfig
        The model's config (vocabulary size, positions, special ids).
    language : str, optional
        Language code forced for a multilingual model (None: detected);
        ignored for an English-only model.
    task : str
        ``"transcribe"`` or ``"translate"`` (multilingual models).
    max_new_tokens : int, optional
        Cap on generated tokens; by default the decoder's positions cap them.

    Returns
    -------
    transformers.GenerationConfig

    Example
    -------
    >>> from transformers import WhisperConfig
    >>> from recipes.whisper.pretrained import packaged_model_dir, whisper_tokenizer
    >>> tokenizer = whisper_tokenizer(packaged_model_dir() / "tokenizer.json")
    >>> gen = whisper_generation_config(tokenizer, WhisperConfig(vocab_size=51864))
    >>> gen.decoder_start_token_id, gen.no_timestamps_token_id, gen.num_beams
    (50257, 50362, 1)
    >>> gen.begin_suppress_tokens, gen.is_multilingual
    ([220, 50256], False)
    """
    from transformers import GenerationConfig
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    ids = tokenizer.convert_tokens_to_ids
    eos = ids("<|endoftext|>")
    multilingual = config.vocab_size >= 51865
    fields: dict[str, Any] = {
        "decoder_start_token_id": ids("<|startoftranscript|>"),
        "bos_token_id": config.bos_token_id,
        "eos_token_id": eos,
        "pad_token_id": config.pad_token_id if config.pad_token_id is not None else eos,
        "max_length": config.max_target_positions,
        "num_beams": 1,
        "do_sample": False,
        "no_timestamps_token_id": ids("<|notimestamps|>"),
        "prev_sot_token_id": ids("<|startofprev|>"),
        "max_initial_timestamp_index": 50,
        "is_multilingual": multilingual,
        "suppress_tokens": greedy_suppress_tokens(tokenizer),
        "begin_suppress_tokens": tokenizer.encode(" ", add_special_tokens=False) + [eos],
    }
    if max_new_tokens is not None:
        fields["max_new_tokens"] = max_new_tokens
    if multilingual:
        unknown = tokenizer.unk_token_id
        tokens = {f"<|{code}|>": ids(f"<|{code}|>") for code in LANGUAGES}
        fields["lang_to_id"] = {t: i for t, i in tokens.items() if i != unknown}
        fields["task_to_id"] = {t: ids(f"<|{t}|>") for t in ("transcribe", "translate")}
        fields["task"] = task
        if language is not None:
            fields["language"] = language
    return GenerationConfig(**fields)

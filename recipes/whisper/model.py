"""SpeechBrain's Whisper with a configurable encoder window.

Whisper pads or trims every input to 30 s: its encoder then runs over 1500
frames, whatever the utterance length. On a CPU that dominates the cost of a
training step on short utterances. :class:`WindowedWhisper` lets the encoder
run on a shorter window (say 10 s, 500 frames) by cropping the sinusoidal
positional table to its first frames. The weights are unchanged: the window
is a run-time setting, one for training and one for evaluation, so a model
trained on 10 s windows is still evaluated as Whisper is normally used (30 s).

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from speechbrain.integrations.huggingface.whisper import Whisper

FULL_WINDOW_S = 30.0


class WindowedWhisper(Whisper):
    """``speechbrain.integrations.huggingface.whisper.Whisper`` with an encoder window.

    Arguments
    ---------
    source : str
        A local transformers folder (e.g. the converted packaged tiny.en) or a
        hub id such as ``openai/whisper-small.en``.
    save_path : str
        Cache folder for hub downloads.
    train_window_s : float
        Seconds of audio the encoder sees in training mode (at most 30).
    eval_window_s : float
        Seconds of audio the encoder sees in eval mode (at most 30).
    language : str or None
        The language of the transcripts, ``"en"``: a multilingual model (Whisper
        base) is prompted with ``<|en|><|transcribe|>`` and SpeechBrain's
        ``WhisperASR`` does not detect the language; English-only models (``.en``)
        take no language token and ignore it. None: detected by ``WhisperASR``.
    **kwargs
        Passed to SpeechBrain's ``Whisper`` (``freeze``, ``task``...).

    Example
    -------
    >>> import tempfile
    >>> from recipes.whisper.random_init import save_random_whisper
    >>> folder = save_random_whisper(tempfile.mkdtemp())
    >>> whisper = WindowedWhisper(folder, tempfile.mkdtemp(), train_window_s=10.0)
    >>> whisper.window_frames(10.0), whisper.window_frames(30.0)
    (500, 1500)
    >>> bos = torch.tensor([[whisper.bos]])
    >>> enc, logits, _ = whisper.train()(torch.randn(1, 16000), bos)
    >>> enc.shape[1]
    500
    >>> enc, logits, _ = whisper.eval()(torch.randn(1, 16000), bos)
    >>> enc.shape[1]
    1500
    """

    def __init__(
        self,
        source: str,
        save_path: str,
        train_window_s: float = FULL_WINDOW_S,
        eval_window_s: float = FULL_WINDOW_S,
        language: str | None = "en",
        **kwargs,
    ) -> None:
        super().__init__(source, save_path, language=language, **kwargs)
        self.source = str(source)
        self.full_frames = self.model.config.max_source_positions
        self.full_window_s = self._n_samples / self.sampling_rate
        for name, value in (("train_window_s", train_window_s), ("eval_window_s", eval_window_s)):
            if not 0 < value <= self.full_window_s:
                raise ValueError(
                    f"{name}={value}: the encoder window must lie in (0, {self.full_window_s}] s, "
                    "the span of Whisper's positional table."
                )
        self.train_window_s = float(train_window_s)
        self.eval_window_s = float(eval_window_s)

    @property
    def window_s(self) -> float:
        """The window of the current mode (training or evaluation)."""
        return self.train_window_s if self.training else self.eval_window_s

    def window_frames(self, seconds: float) -> int:
        """Encoder frames for a window of ``seconds`` (1500 for 30 s)."""
        return round(self.full_frames * seconds / self.full_window_s)

    def _get_mel(self, wav: torch.Tensor) -> torch.Tensor:
        """Log-mel features of ``wav`` padded or trimmed to the current window."""
        frames = self.window_frames(self.window_s)
        samples = frames * 2 * self._hop_length  # two mel frames per encoder frame
        return self.log_mel_spectrogram(self.pad_or_trim(wav, length=samples))

    def log_mel_spectrogram(self, audio: torch.Tensor, padding: int = 0) -> torch.Tensor:
        """Whisper's log-mel features of each recording, floored per recording.

        SpeechBrain's version floors the features at their maximum minus 8 (log10 units)
        with one maximum for the whole batch: a loud batchmate lifts the floor of a quiet
        recording, so a transcript depends on the batch it is in. Whisper's own code and
        the transformers feature extractor take the maximum per recording, as here.

        Example
        -------
        >>> import tempfile
        >>> from recipes.whisper.random_init import save_random_whisper
        >>> whisper = WindowedWhisper(save_random_whisper(tempfile.mkdtemp()), tempfile.mkdtemp())
        >>> quiet, loud = 0.001 * torch.randn(1, 16000), torch.randn(1, 16000)
        >>> alone = whisper.log_mel_spectrogram(quiet)
        >>> batched = whisper.log_mel_spectrogram(torch.cat([quiet, loud]))
        >>> torch.equal(batched[:1], alone)
        True
        """
        if audio.dim() < 2:
            return super().log_mel_spectrogram(audio, padding)
        rows = [super(WindowedWhisper, self).log_mel_spectrogram(row, padding) for row in audio]
        return torch.stack(rows)

    def forward_encoder(self, mel: torch.Tensor) -> torch.Tensor:
        """Run the encoder over ``mel`` with the positional table cropped to fit."""
        with _cropped_positions(self.model.encoder, mel.shape[-1] // 2):
            return super().forward_encoder(mel)


@contextlib.contextmanager
def _cropped_positions(encoder: torch.nn.Module, frames: int) -> Iterator[None]:
    """Let a transformers ``WhisperEncoder`` accept ``frames`` positions for a while.

    The encoder checks its input length against ``config.max_source_positions``
    and adds its whole positional table; both are narrowed to ``frames`` and
    restored on exit. The positional table is frozen, so no gradient is lost.
    """
    full = encoder.embed_positions
    if frames == full.num_embeddings:
        yield
        return
    if frames > full.num_embeddings:
        raise ValueError(f"{frames} frames exceed Whisper's {full.num_embeddings} positions")
    config, previous = encoder.config, encoder.config.max_source_positions
    cropped = torch.nn.Embedding.from_pretrained(full.weight[:frames], freeze=True)
    try:
        encoder.embed_positions = cropped
        config.max_source_positions = frames
        yield
    finally:
        encoder.embed_positions = full
        config.max_source_positions = previous

"""Silero VAD (v6, 16 kHz) as a batched PyTorch module, and the frame metrics of a VAD.

Silero VAD reads 16 kHz audio in chunks of 512 samples (32 ms), each with the
64 samples before it as context, and gives one speech probability per chunk.
Per chunk: a fixed STFT (a Conv1d basis, 258 x 256, hop 128, after reflect
padding of 64 samples on the right) gives 4 frames of 129 magnitudes; four
Conv1d + ReLU (129 -> 128 -> 64 -> 64 -> 128, kernel 3, strides 1, 2, 2, 1)
reduce them to one 128-vector; an LSTM cell carries state from chunk to chunk;
dropout, ReLU and a 1x1 Conv1d give the logit. The package runs it chunk by
chunk; here every chunk's features are computed at once and the recurrent part
runs as an ``nn.LSTM`` over the chunk sequence (the same equations as
``nn.LSTMCell``, and the library's recurrent reach applies to its weights).

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

CHUNK = 512
"""Samples per decision at 16 kHz (32 ms)."""
CONTEXT = 64
"""Samples of the previous chunk prepended to each chunk."""


class SileroVAD(nn.Module):
    """Silero VAD's 16 kHz network; ``forward`` maps audio to one logit per 512-sample chunk.

    Arguments
    ---------
    hidden_size : int
        Width of the encoder output and of the LSTM (128 in the released model).
    dropout : float
        Dropout before the output layer (0.1, as in the released model; off in eval).

    Example
    -------
    >>> vad = SileroVAD().eval()
    >>> logits = vad(torch.randn(2, 16000))
    >>> logits.shape  # ceil(16000 / 512) chunks
    torch.Size([2, 32])
    """

    def __init__(self, hidden_size: int = 128, dropout: float = 0.1) -> None:
        super().__init__()
        # The STFT basis is fixed (not trained, never adapted) but part of the weights.
        self.register_buffer("stft_basis", torch.zeros(258, 1, 256))
        self.encoder = nn.Sequential(
            nn.Conv1d(129, 128, 3, padding=1), nn.ReLU(),
            nn.Conv1d(128, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(64, 64, 3, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(64, hidden_size, 3, padding=1), nn.ReLU(),
        )  # fmt: skip
        self.rnn = nn.LSTM(hidden_size, hidden_size, batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Conv1d(hidden_size, 1, 1)

    def chunk_features(self, wav: torch.Tensor) -> torch.Tensor:
        """``(batch, chunks, hidden)`` encoder features of ``(batch, samples)`` audio.

        The audio is zero-padded to whole chunks; the first chunk's context is zeros.
        """
        batch, samples = wav.shape
        chunks = -(-samples // CHUNK)
        wav = F.pad(wav, (CONTEXT, chunks * CHUNK - samples))
        windows = wav.unfold(1, CHUNK + CONTEXT, CHUNK)  # (batch, chunks, 576)
        x = F.pad(windows.reshape(batch * chunks, 1, -1), (0, CONTEXT), mode="reflect")
        spectrum = F.conv1d(x, self.stft_basis.to(x.dtype), stride=128)
        half = spectrum.shape[1] // 2
        magnitude = (spectrum[:, :half] ** 2 + spectrum[:, half:] ** 2).sqrt()
        features = self.encoder(magnitude)  # (batch * chunks, hidden, 1)
        return features.squeeze(-1).reshape(batch, chunks, -1)

    def forward(self, wav: torch.Tensor, state=None) -> torch.Tensor:
        """Speech logits ``(batch, chunks)`` of 16 kHz audio ``(batch, samples)``.

        The model is causal: padding after a recording only adds chunks after its
        end. ``state`` (the LSTM's ``(h, c)``) continues a stream; the last state
        is kept in ``self.last_state``.
        """
        features = self.chunk_features(wav)
        hidden, self.last_state = self.rnn(features, state)
        hidden = F.relu(self.dropout(hidden))
        return self.head(hidden.transpose(1, 2)).squeeze(1)


def speech_probabilities(model: nn.Module, wav: torch.Tensor) -> torch.Tensor:
    """``(batch, chunks)`` speech probabilities of 16 kHz audio ``(batch, samples)``: what the
    recipe scores and its inference interface thresholds into segments.

    Example
    -------
    >>> p = speech_probabilities(SileroVAD().eval(), torch.randn(1, 1024))
    >>> p.shape, bool(((p >= 0) & (p <= 1)).all())
    (torch.Size([1, 2]), True)
    """
    return model(wav).float().sigmoid()


def chunk_spans(decisions: torch.Tensor, resolution: float) -> torch.Tensor:
    """``(n, 2)`` start and end times of the runs of speech chunks in 1-D ``decisions``.

    A chunk ``i`` spans ``[i, i + 1) * resolution`` seconds: a run ends where its last
    chunk ends.

    Example
    -------
    >>> chunk_spans(torch.tensor([0, 1, 1, 0, 1]).bool(), 0.5)
    tensor([[0.5000, 1.5000],
            [2.0000, 2.5000]])
    """
    edges = F.pad(decisions.int().flatten(), (1, 1)).diff()
    starts, ends = (edges == 1).nonzero().flatten(), (edges == -1).nonzero().flatten()
    return torch.stack([starts, ends], dim=1).float() * resolution


def format_segments(segments: list[tuple[float, float]]) -> str:
    """Segments in the manifest's ``speech`` column format (what :func:`speech_segments` reads).

    Example
    -------
    >>> format_segments([(0.25, 0.5), (1.0, 1.75)])
    '0.250-0.500 1.000-1.750'
    >>> speech_segments(format_segments([(0.25, 0.5)]))
    [(0.25, 0.5)]
    """
    return " ".join(f"{start:.3f}-{end:.3f}" for start, end in segments)


def speech_segments(
    text: str, duration: float | None = None, tolerance: float = 0.05
) -> list[tuple[float, float]]:
    """The speech segments of a manifest's ``speech`` column, every one of them checked.

    Parameters
    ----------
    text : str
        Segments in seconds, ``START-END`` separated by spaces (empty: no speech).
    duration : float, optional
        The recording's length in seconds: no segment may end later (plus ``tolerance``).
    tolerance : float
        Seconds a segment may end past ``duration`` (rounding of the manifest).

    Returns
    -------
    list of (float, float)
        ``(start, end)`` of each segment, in the order listed.

    Raises
    ------
    ValueError
        Naming the first segment that is malformed, not finite, negative, reversed
        or past the end of the recording.

    Example
    -------
    >>> speech_segments("0.250-0.500 1.000-1.750", duration=2.0)
    [(0.25, 0.5), (1.0, 1.75)]
    >>> speech_segments("3.0-3.5 0.2-0.4", duration=2.0)
    Traceback (most recent call last):
        ...
    ValueError: speech segment '3.0-3.5' ends at 3.5 s, after the recording (2.0 s): ...
    """
    segments = []
    for item in text.split():
        start_text, sep, end_text = item.partition("-")
        try:
            start, end = float(start_text), float(end_text)
        except ValueError:
            start = end = None
        if not sep or start is None or end is None:
            raise ValueError(f"speech segment {item!r} is not START-END in seconds")
        if not (math.isfinite(start) and math.isfinite(end)):
            raise ValueError(f"speech segment {item!r} holds a value that is not a finite number")
        if start < 0 or end < start:
            raise ValueError(
                f"speech segment {item!r} is not a time span: it needs 0 <= START <= END"
            )
        if duration is not None and end > duration + tolerance:
            raise ValueError(
                f"speech segment {item!r} ends at {end} s, after the recording ({duration} s): "
                "the labels belong to another file"
            )
        segments.append((start, end))
    return segments


def chunk_labels(segments: list[tuple[float, float]], samples: int, sample_rate: int = 16000):
    """Per-chunk targets (1.0 speech, 0.0 not) of ``samples`` audio with ``segments`` of speech.

    A chunk is speech when at least half of its samples lie in a segment
    (``(start_s, end_s)`` in seconds); a partial last chunk counts its padding as
    non-speech.

    Example
    -------
    >>> chunk_labels([(0.0, 0.048)], 2048).tolist()  # 768 speech samples of 2048
    [1.0, 1.0, 0.0, 0.0]
    """
    chunks = -(-samples // CHUNK)
    active = torch.zeros(chunks * CHUNK)
    for start, end in segments:
        active[round(start * sample_rate) : min(round(end * sample_rate), samples)] = 1.0
    return (active.reshape(chunks, CHUNK).mean(1) >= 0.5).float()


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve: the chance a speech chunk scores above a non-speech one.

    Computed from ranks (Mann-Whitney U, ties counted half); NaN when one class is absent.

    Example
    -------
    >>> roc_auc(torch.tensor([0.1, 0.4, 0.35, 0.8]), torch.tensor([0, 0, 1, 1]))
    0.75
    """
    scores, labels = scores.double().flatten(), labels.bool().flatten()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    order = torch.argsort(scores)
    sorted_scores = scores[order]
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(1, len(scores) + 1, dtype=scores.dtype)
    # Ties share the mean of their ranks.
    _, inverse, counts = torch.unique_consecutive(
        sorted_scores, return_inverse=True, return_counts=True
    )
    ends = torch.cumsum(counts, 0).to(scores.dtype)
    mean_rank = ends - (counts.to(scores.dtype) - 1) / 2
    ranks[order] = mean_rank[inverse]
    u = float(ranks[labels].sum()) - positives * (positives + 1) / 2
    return u / (positives * negatives)


def f1_score(decisions: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Precision, recall and F1 of boolean speech decisions against labels.

    Example
    -------
    >>> f1_score(torch.tensor([1, 1, 0, 0]), torch.tensor([1, 0, 1, 0]))
    {'precision': 0.5, 'recall': 0.5, 'F1': 0.5}
    """
    decisions, labels = decisions.bool().flatten(), labels.bool().flatten()
    hits = int((decisions & labels).sum())
    precision = hits / max(int(decisions.sum()), 1)
    recall = hits / max(int(labels.sum()), 1)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "F1": f1}

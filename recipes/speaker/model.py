"""A GE2E speaker encoder with Resemblyzer's layout, its front end, loss and scoring.

Resemblyzer (``resemblyzer==0.1.4``, Apache-2.0) ships a d-vector encoder trained
with the generalised end-to-end (GE2E) loss of Wan et al. (2018): 40 power-mel
bands every 10 ms into a 3-layer LSTM of 256 units, a Linear layer of 256, ReLU,
and L2 normalisation. An utterance is embedded as the normalised mean of the
embeddings of 1.6 s windows taken 1/1.3 s apart. This module rebuilds that
pipeline in PyTorch (no librosa, no webrtcvad): :class:`MelFrontend`,
:class:`SpeakerEncoder`, :func:`embed_utterances`, and the training loss
:func:`ge2e_loss`. Resemblyzer also trims long silences with a VAD before
embedding; the recipes' audio has none, so that step is left out.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torchaudio
from torch import nn

SAMPLE_RATE = 16000
HOP_SAMPLES = 160  # 10 ms
PARTIAL_FRAMES = 160  # 1.6 s windows
PARTIAL_SAMPLES = PARTIAL_FRAMES * HOP_SAMPLES


class MelFrontend(nn.Module):
    """Power mel spectrogram as Resemblyzer computes it, after its volume normalisation.

    Quiet utterances are raised to ``target_dbfs`` (louder ones are left as they
    are); then 25 ms Hann windows every 10 ms, centred with zero padding, give 40
    mel bands (Slaney scale and area normalisation, as librosa's default).

    Arguments
    ---------
    sample_rate : int
        Audio sample rate.
    n_mels : int
        Mel bands.
    target_dbfs : float
        Loudness (mean power, dB full scale) quiet utterances are raised to.

    Example
    -------
    >>> frontend = MelFrontend()
    >>> frontend(torch.randn(2, 16000), torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 101, 40])
    """

    def __init__(
        self, sample_rate: int = SAMPLE_RATE, n_mels: int = 40, target_dbfs: float = -30.0
    ):
        super().__init__()
        self.target_dbfs = target_dbfs
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=sample_rate,
            n_fft=sample_rate * 25 // 1000,
            hop_length=sample_rate * 10 // 1000,
            n_mels=n_mels,
            power=2.0,
            norm="slaney",
            mel_scale="slaney",
            center=True,
            pad_mode="constant",
        )

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None) -> torch.Tensor:
        """``(batch, samples)`` waveforms (relative lengths ``wav_lens``) -> ``(batch, frames, n_mels)``."""
        return self.spectrogram(self.normalize_loudness(wavs, wav_lens))

    def normalize_loudness(
        self, wavs: torch.Tensor, wav_lens: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Raise each utterance quieter than ``target_dbfs`` to it; zero the padding."""
        lengths = _absolute_lengths(wavs, wav_lens)
        mask = torch.arange(wavs.shape[1], device=wavs.device)[None] < lengths[:, None]
        wavs = wavs * mask
        power = wavs.pow(2).sum(1) / lengths.clamp(min=1)
        change_db = self.target_dbfs - 10 * torch.log10(power.clamp(min=1e-20))
        gain = torch.where(change_db > 0, 10 ** (change_db / 20), torch.ones_like(change_db))
        gain = torch.where(power > 0, gain, torch.ones_like(gain))  # silence stays silence
        return wavs * gain[:, None]

    def spectrogram(self, wavs: torch.Tensor) -> torch.Tensor:
        """Power mel spectrogram ``(batch, frames, n_mels)``, computed in float32."""
        with torch.autocast(wavs.device.type, enabled=False):
            return self.mel(wavs.float()).transpose(1, 2)


def _absolute_lengths(wavs: torch.Tensor, wav_lens: torch.Tensor | None) -> torch.Tensor:
    if wav_lens is None:
        return torch.full((wavs.shape[0],), wavs.shape[1], device=wavs.device)
    return torch.round(wav_lens.to(wavs.device) * wavs.shape[1]).long()


class SpeakerEncoder(nn.Module):
    """GE2E d-vector encoder: LSTM layers, Linear, ReLU, L2 normalisation.

    Parameter names follow Resemblyzer's ``model_state``, so its weights load
    with ``load_state_dict(strict=True)``, the GE2E similarity scale and offset
    (``similarity_weight``, ``similarity_bias``) included.

    Arguments
    ---------
    n_mels : int
        Input mel bands.
    hidden_size : int
        LSTM units per layer.
    num_layers : int
        LSTM layers.
    embedding_size : int
        Embedding dimension.

    Example
    -------
    >>> encoder = SpeakerEncoder(n_mels=8, hidden_size=16, num_layers=2, embedding_size=4)
    >>> embeddings = encoder(torch.randn(3, 20, 8))
    >>> embeddings.shape, torch.allclose(embeddings.norm(dim=1), torch.ones(3))
    (torch.Size([3, 4]), True)
    """

    def __init__(
        self,
        n_mels: int = 40,
        hidden_size: int = 256,
        num_layers: int = 3,
        embedding_size: int = 256,
    ):
        super().__init__()
        self.lstm = nn.LSTM(n_mels, hidden_size, num_layers, batch_first=True)
        self.linear = nn.Linear(hidden_size, embedding_size)
        self.similarity_weight = nn.Parameter(torch.tensor([10.0]))
        self.similarity_bias = nn.Parameter(torch.tensor([-5.0]))

    def forward(self, mels: torch.Tensor) -> torch.Tensor:
        """``(windows, frames, n_mels)`` -> unit-norm ``(windows, embedding_size)``."""
        _, (hidden, _) = self.lstm(mels)
        return F.normalize(F.relu(self.linear(hidden[-1])), dim=1)


def partial_starts(num_samples: int, rate: float = 1.3, min_coverage: float = 0.75) -> list[int]:
    """First frames of the 1.6 s windows that cover an utterance, as Resemblyzer places them.

    Windows start every ``1 / rate`` seconds; the last one is kept when at least
    ``min_coverage`` of it holds audio (or when it is the only one).

    Example
    -------
    >>> partial_starts(16000)  # 1 s: one window, zero-padded
    [0]
    >>> partial_starts(48000)  # 3 s: windows at 0, 0.77 and 1.54 s
    [0, 77, 154]
    """
    frames = math.ceil((num_samples + 1) / HOP_SAMPLES)
    step = round(SAMPLE_RATE / rate / HOP_SAMPLES)
    if not 0 < step <= PARTIAL_FRAMES:
        raise ValueError(f"rate {rate} gives a window step outside 1..{PARTIAL_FRAMES} frames")
    starts = list(range(0, max(1, frames - PARTIAL_FRAMES + step + 1), step))
    last = starts[-1] * HOP_SAMPLES
    coverage = (num_samples - last) / PARTIAL_SAMPLES
    if coverage < min_coverage and len(starts) > 1:
        starts.pop()
    return starts


def embed_utterances(
    encoder: nn.Module,
    mels: torch.Tensor,
    wav_lens: torch.Tensor,
    num_samples: int,
    rate: float = 1.3,
    min_coverage: float = 0.75,
) -> torch.Tensor:
    """One embedding per utterance: the normalised mean over its 1.6 s windows.

    Arguments
    ---------
    encoder : nn.Module
        Maps ``(windows, PARTIAL_FRAMES, n_mels)`` to unit-norm embeddings.
    mels : torch.Tensor
        ``(batch, frames, n_mels)`` from :class:`MelFrontend` of a padded batch.
    wav_lens : torch.Tensor
        Relative lengths of the waveforms.
    num_samples : int
        Samples of the padded waveforms.
    rate, min_coverage : float
        Window placement, see :func:`partial_starts`.

    Returns
    -------
    torch.Tensor
        ``(batch, embedding_size)``, unit norm.

    Example
    -------
    >>> encoder = SpeakerEncoder(n_mels=40, hidden_size=8, num_layers=1, embedding_size=4)
    >>> wavs, lens = torch.randn(2, 40000), torch.tensor([1.0, 0.4])
    >>> embed_utterances(encoder, MelFrontend()(wavs, lens), lens, 40000).shape
    torch.Size([2, 4])
    """
    windows, owners = [], []
    lengths = torch.round(wav_lens * num_samples).long().tolist()
    for row, length in enumerate(lengths):
        for start in partial_starts(length, rate, min_coverage):
            window = mels[row, start : start + PARTIAL_FRAMES]
            if window.shape[0] < PARTIAL_FRAMES:  # beyond the batch: zeros, like padded audio
                window = F.pad(window, (0, 0, 0, PARTIAL_FRAMES - window.shape[0]))
            windows.append(window)
            owners.append(row)
    partial = encoder(torch.stack(windows))
    index = torch.tensor(owners, device=partial.device)
    sums = torch.zeros(len(lengths), partial.shape[1], device=partial.device, dtype=partial.dtype)
    sums.index_add_(0, index, partial)
    return F.normalize(sums, dim=1)


def embed_waveforms(
    frontend: MelFrontend, encoder: nn.Module, wavs: torch.Tensor, wav_lens: torch.Tensor
) -> torch.Tensor:
    """Unit-norm embeddings of a padded batch of waveforms (relative lengths ``wav_lens``):
    loudness, mel spectrogram, then :func:`embed_utterances`. What the recipe scores and
    what its inference interface computes.

    Example
    -------
    >>> encoder = SpeakerEncoder(n_mels=40, hidden_size=8, num_layers=1, embedding_size=4)
    >>> embed_waveforms(MelFrontend(), encoder, torch.randn(2, 20000), torch.ones(2)).shape
    torch.Size([2, 4])
    """
    wavs = frontend.normalize_loudness(wavs, wav_lens)
    return embed_utterances(encoder, frontend.spectrogram(wavs), wav_lens, wavs.shape[1])


def eer_threshold(positive: torch.Tensor, negative: torch.Tensor) -> float:
    """The score at which false rejections and false acceptances are equal: the decision
    threshold the recipe chooses on its validation trials.

    Example
    -------
    >>> t = eer_threshold(torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0.1, 0.2, 0.3]))
    >>> 0.3 <= t <= 0.7
    True
    """
    from speechbrain.utils.metric_stats import EER

    if len(positive) == 0 or len(negative) == 0:
        raise ValueError("A threshold needs target and non-target trials; one kind is missing.")
    return float(EER(positive.float(), negative.float())[1])


def ge2e_loss(
    embeddings: torch.Tensor, speakers: int, weight: torch.Tensor, bias: torch.Tensor
) -> torch.Tensor:
    """GE2E softmax loss of a batch of ``speakers`` x ``utterances`` embeddings.

    Each embedding is scored against every speaker's centroid (its own speaker's
    centroid without itself) as ``weight * cosine + bias``, and the loss is the
    cross-entropy of picking its own speaker.

    Arguments
    ---------
    embeddings : torch.Tensor
        ``(speakers * utterances, dim)``, grouped by speaker.
    speakers : int
        Speakers in the batch (each with the same number of utterances, at least 2).
    weight, bias : torch.Tensor
        The similarity scale (kept positive) and offset.

    Example
    -------
    >>> e = F.normalize(torch.tensor([[1.0, 0.1], [1.0, -0.1], [0.1, 1.0], [-0.1, 1.0]]), dim=1)
    >>> ge2e_loss(e, 2, torch.tensor(10.0), torch.tensor(-5.0)) < 0.01
    tensor(True)
    >>> ge2e_loss(e[[0, 2, 1, 3]], 2, torch.tensor(10.0), torch.tensor(-5.0)) > 1
    tensor(True)
    """
    per_speaker = embeddings.shape[0] // speakers
    if per_speaker < 2 or per_speaker * speakers != embeddings.shape[0]:
        raise ValueError(
            f"GE2E needs the same number (>= 2) of utterances per speaker; got "
            f"{embeddings.shape[0]} embeddings for {speakers} speakers."
        )
    grouped = embeddings.reshape(speakers, per_speaker, -1)
    total = grouped.sum(1, keepdim=True)
    centroids = F.normalize(total.squeeze(1) / per_speaker, dim=-1)  # (S, D)
    own = F.normalize((total - grouped) / (per_speaker - 1), dim=-1)  # (S, U, D)
    cosine = torch.einsum("sud,kd->suk", grouped, centroids)
    same = torch.eye(speakers, dtype=torch.bool, device=embeddings.device)[:, None, :]
    cosine = torch.where(same, (grouped * own).sum(-1, keepdim=True), cosine)
    logits = weight.clamp(min=1e-6) * cosine + bias
    labels = torch.arange(speakers, device=embeddings.device).repeat_interleave(per_speaker)
    return F.cross_entropy(logits.reshape(-1, speakers), labels)


def trial_scores(
    embeddings: dict[str, torch.Tensor], trials: list[tuple[int, str, str]]
) -> torch.Tensor:
    """Cosine score of every trial ``(label, enrol ID, test ID)``, in order.

    Example
    -------
    >>> emb = {"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([0.8, 0.6]), "c": torch.tensor([0.0, 1.0])}
    >>> trial_scores(emb, [(1, "a", "b"), (0, "a", "c")])
    tensor([0.8000, 0.0000])
    """
    missing = sorted({u for _, e, t in trials for u in (e, t) if u not in embeddings})
    if missing:
        raise KeyError(f"Trials name utterances that were not embedded: {missing[:5]}")
    ids = sorted(embeddings)
    index = {uid: i for i, uid in enumerate(ids)}
    table = F.normalize(torch.stack([embeddings[uid] for uid in ids]).float(), dim=1)
    enrol = table[[index[e] for _, e, _ in trials]]
    test = table[[index[t] for _, _, t in trials]]
    return (enrol * test).sum(1)


def split_by_label(
    scores: torch.Tensor, trials: list[tuple[int, str, str]]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The scores of the target trials and those of the non-target trials.

    Example
    -------
    >>> split_by_label(torch.tensor([0.8, 0.0, 0.5]), [(1, "a", "b"), (0, "a", "c"), (1, "b", "d")])
    (tensor([0.8000, 0.5000]), tensor([0.]))
    """
    labels = torch.tensor([label for label, _, _ in trials], dtype=torch.bool)
    return scores[labels], scores[~labels]


def eer_and_min_dcf(
    positive: torch.Tensor, negative: torch.Tensor, p_target: float = 0.01
) -> tuple[float, float]:
    """Equal error rate (%) and normalised minimum detection cost (``c_miss = c_fa = 1``).

    SpeechBrain's :func:`~speechbrain.utils.metric_stats.EER` and ``minDCF``, the
    latter divided by ``min(p_target, 1 - p_target)`` as in NIST and VoxCeleb
    evaluations, so that 1.0 is the cost of a system that always says no.

    Example
    -------
    >>> eer, cost = eer_and_min_dcf(torch.tensor([0.9, 0.8, 0.3]), torch.tensor([0.1, 0.2, 0.4]))
    >>> round(eer, 2), round(cost, 3)  # one target in three missed at no false alarm
    (33.33, 0.333)
    """
    from speechbrain.utils.metric_stats import EER, minDCF

    if len(positive) == 0 or len(negative) == 0:
        raise ValueError("EER needs target and non-target trials; a trial list has only one kind.")
    eer, _ = EER(positive, negative)
    cost, _ = minDCF(positive, negative, p_target=p_target)
    return 100.0 * float(eer), float(cost) / min(p_target, 1 - p_target)

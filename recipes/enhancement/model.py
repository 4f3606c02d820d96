"""NSNet2 speech enhancement in PyTorch: its STFT front end, mask network, and SI-SNR.

NSNet2 (Braun and Tashev, 2020; the baseline of Microsoft's DNS challenge,
model CC-BY-4.0) predicts a suppression gain per time-frequency bin from
log-power spectra: Linear(161 -> 400) + ReLU, two GRU layers of 400 units,
Linear(400 -> 600) + ReLU, Linear(600 -> 600) + ReLU, Linear(600 -> 161) +
sigmoid. At 16 kHz it frames audio in 20 ms square-root Hann windows every
10 ms (FFT of 320 points); the gain, floored at -80 dB, multiplies the noisy
spectrum, and overlap-add with the same window gives the enhanced audio.
:class:`NSNet2` holds the network (parameter names chosen so the converted
ONNX weights load strictly), :class:`NSNet2Enhancer` the whole chain.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import torch
from torch import nn

WINDOW = 320  # 20 ms at 16 kHz
HOP = 160
BINS = WINDOW // 2 + 1


class NSNet2(nn.Module):
    """The mask network: log-power spectra ``(batch, frames, 161)`` -> gains in (0, 1).

    Example
    -------
    >>> net = NSNet2(hidden_size=8, fc_size=12)
    >>> net(torch.randn(2, 5, 161)).shape
    torch.Size([2, 5, 161])
    """

    def __init__(self, bins: int = BINS, hidden_size: int = 400, fc_size: int = 600):
        super().__init__()
        self.fc_in = nn.Linear(bins, hidden_size)
        self.gru1 = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.gru2 = nn.GRU(hidden_size, hidden_size, batch_first=True)
        self.fc_out = nn.Sequential(
            nn.Linear(hidden_size, fc_size),
            nn.ReLU(),
            nn.Linear(fc_size, fc_size),
            nn.ReLU(),
            nn.Linear(fc_size, bins),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.fc_in(features))
        x, _ = self.gru1(x)
        x, _ = self.gru2(x)
        return torch.sigmoid(self.fc_out(x))


def _window(device=None) -> torch.Tensor:
    """Square root of the symmetric Hann window of NSNet2's reference code (``np.hanning``)."""
    return torch.hann_window(WINDOW, periodic=False, dtype=torch.float64, device=device).sqrt()


def stft(wavs: torch.Tensor) -> torch.Tensor:
    """Complex spectra ``(batch, frames, 161)``: frame k covers samples ``[k * HOP, k * HOP + WINDOW)``.

    The end is zero-padded so that every sample is in two frames, as in NSNet2's code.

    Example
    -------
    >>> stft(torch.randn(2, 16000)).shape
    torch.Size([2, 100, 161])
    """
    frames = -(-(wavs.shape[-1] + WINDOW - HOP) // HOP) - 1
    padded = torch.nn.functional.pad(wavs, (0, (frames - 1) * HOP + WINDOW - wavs.shape[-1]))
    window = _window(wavs.device).to(wavs.dtype)
    return torch.fft.rfft(padded.unfold(-1, WINDOW, HOP) * window, n=WINDOW)


def istft(spectra: torch.Tensor, length: int) -> torch.Tensor:
    """Overlap-add of the windowed inverse FFTs, cut to ``length`` samples."""
    frames = torch.fft.irfft(spectra, n=WINDOW) * _window(spectra.device).to(spectra.real.dtype)
    count = frames.shape[-2]
    out = torch.nn.functional.fold(
        frames.transpose(-1, -2),
        output_size=(1, (count - 1) * HOP + WINDOW),
        kernel_size=(1, WINDOW),
        stride=(1, HOP),
    )
    return out.reshape(frames.shape[0], -1)[:, :length]


def log_power(spectra: torch.Tensor) -> torch.Tensor:
    """NSNet2's features: ``log10`` of the power, floored at 1e-12."""
    return torch.log10((spectra.real**2 + spectra.imag**2).clamp(min=1e-12))


class NSNet2Enhancer(nn.Module):
    """Noisy waveforms -> enhanced waveforms through a mask network such as :class:`NSNet2`.

    Arguments
    ---------
    mask_net : nn.Module
        Maps log-power spectra to gains.
    min_gain_db : float
        Floor of the suppression gain.

    Example
    -------
    >>> enhancer = NSNet2Enhancer(NSNet2(hidden_size=8, fc_size=8))
    >>> enhancer(torch.randn(2, 8000)).shape
    torch.Size([2, 8000])
    """

    def __init__(self, mask_net: nn.Module, min_gain_db: float = -80.0):
        super().__init__()
        self.mask_net = mask_net
        self.min_gain = 10 ** (min_gain_db / 20)

    def forward(self, wavs: torch.Tensor) -> torch.Tensor:
        with torch.autocast(wavs.device.type, enabled=False):
            spectra = stft(wavs.float())
        gains = self.mask_net(log_power(spectra)).float().clamp(min=self.min_gain, max=1.0)
        return istft(spectra * gains, wavs.shape[-1])


def enhance_waveforms(
    enhancer: nn.Module, wavs: torch.Tensor, wav_lens: torch.Tensor
) -> torch.Tensor:
    """Enhanced audio of a padded batch (relative lengths ``wav_lens``), in float32 and zero
    past each length: what the recipe scores and what its inference interface writes.

    The GRUs run forward in time and the STFT pads with zeros, as a batch is padded, so a
    file enhanced alone gives what its row of a batch gives.

    Example
    -------
    >>> enhancer = NSNet2Enhancer(NSNet2(hidden_size=8, fc_size=8))
    >>> wavs = torch.randn(2, 8000)
    >>> wavs[1, 4000:] = 0.0  # a batch is padded with zeros
    >>> out = enhance_waveforms(enhancer, wavs, torch.tensor([1.0, 0.5]))
    >>> out.shape, bool(out[1, 4000:].eq(0).all())
    (torch.Size([2, 8000]), True)
    >>> alone = enhance_waveforms(enhancer, wavs[1:, :4000], torch.ones(1))
    >>> torch.allclose(alone[0], out[1, :4000], atol=1e-6)
    True
    """
    lengths = torch.round(wav_lens * wavs.shape[-1]).long()
    inside = torch.arange(wavs.shape[-1], device=wavs.device)[None] < lengths[:, None]
    return enhancer(wavs).float() * inside


def si_snr(estimate: torch.Tensor, reference: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Scale-invariant signal-to-noise ratio (dB) of each row over its first ``lengths`` samples.

    Both signals are made zero-mean; the reference is scaled to best match the
    estimate, so a louder or quieter estimate scores the same.

    Example
    -------
    >>> clean = torch.sin(torch.arange(1000.0))[None]
    >>> noisy = clean + 0.1 * torch.cos(3 * torch.arange(1000.0))[None]
    >>> si_snr(0.5 * clean, clean, torch.tensor([1000])) > 80
    tensor([True])
    >>> round(float(si_snr(noisy, clean, torch.tensor([1000]))), 1)
    20.0
    """
    mask = torch.arange(estimate.shape[-1], device=estimate.device)[None] < lengths[:, None]
    count = lengths.clamp(min=1)[:, None].to(estimate.dtype)
    estimate = estimate * mask
    reference = reference * mask
    estimate = (estimate - estimate.sum(-1, keepdim=True) / count) * mask
    reference = (reference - reference.sum(-1, keepdim=True) / count) * mask
    scale = (estimate * reference).sum(-1, keepdim=True) / (
        reference.pow(2).sum(-1, keepdim=True) + 1e-8
    )
    target = scale * reference
    noise = estimate - target
    return 10 * torch.log10((target.pow(2).sum(-1) + 1e-8) / (noise.pow(2).sum(-1) + 1e-8))

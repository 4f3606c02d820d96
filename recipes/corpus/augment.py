"""Numpy signal degradations for the target domains of the generated corpus.

Every random function takes an explicit :class:`numpy.random.Generator`, so the
result is a pure function of the input and the generator's state. Signals are
1-D float arrays in [-1, 1].
"""

from __future__ import annotations

import numpy as np
from scipy.signal import butter, fftconvolve, resample_poly, sosfilt

TELEPHONE_RATE = 8000
TELEPHONE_BAND = (300.0, 3400.0)


def white_noise(length: int, rng: np.random.Generator) -> np.ndarray:
    """Gaussian white noise of unit variance.

    Parameters
    ----------
    length : int
        Number of samples.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        ``float64`` noise.
    """
    return rng.standard_normal(length)


def pink_noise(length: int, rng: np.random.Generator) -> np.ndarray:
    """Pink (1/f power spectrum) noise of unit variance, shaped in the frequency domain.

    Parameters
    ----------
    length : int
        Number of samples.
    rng : numpy.random.Generator
        Source of randomness.

    Returns
    -------
    numpy.ndarray
        ``float64`` noise.
    """
    spectrum = np.fft.rfft(rng.standard_normal(length))
    bins = np.arange(len(spectrum), dtype=np.float64)
    bins[0] = 1.0
    noise = np.fft.irfft(spectrum / np.sqrt(bins), length)
    return noise / (np.std(noise) + 1e-12)


def add_noise(
    signal: np.ndarray,
    snr_db: float,
    rng: np.random.Generator,
    color: str = "white",
    active: np.ndarray | None = None,
) -> np.ndarray:
    """Add white or pink noise at a given signal-to-noise ratio.

    The SNR is measured over the whole signal, pauses included, or over the
    samples where ``active`` is True (the speech of a recording with long silences).

    Parameters
    ----------
    signal : numpy.ndarray
        Clean signal.
    snr_db : float
        Signal-to-noise ratio in dB.
    rng : numpy.random.Generator
        Source of randomness.
    color : str
        ``"white"`` or ``"pink"``.
    active : numpy.ndarray, optional
        Boolean mask, as long as ``signal``, of the samples the signal power is measured on.

    Returns
    -------
    numpy.ndarray
        The noisy signal (``float64``).
    """
    generators = {"white": white_noise, "pink": pink_noise}
    if color not in generators:
        raise ValueError(f"noise color must be one of {sorted(generators)}, got {color!r}")
    noise = generators[color](len(signal), rng)
    measured = signal if active is None or not active.any() else signal[active]
    signal_power = float(np.mean(np.square(measured, dtype=np.float64)))
    noise_power = float(np.mean(np.square(noise))) + 1e-20
    scale = np.sqrt(signal_power / (noise_power * 10.0 ** (snr_db / 10.0)))
    return signal + scale * noise


def room_impulse_response(
    rt60: float, rng: np.random.Generator, sample_rate: int = 16000
) -> np.ndarray:
    """Synthetic room impulse response: a direct path and an exponentially decaying noise tail.

    The tail's energy falls by 60 dB after ``rt60`` seconds (Polack's
    statistical model of a diffuse field). The response has unit energy.

    Parameters
    ----------
    rt60 : float
        Reverberation time in seconds.
    rng : numpy.random.Generator
        Source of randomness.
    sample_rate : int
        Sample rate in Hz.

    Returns
    -------
    numpy.ndarray
        ``float64`` impulse response of ``rt60`` seconds.
    """
    if rt60 <= 0:
        raise ValueError(f"rt60 must be positive, got {rt60}")
    times = np.arange(max(1, int(rt60 * sample_rate))) / sample_rate
    response = rng.standard_normal(len(times)) * np.exp(-3.0 * np.log(10.0) * times / rt60)
    response[0] = 1.0
    return response / np.sqrt(np.sum(np.square(response)))


def reverberate(
    signal: np.ndarray, rt60: float, rng: np.random.Generator, sample_rate: int = 16000
) -> np.ndarray:
    """Convolve with a synthetic room impulse response, keeping the signal's length.

    Parameters
    ----------
    signal : numpy.ndarray
        Dry signal.
    rt60 : float
        Reverberation time in seconds.
    rng : numpy.random.Generator
        Source of randomness for the impulse response.
    sample_rate : int
        Sample rate in Hz.

    Returns
    -------
    numpy.ndarray
        The reverberant signal (``float64``).
    """
    response = room_impulse_response(rt60, rng, sample_rate)
    return fftconvolve(np.asarray(signal, dtype=np.float64), response)[: len(signal)]


def mu_law_quantize(signal: np.ndarray, bits: int = 8, mu: float = 255.0) -> np.ndarray:
    """Round-trip through a mu-law codec (G.711 style companding and quantisation).

    Parameters
    ----------
    signal : numpy.ndarray
        Signal in [-1, 1] (values outside are clipped).
    bits : int
        Bits per coded sample.
    mu : float
        Companding constant.

    Returns
    -------
    numpy.ndarray
        The decoded signal (``float64``).
    """
    clipped = np.clip(signal, -1.0, 1.0)
    compressed = np.sign(clipped) * np.log1p(mu * np.abs(clipped)) / np.log1p(mu)
    levels = 2 ** (bits - 1) - 1
    quantized = np.round(compressed * levels) / levels
    return np.sign(quantized) * np.expm1(np.abs(quantized) * np.log1p(mu)) / mu


def telephone_channel(
    signal: np.ndarray, sample_rate: int = 16000, mu_law: bool = True
) -> np.ndarray:
    """Narrow-band telephone channel.

    The signal is resampled to 8 kHz, band-passed to 300-3400 Hz (6th-order
    Butterworth), optionally mu-law coded, and resampled back.

    Parameters
    ----------
    signal : numpy.ndarray
        Wide-band signal.
    sample_rate : int
        Sample rate of ``signal`` and of the result, in Hz.
    mu_law : bool
        Whether to apply 8-bit mu-law coding.

    Returns
    -------
    numpy.ndarray
        The band-limited signal (``float64``), as long as ``signal``.
    """
    narrow = resample_poly(np.asarray(signal, dtype=np.float64), TELEPHONE_RATE, sample_rate)
    band_pass = butter(6, TELEPHONE_BAND, btype="bandpass", fs=TELEPHONE_RATE, output="sos")
    narrow = sosfilt(band_pass, narrow)
    if mu_law:
        narrow = mu_law_quantize(narrow)
    return resample_poly(narrow, sample_rate, TELEPHONE_RATE)[: len(signal)]


def limit_peak(signal: np.ndarray, peak: float = 0.99) -> np.ndarray:
    """Scale the signal down, if needed, so that its largest magnitude is ``peak``.

    Parameters
    ----------
    signal : numpy.ndarray
        Signal.
    peak : float
        Largest allowed magnitude.

    Returns
    -------
    numpy.ndarray
        The signal, unchanged if it was already within ``peak``.
    """
    largest = float(np.max(np.abs(signal), initial=0.0))
    return signal * (peak / largest) if largest > peak else signal

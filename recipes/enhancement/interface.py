"""Speech enhancement with what a run of ``recipes/enhancement/train.py`` trained.

A SpeechBrain ``SpectralMaskEnhancement`` whose enhancement is the recipe's own
(:func:`recipes.enhancement.model.enhance_waveforms`: NSNet2's STFT, the mask network,
adapted or not, its gain floor and overlap-add), on audio read by the recipes' loader
at the model's sample rate (resampled and downmixed as needed).

    from recipes.enhancement.interface import SpeechEnhancer
    enhancer = SpeechEnhancer.from_hparams(source="results/enhancement/lora/noisy/inference")
    enhanced = enhancer.enhance_file("noisy.wav", "enhanced.wav")

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import soundfile
import torch
import torchaudio
from speechbrain.inference.enhancement import SpectralMaskEnhancement

from recipes.adapter_sets import adapted_model_of, using_adapters
from recipes.audio import load_audio
from recipes.enhancement.model import enhance_waveforms
from recipes.io import write_bytes

#: The sample rate of the files :meth:`SpeechEnhancer.enhance_file` writes.
OUTPUT_RATE = 16000


def wav_bytes(wav: torch.Tensor, sample_rate: int) -> bytes:
    """A mono 16-bit PCM WAV file of ``wav`` (floats in [-1, 1], clipped beyond).

    Example
    -------
    >>> data = wav_bytes(torch.tensor([0.0, 0.5, 2.0]), 16000)
    >>> audio, rate = soundfile.read(io.BytesIO(data), dtype="int16")
    >>> audio.tolist(), rate
    ([0, 16384, 32767], 16000)
    """
    samples = (wav.detach().float().cpu().clamp(-1.0, 1.0) * 32768).round().clamp(-32768, 32767)
    buffer = io.BytesIO()
    soundfile.write(buffer, samples.short().numpy(), sample_rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


class SpeechEnhancer(SpectralMaskEnhancement):
    """``enhance_batch``/``enhance_file`` computing what the recipe scored.

    Modules: ``enhance_model`` (:class:`recipes.enhancement.model.NSNet2Enhancer`, or its
    ``AdaptedModel``), waveforms in, waveforms out. Hyperparameters: ``sample_rate``, the
    rate the model reads audio at.
    """

    HPARAMS_NEEDED: ClassVar[list[str]] = ["sample_rate"]
    MODULES_NEEDED: ClassVar[list[str]] = ["enhance_model"]

    @staticmethod
    def base_sizes(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """The template's model sizes for a base checkpoint (:class:`NSNet2` tensors).

        Example
        -------
        >>> from recipes.enhancement.model import NSNet2
        >>> SpeechEnhancer.base_sizes(NSNet2(hidden_size=8, fc_size=12).state_dict())
        {'hidden_size': 8, 'fc_size': 12}
        """
        return {
            "hidden_size": state["fc_in.weight"].shape[0],
            "fc_size": state["fc_out.0.weight"].shape[0],
        }

    def enhance_batch(
        self, noisy: torch.Tensor, lengths: torch.Tensor | None = None, adapters=None
    ) -> torch.Tensor:
        """Enhanced ``(batch, samples)`` audio at ``sample_rate``, zero past each relative
        length in ``lengths`` (all 1 by default); with ``adapters``, row ``i`` goes through
        the adapter set ``adapters[i]`` (None: the base model), see
        :func:`recipes.adapter_sets.using_adapters`."""
        noisy = noisy.to(self.device).float()
        if noisy.dim() == 1:
            noisy = noisy.unsqueeze(0)
        if lengths is None:
            lengths = torch.ones(noisy.shape[0])
        with torch.no_grad(), using_adapters(adapted_model_of(self), adapters):
            return enhance_waveforms(self.mods.enhance_model, noisy, lengths.to(self.device))

    def load_audio(self, path, savedir=None) -> torch.Tensor:
        """``path`` at the model's sample rate, through the recipes' one audio loader."""
        del savedir
        return load_audio(str(path), self.hparams.sample_rate)

    def enhance_file(
        self, filename: str | os.PathLike, output_filename: str | os.PathLike | None = None
    ) -> torch.Tensor:
        """The enhanced audio of one file, at ``sample_rate``; with ``output_filename``, also
        written there as a 16 kHz, 16-bit WAV file (atomically: the old file or the new)."""
        enhanced = self.enhance_batch(self.load_audio(filename).unsqueeze(0))[0]
        if output_filename is not None:
            self.write_file(enhanced, output_filename)
        return enhanced

    def write_file(self, enhanced: torch.Tensor, output_filename: str | os.PathLike) -> None:
        """Write enhanced audio (at ``sample_rate``) as a 16 kHz, 16-bit WAV file, atomically."""
        write_bytes(Path(output_filename), wav_bytes(self.to_output_rate(enhanced), OUTPUT_RATE))

    def to_output_rate(self, wav: torch.Tensor) -> torch.Tensor:
        """``wav``, at the model's rate, resampled to :data:`OUTPUT_RATE` if it differs."""
        rate = int(self.hparams.sample_rate)
        if rate == OUTPUT_RATE:
            return wav
        return torchaudio.functional.resample(wav.cpu(), rate, OUTPUT_RATE)

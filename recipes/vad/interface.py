"""Voice activity detection with what a run of ``recipes/vad/train.py`` trained.

A SpeechBrain ``VAD`` whose speech probabilities are the recipe's (Silero VAD's 32 ms
chunks over the whole recording, adapted or not) and whose segments come from the
run's threshold, with hysteresis and smoothing stored in the inference folder.

    from recipes.vad.interface import SpeechDetector
    vad = SpeechDetector.from_hparams(source="results/vad/lora/noisy/inference")
    segments = vad.get_speech_segments("meeting.wav")  # (n, 2) start and end, seconds

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

import torch
from speechbrain.inference.VAD import VAD

from recipes.adapter_sets import adapted_model_of, using_adapters
from recipes.audio import load_audio
from recipes.vad.model import chunk_spans, speech_probabilities


class SpeechDetector(VAD):
    """``get_speech_segments(file)`` with the recipe's model and the run's settings.

    Modules: ``model`` (Silero VAD, or its ``AdaptedModel``). Hyperparameters:
    ``sample_rate``, ``time_resolution`` (seconds per probability), ``threshold``
    (a chunk starts speech at this probability, as the recipe scores),
    ``deactivation_threshold`` (speech goes on until the probability falls below
    it), ``close_th`` (pauses shorter than this are bridged, seconds) and
    ``len_th`` (shorter segments are dropped, seconds).
    """

    MODULES_NEEDED: ClassVar[list[str]] = ["model"]
    HPARAMS_NEEDED: ClassVar[list[str]] = ["sample_rate", "time_resolution", "threshold"]

    @staticmethod
    def base_sizes(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """The template's model sizes for a base checkpoint (:class:`SileroVAD` tensors).

        Example
        -------
        >>> from recipes.vad.model import SileroVAD
        >>> SpeechDetector.base_sizes(SileroVAD(hidden_size=16).state_dict())
        {'hidden_size': 16}
        """
        return {"hidden_size": state["rnn.weight_hh_l0"].shape[1]}

    def get_speech_prob_chunk(self, wavs, wav_lens=None, adapters=None):
        """``(batch, chunks, 1)`` speech probabilities of ``(batch, samples)`` audio; with
        ``adapters``, row ``i`` goes through the adapter set ``adapters[i]`` (None: the
        base model), see :func:`recipes.adapter_sets.using_adapters`."""
        del wav_lens  # the model is causal: padding after a recording only adds chunks
        with torch.no_grad(), using_adapters(adapted_model_of(self), adapters):
            return speech_probabilities(self.mods.model, wavs.to(self.device).float()).unsqueeze(-1)

    def get_speech_prob_file(self, audio_file, **kwargs):
        """``(1, chunks, 1)`` probabilities of a whole recording, read by the recipes' loader
        and run in one pass, as the recipe evaluates it."""
        del kwargs  # no chunking: the recurrent state runs through the whole recording
        wav = load_audio(str(audio_file), self.hparams.sample_rate)
        return self.get_speech_prob_chunk(wav.unsqueeze(0))

    def get_speech_segments(self, audio_file, threshold: float | None = None, **kwargs):
        """``(n, 2)`` start and end (seconds) of each speech segment of ``audio_file``.

        ``threshold`` overrides the run's; the deactivation threshold keeps its distance
        below it. Other SpeechBrain options (energy VAD, double check) are not used.
        """
        del kwargs
        wav = load_audio(str(audio_file), self.hparams.sample_rate)
        probabilities = self.get_speech_prob_chunk(wav.unsqueeze(0))[0, :, 0]
        return self.segments_of(probabilities, wav.shape[0] / self.hparams.sample_rate, threshold)

    def segments_of(
        self, probabilities: torch.Tensor, duration: float, threshold: float | None = None
    ) -> torch.Tensor:
        """``(n, 2)`` start and end (seconds) of the speech segments that the chunk
        probabilities (1-D) of a recording of ``duration`` seconds give; ``threshold``:
        as in :meth:`get_speech_segments`."""
        hp = self.hparams
        start = hp.threshold if threshold is None else threshold
        stop = max(start - (hp.threshold - hp.deactivation_threshold), 0.0)
        decisions = self.apply_threshold(probabilities.view(1, -1, 1), start, stop)[0, :, 0]
        boundaries = chunk_spans(decisions, hp.time_resolution)
        boundaries = self.merge_close_segments(boundaries, close_th=hp.close_th)
        boundaries = self.remove_short_segments(boundaries, len_th=hp.len_th)
        return boundaries.clamp(max=duration)

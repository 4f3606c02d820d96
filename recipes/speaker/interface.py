"""Speaker verification with what a run of ``recipes/speaker/train.py`` trained.

A SpeechBrain ``SpeakerRecognition`` whose embeddings are the recipe's (Resemblyzer's
loudness normalisation and mel front end, the mean of 1.6 s windows through the
encoder, adapted or not) and whose decision threshold is the one the run chose on
its validation trials (equal error rate), stored in the inference folder.

    from recipes.speaker.interface import SpeakerVerifier
    verifier = SpeakerVerifier.from_hparams(source="results/speaker/lora/telephone/inference")
    score, same = verifier.verify_files("a.wav", "b.wav")

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import ClassVar

import torch
from speechbrain.inference.speaker import SpeakerRecognition

from recipes.adapter_sets import adapted_model_of, using_adapters
from recipes.audio import load_audio
from recipes.speaker.model import embed_waveforms, partial_starts


class SpeakerVerifier(SpeakerRecognition):
    """``verify_files``/``verify_batch`` with the recipe's embeddings and chosen threshold.

    Modules: ``compute_features`` (:class:`recipes.speaker.model.MelFrontend`) and
    ``embedding_model`` (the encoder, or its ``AdaptedModel``). Hyperparameters:
    ``sample_rate`` and ``threshold`` (cosine score above which two recordings are
    said to be of one speaker).
    """

    MODULES_NEEDED: ClassVar[list[str]] = ["compute_features", "embedding_model"]

    @staticmethod
    def base_sizes(state: Mapping[str, torch.Tensor]) -> dict[str, int]:
        """The template's model sizes for a base checkpoint (:class:`SpeakerEncoder` tensors).

        Example
        -------
        >>> from recipes.speaker.model import SpeakerEncoder
        >>> SpeakerVerifier.base_sizes(SpeakerEncoder(40, 8, 2, 4).state_dict())
        {'n_mels': 40, 'hidden_size': 8, 'num_layers': 2, 'embedding_size': 4}
        """
        first = state["lstm.weight_ih_l0"]
        return {
            "n_mels": first.shape[1],
            "hidden_size": first.shape[0] // 4,
            "num_layers": sum(key.startswith("lstm.weight_ih_l") for key in state),
            "embedding_size": state["linear.weight"].shape[0],
        }

    def encode_batch(self, wavs, wav_lens=None, normalize=False, adapters=None):
        """``(batch, 1, embedding_size)`` unit-norm embeddings of ``(batch, samples)`` audio;
        with ``adapters``, row ``i`` goes through the adapter set ``adapters[i]`` (None: the
        base model), see :func:`recipes.adapter_sets.using_adapters`."""
        del normalize  # embeddings are unit norm already
        wavs = wavs.to(self.device).float()
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=self.device)
        windows = None if adapters is None else self._window_adapters(adapters, wav_lens, wavs)
        with torch.no_grad(), using_adapters(adapted_model_of(self), windows):
            embeddings = embed_waveforms(
                self.mods.compute_features,
                self.mods.embedding_model,
                wavs,
                wav_lens.to(self.device),
            )
        return embeddings.unsqueeze(1)

    @staticmethod
    def _window_adapters(
        adapters: Sequence[str | None], wav_lens: torch.Tensor, wavs: torch.Tensor
    ) -> list[str | None]:
        """Each row's adapter set repeated for each of its 1.6 s windows (the encoder's batch)."""
        lengths = torch.round(wav_lens * wavs.shape[1]).long().tolist()
        return [name for name, n in zip(adapters, lengths, strict=True) for _ in partial_starts(n)]

    def verify_batch(self, wavs1, wavs2, wav1_lens=None, wav2_lens=None, threshold=None):
        """Cosine scores and decisions (True: same speaker) at ``threshold``, by default the
        one chosen on validation."""
        threshold = self.hparams.threshold if threshold is None else threshold
        return super().verify_batch(wavs1, wavs2, wav1_lens, wav2_lens, threshold)

    def load_audio(self, path, savedir=None):
        """``path`` at the model's sample rate, through the recipes' one audio loader."""
        del savedir
        return load_audio(str(path), self.hparams.sample_rate)

    def embed_file(self, path: str) -> torch.Tensor:
        """The ``(embedding_size,)`` embedding of one recording."""
        return self.encode_batch(self.load_audio(path).unsqueeze(0))[0, 0]

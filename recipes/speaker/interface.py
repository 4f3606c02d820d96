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

from typing import ClassVar

import torch
from speechbrain.inference.speaker import SpeakerRecognition

from recipes.audio import load_audio
from recipes.speaker.model import embed_waveforms


class SpeakerVerifier(SpeakerRecognition):
    """``verify_files``/``verify_batch`` with the recipe's embeddings and chosen threshold.

    Modules: ``compute_features`` (:class:`recipes.speaker.model.MelFrontend`) and
    ``embedding_model`` (the encoder, or its ``AdaptedModel``). Hyperparameters:
    ``sample_rate`` and ``threshold`` (cosine score above which two recordings are
    said to be of one speaker).
    """

    MODULES_NEEDED: ClassVar[list[str]] = ["compute_features", "embedding_model"]

    def encode_batch(self, wavs, wav_lens=None, normalize=False):
        """``(batch, 1, embedding_size)`` unit-norm embeddings of ``(batch, samples)`` audio."""
        del normalize  # embeddings are unit norm already
        wavs = wavs.to(self.device).float()
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=self.device)
        with torch.no_grad():
            embeddings = embed_waveforms(
                self.mods.compute_features,
                self.mods.embedding_model,
                wavs,
                wav_lens.to(self.device),
            )
        return embeddings.unsqueeze(1)

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

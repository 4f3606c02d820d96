"""A CTC acoustic model assembled from SpeechBrain parts declared in YAML.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import torch
from torch import nn


class CTCModel(nn.Module):
    """Normalise features, encode them, and project to CTC token logits.

    One module that holds the whole network, so that ``AdaptedModel`` can
    wrap it, a ``Pretrainer`` can load it from one file, and layer names
    (``frontend.*``, ``encoder.*``, ``head.*``) read well in YAML patterns.

    Arguments
    ---------
    normalize : torch.nn.Module
        Called as ``normalize(feats, lengths)``, e.g. SpeechBrain's
        ``InputNormalization(norm_type="sentence")``.
    frontend : torch.nn.Module
        Convolutional front-end, e.g. ``ConvolutionFrontEnd`` (sub-samples time).
    encoder : torch.nn.Module
        A SpeechBrain ``TransformerASR`` (its ``encode`` is used) or any
        module called as ``encoder(x, lengths)``.
    head : torch.nn.Module
        Linear projection to the token inventory (blank included).

    Example
    -------
    >>> from speechbrain.lobes.models.transformer.TransformerASR import TransformerASR
    >>> from speechbrain.processing.features import InputNormalization
    >>> model = CTCModel(
    ...     normalize=InputNormalization(norm_type="sentence"),
    ...     frontend=torch.nn.Identity(),
    ...     encoder=TransformerASR(
    ...         tgt_vocab=5, input_size=20, d_model=16, nhead=2, num_encoder_layers=1,
    ...         num_decoder_layers=0, d_ffn=32, encoder_module="conformer",
    ...         attention_type="RelPosMHAXL", normalize_before=True, causal=False),
    ...     head=torch.nn.Linear(16, 5),
    ... )
    >>> model(torch.randn(2, 50, 20), torch.tensor([1.0, 0.8])).shape
    torch.Size([2, 50, 5])
    """

    def __init__(
        self, normalize: nn.Module, frontend: nn.Module, encoder: nn.Module, head: nn.Module
    ) -> None:
        super().__init__()
        self.normalize = normalize
        self.frontend = frontend
        self.encoder = encoder
        self.head = head

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Return logits ``[batch, frames, tokens]`` for features ``[batch, time, feats]``."""
        x = self.frontend(self.normalize(feats, lengths))
        encode = getattr(self.encoder, "encode", self.encoder)
        return self.head(encode(x, lengths))


class WaveformCTC(nn.Module):
    """Waveforms to CTC log-probabilities: what ``speechbrain.inference.ASR.EncoderASR``
    calls as its ``encoder`` (``encoder(wavs, wav_lens)``).

    Arguments
    ---------
    features : torch.nn.Module
        Waveforms ``[batch, samples]`` to features, e.g. SpeechBrain's ``Fbank``.
    model : torch.nn.Module
        Called as ``model(feats, lengths)``: a ``CTCModel`` or an ``AdaptedModel`` of one.

    Example
    -------
    >>> from speechbrain.lobes.features import Fbank
    >>> net = WaveformCTC(Fbank(n_mels=20), lambda feats, lengths: feats[..., :5])
    >>> net(torch.randn(2, 16000), torch.tensor([1.0, 0.5])).shape
    torch.Size([2, 101, 5])
    """

    def __init__(self, features: nn.Module, model: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.model = model

    def forward(self, wavs: torch.Tensor, wav_lens: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``[batch, frames, tokens]``."""
        return torch.log_softmax(self.model(self.features(wavs), wav_lens), dim=-1)


def ctc_text_encoder(tokens: str, blank_index: int = 0):
    """SpeechBrain's ``CTCTextEncoder`` over a character inventory, blank at ``blank_index``.

    Example
    -------
    >>> encoder = ctc_text_encoder(" AB")
    >>> len(encoder), "".join(encoder.decode_ndim([2, 3, 1]))
    (4, 'AB ')
    """
    from speechbrain.dataio.encoder import CTCTextEncoder

    encoder = CTCTextEncoder()
    encoder.insert_blank(index=blank_index)
    for char in tokens:
        encoder.add_label(char)
    encoder.expect_len(len(encoder))
    return encoder

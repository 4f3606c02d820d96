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

"""Houlsby bottleneck adapter after a Linear or convolution layer (and SpeechBrain's name for it).

Houlsby et al., "Parameter-Efficient Transfer Learning for NLP", 2019,
https://arxiv.org/abs/1902.00751: ``h + up(act(down(h)))`` with ``h`` the frozen
layer's output. Unlike ``speechbrain.nnet.adapters.HoulsbyAdapterLinear``, the
up projection starts at zero, so the model is unchanged at insertion, and the
wrapped layer's parameters really are frozen. The bottleneck is nonlinear, so
this adapter cannot be merged into the base weights.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from adapters.base import CONV_TYPES, LINEAR_TYPES, Adapter


class Houlsby(Adapter):
    """Residual bottleneck on the output of a Linear, Conv1d or Conv2d.

    Arguments
    ---------
    target_module : torch.nn.Module
        The pretrained layer, frozen. For convolutions the bottleneck acts on
        channels (pointwise convolutions).
    projection_size : int
        Width of the bottleneck.
    activation : callable
        Class (or factory) of the nonlinearity, e.g. ``torch.nn.GELU``.
    dropout : float
        Dropout inside the bottleneck.
    bias : bool
        Whether the down and up projections have biases (SpeechBrain's argument).

    Example
    -------
    >>> base = torch.nn.Linear(16, 32)
    >>> adapter = Houlsby(base, projection_size=4)
    >>> x = torch.randn(2, 7, 16)
    >>> torch.equal(adapter(x), base(x))
    True
    >>> sum(p.numel() for p in adapter.parameters() if p.requires_grad)
    292
    """

    def __init__(
        self,
        target_module: nn.Module,
        projection_size: int = 32,
        activation: Callable[[], nn.Module] = nn.GELU,
        dropout: float = 0.0,
        bias: bool = True,
    ) -> None:
        super().__init__(target_module)
        if not isinstance(target_module, LINEAR_TYPES + CONV_TYPES):
            raise TypeError(
                f"{type(self).__name__} adapts nn.Linear and nn.Conv1d/2d/3d, not "
                f"{type(target_module).__name__}; choose other target_layers."
            )
        if not isinstance(projection_size, int) or projection_size < 1:
            raise ValueError(
                f"projection_size must be a positive integer, got {projection_size!r}."
            )
        weight = target_module.weight
        convs = {3: nn.Conv1d, 4: nn.Conv2d, 5: nn.Conv3d}  # pointwise, by weight dimensions
        project = nn.Linear if weight.dim() == 2 else partial(convs[weight.dim()], kernel_size=1)
        factory = {"device": weight.device, "dtype": weight.dtype, "bias": bias}
        self.down = project(weight.shape[0], projection_size, **factory)
        self.up = project(projection_size, weight.shape[0], **factory)
        nn.init.zeros_(self.up.weight)
        if bias:
            nn.init.zeros_(self.up.bias)
        self.activation = activation()
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Frozen layer output plus the bottleneck's residual."""
        h = self.base_layer(x)
        return h + self.up(self.dropout(self.activation(self.down(h))))


class HoulsbyAdapterLinear(Houlsby):
    """Drop-in name for ``speechbrain.nnet.adapters.HoulsbyAdapterLinear``.

    Takes SpeechBrain's arguments (``target_linear``, ``projection_size``,
    ``activation`` defaulting to Swish, i.e. ``nn.SiLU``, ``bias``), so the tutorial's YAML runs after changing only
    the module path; the up projection starts at zero (identity at insertion).

    Example
    -------
    >>> layer = HoulsbyAdapterLinear(torch.nn.Linear(8, 8), projection_size=2, bias=False)
    >>> layer.up.bias is None
    True
    """

    def __init__(self, target_linear: nn.Module, projection_size: int,
                 activation: Callable[[], nn.Module] = nn.SiLU, bias: bool = True) -> None:  # fmt: skip
        if not isinstance(target_linear, LINEAR_TYPES):
            raise TypeError(
                f"HoulsbyAdapterLinear adapts nn.Linear, not {type(target_linear).__name__}."
            )
        super().__init__(target_linear, projection_size, activation, bias=bias)

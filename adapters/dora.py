"""DoRA: weight-decomposed low-rank adaptation.

Liu et al., "DoRA: Weight-Decomposed Low-Rank Adaptation", 2024,
https://arxiv.org/abs/2402.09353. The adapted weight is
``m * (W + s B A) / ||W + s B A||`` with the norm taken per output unit and
``m`` a trainable magnitude initialised to ``||W||`` (so the layer is unchanged
at insertion). As the paper recommends, the norm is treated as a constant in
the backward pass, which spares the gradient of the full weight: the forward
is computed as ``m / ||W'|| * (x W^T + s x A^T B^T) + b``.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from adapters.base import LINEAR_TYPES
from adapters.lora import LoRA


def _unit_norm(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output unit's weights, shaped ``[out]``."""
    return weight.flatten(1).norm(dim=1)


class DoRA(LoRA):
    """Magnitude and low-rank direction update of a Linear, Conv1d or Conv2d.

    Takes the arguments of ``LoRA``.

    Example
    -------
    >>> base = torch.nn.Linear(16, 8)
    >>> dora = DoRA(base, rank=4)
    >>> x = torch.randn(2, 16)
    >>> torch.allclose(dora(x), base(x), atol=1e-6)
    True
    >>> dora.magnitude.shape
    torch.Size([8])
    """

    def __init__(
        self,
        target_module: nn.Module,
        rank: int = 8,
        alpha: float | None = None,
        dropout: float = 0.0,
        use_rslora: bool = False,
        init: str = "kaiming",
    ) -> None:
        super().__init__(target_module, rank, alpha, dropout, use_rslora, init)
        self.magnitude = nn.Parameter(_unit_norm(target_module.weight.detach()).clone())

    def _scale(self) -> torch.Tensor:
        """``m / ||W + s B A||`` with the norm detached, shaped ``[out]``."""
        norm = _unit_norm(self.base_layer.weight + self.lowrank_delta()).detach()
        return self.magnitude / norm

    def delta_weight(self) -> torch.Tensor:
        """The change to the base weight: ``m * W' / ||W'|| - W``."""
        weight = self.base_layer.weight
        adapted = weight + self.lowrank_delta()
        shape = (-1,) + (1,) * (weight.dim() - 1)
        return self.magnitude.view(shape) * adapted / _unit_norm(adapted).view(shape) - weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rescaled base-plus-low-rank output, then the base bias."""
        layer = self.base_layer
        if self.merged:
            return layer(x)
        linear = isinstance(layer, LINEAR_TYPES)
        base = F.linear(x, layer.weight) if linear else layer._conv_forward(x, layer.weight, None)
        shape = (-1,) if linear else (-1,) + (1,) * (x.dim() - 2)
        out = self._scale().view(shape) * (base + self.lowrank_branch(x))
        if layer.bias is not None:
            out = out + layer.bias.view(shape)
        return out

"""PoolLoRA: LoRA whose down projection sees average-pooled input features.

The custom adapter of SpeechBrain's adapters tutorial, made general and
mergeable. Input features are averaged in consecutive groups of ``stride``
before the down projection, which divides the size of ``A`` and the cost of
the down projection by ``stride``. The update stays linear in the input, so
it folds into the base weight: ``W + s * B @ A @ P`` with ``P`` the fixed
``[ceil(in / stride), in]`` pooling matrix.

A feature size that is not a multiple of ``stride`` leaves a last, smaller
group: it is averaged over the features it has (not zero-padded), so every
input feature carries the same weight within its group.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from adapters.base import LINEAR_TYPES
from adapters.lora import LoRA, reuse_last


def pool_features(x: torch.Tensor, stride: int, dim: int) -> torch.Tensor:
    """Average groups of ``stride`` consecutive entries along ``dim``.

    The last group is shorter when the size is not a multiple of ``stride``.

    Example
    -------
    >>> pool_features(torch.tensor([[1.0, 3.0, 5.0, 7.0, 9.0]]), stride=2, dim=-1)
    tensor([[2., 6., 9.]])
    """
    x = x.movedim(dim, -1)
    size = x.shape[-1]
    full = size - size % stride
    pooled = x[..., :full].unflatten(-1, (full // stride, stride)).mean(-1)
    if full < size:
        pooled = torch.cat([pooled, x[..., full:].mean(-1, keepdim=True)], dim=-1)
    return pooled.movedim(-1, dim)


class PoolLoRA(LoRA):
    """LoRA on average-pooled input features (Linear, Conv1d, Conv2d).

    Arguments
    ---------
    target_module : torch.nn.Module
        The pretrained layer; features are pooled along the last dimension
        for Linear and along channels for convolutions (``groups=1``).
    stride : int
        Pooling factor of the input features.
    **lora_kwargs
        ``rank``, ``alpha``, ``dropout``, ``use_rslora``, ``init``, ``freeze_a``,
        ``saved_input_dtype``, as for ``LoRA``.

    Example
    -------
    >>> base = torch.nn.Linear(15, 8)
    >>> adapter = PoolLoRA(base, stride=4, rank=2)
    >>> adapter.lora_A.shape  # ceil(15 / 4) = 4 pooled features
    torch.Size([2, 4])
    >>> x = torch.randn(3, 15)
    >>> torch.equal(adapter(x), base(x))
    True
    """

    principal_init = False  # init="pissa" is refused: see LoRA

    def __init__(self, target_module: nn.Module, stride: int = 2, **lora_kwargs: Any) -> None:
        if not isinstance(stride, int) or stride < 1:
            raise ValueError(f"PoolLoRA stride must be a positive integer, got {stride!r}.")
        self.stride = stride
        super().__init__(target_module, **lora_kwargs)
        if self.groups != 1:
            raise ValueError(
                f"PoolLoRA pools input channels across groups, so it cannot adapt a grouped "
                f"convolution (groups={self.groups}); use LoRA or DoRA, or exclude_layers."
            )
        in_features = target_module.weight.shape[1]
        group = torch.arange(in_features) // stride
        counts = torch.bincount(group).to(target_module.weight.dtype)
        # A @ P == A[:, group] / |group|: the pooling matrix without building it.
        self.register_buffer("_group", group, persistent=False)
        self.register_buffer("_inverse_count", 1.0 / counts[group], persistent=False)

    def _down_features(self, in_features: int) -> int:
        return math.ceil(in_features / self.stride)

    def _down_input(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features; layers that pool one input alike (q, k, v) share one copy."""
        dim = -1 if isinstance(self.base_layer, LINEAR_TYPES) else 1
        return reuse_last(
            x, ("pool", self.stride, dim), lambda t: pool_features(t, self.stride, dim)
        )

    def _expand_A(self, lora_a: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (lora_a.dim() - 2)
        return lora_a[:, self._group] * self._inverse_count.view(shape)

    def extra_repr(self) -> str:
        return f"stride={self.stride}, {super().extra_repr()}"

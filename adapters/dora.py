"""DoRA: weight-decomposed low-rank adaptation.

Liu et al. 2024, https://arxiv.org/abs/2402.09353: the weight is ``m W' / ||W'||``
with ``W' = W + s B A``, the norm per output unit, ``m`` trainable and starting at
``||W||`` (identity at insertion). As the paper recommends, the norm is a constant
in backward, which spares the full weight gradient.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from adapters.base import LINEAR_TYPES
from adapters.lora import (
    LoRA,
    cast_shared,
    compute_dtype,
    grads_from_kept,
    keep_for_lowrank,
    like_param,
    linear_into_fresh,
    needs_grad,
)


def _unit_norm(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output unit's weights, shaped ``[out]``."""
    return weight.flatten(1).norm(dim=1)


class _FusedDoRALinear(torch.autograd.Function):
    """``m / ||W'|| * (x W'^T) + b`` with ``W' = W + s B A``, in one matmul.

    The backward (norm constant) takes ``dx`` from the merged weight, ``m``'s gradient
    from the saved pre-scale output, and ``A``, ``B``'s from rank-r products. Under
    autocast, ``W'``, its norm and the scale stay in the parameters' precision and the
    matmuls run in the autocast dtype, as for ``_FusedLoRALinear``, which it follows in
    what it keeps for the rank-r gradients too (``x``, or ``A x`` with ``A`` frozen).
    """

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, magnitude, scaling, saved_dtype=None):
        dtype = compute_dtype(x)
        ctx.needs = tuple(ctx.needs_input_grad[3:5])
        with torch.autocast(x.device.type, enabled=False):
            merged = torch.addmm(weight, lora_b, lora_a, alpha=scaling)
            norm = _unit_norm(merged)
            scale = magnitude / norm
            xc = cast_shared(x, dtype)
            kept = keep_for_lowrank(xc, lora_a, ctx.needs, dtype, saved_dtype)
            pre = linear_into_fresh(xc, merged.to(dtype))
            scale_c = scale.to(dtype)
            out = pre * scale_c if bias is None else torch.addcmul(bias.to(dtype), pre, scale_c)
        ctx.save_for_backward(kept, pre, weight, lora_a, lora_b, norm, scale)
        ctx.scaling, ctx.dtype, ctx.x_dtype = scaling, dtype, x.dtype
        ctx.bias_dtype = None if bias is None else bias.dtype
        return out

    @staticmethod
    def backward(ctx, grad):
        kept, pre, weight, lora_a, lora_b, norm, scale = ctx.saved_tensors
        dtype = ctx.dtype
        with torch.autocast(grad.device.type, enabled=False):
            g = grad.reshape(-1, grad.shape[-1]).to(dtype)
            g_pre = g * scale.to(dtype)
            grad_x = grad_bias = grad_m = None
            if ctx.needs_input_grad[0]:
                merged = torch.addmm(weight, lora_b, lora_a, alpha=ctx.scaling).to(dtype)
                grad_x = (g_pre @ merged).view(*grad.shape[:-1], weight.shape[1])
                grad_x = grad_x.to(ctx.x_dtype)
            if ctx.bias_dtype is not None and ctx.needs_input_grad[2]:
                grad_bias = g.sum(0, dtype=torch.float32).to(ctx.bias_dtype)
            if ctx.needs_input_grad[5]:
                products = (g * pre.reshape(g.shape)).sum(0, dtype=torch.float32)
                grad_m = products.div_(norm).to(norm.dtype)
            grad_a, grad_b = grads_from_kept(g_pre, kept, lora_a, lora_b, ctx.scaling, ctx.needs)
        return (
            grad_x, None, grad_bias, like_param(grad_a, lora_a), like_param(grad_b, lora_b),
            grad_m, None, None,
        )  # fmt: skip


class DoRA(LoRA):
    """Magnitude and low-rank direction update of a Linear or convolution layer.

    Takes the arguments of ``LoRA`` (``rank``, ``alpha``, ``dropout``, ``use_rslora``,
    ``init``, ``freeze_a``, ``saved_input_dtype``).

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

    principal_init = False  # init="pissa" is refused: see LoRA

    def __init__(self, target_module: nn.Module, **lora_kwargs: Any) -> None:
        super().__init__(target_module, **lora_kwargs)
        self.magnitude = nn.Parameter(_unit_norm(target_module.weight.detach()).clone())

    def _scale(self, adapted: torch.Tensor) -> torch.Tensor:
        """``m / ||W'||`` for an adapted weight ``W'``, the norm detached, shaped ``[out]``."""
        return self.magnitude / _unit_norm(adapted).detach()

    def adapted_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """``m W' / ||W'||``, ``W' = weight + s B A``, the norm constant in backward (as the
        forward of a wrapped layer): what raw-weight targets read."""
        adapted = weight + self.lowrank_delta()
        return self._scale(adapted).view((-1,) + (1,) * (weight.dim() - 1)) * adapted

    def delta_weight(self) -> torch.Tensor:
        """The change to the base weight: ``m * W' / ||W'|| - W``."""
        weight = self.base_layer.weight
        return self.adapted_weight(weight) - weight

    def mixed_forward(
        self, x: torch.Tensor, groups: list[tuple[torch.Tensor, dict[str, torch.Tensor] | None]]
    ) -> torch.Tensor:
        """One batch, one adapter set per group of samples (dim 0): the base product
        once for all, each group rescaled by its own magnitude and direction."""
        if self.merged:
            raise RuntimeError("Unmerge the adapters before running a mixed batch.")
        layer = self.base_layer
        linear = isinstance(layer, LINEAR_TYPES)
        base = F.linear(x, layer.weight) if linear else layer._conv_forward(x, layer.weight, None)
        shape = (-1,) if linear else (-1,) + (1,) * (x.dim() - 2)
        out = base.clone()
        for index, params in groups:
            if params is None:
                continue
            norm = _unit_norm(layer.weight + self.lowrank_delta(params))
            scale = (params["magnitude"] / norm).view(shape)
            group = scale * (base[index] + self.lowrank_branch(x[index], params))
            out[index] = group.to(out.dtype)
        if layer.bias is not None:
            out = out + layer.bias.view(shape)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rescaled base-plus-low-rank output, then the bias (fused on a frozen Linear)."""
        layer = self.base_layer
        if self.merged:
            return layer(x)
        if self.fusable():
            if not needs_grad(x, self.lora_A, self.lora_B, self.magnitude):
                return F.linear(x, self.adapted_weight(layer.weight), layer.bias)
            return _FusedDoRALinear.apply(
                x, layer.weight, layer.bias, self.lora_A, self.lora_B, self.magnitude,
                self.scaling, self._saved_dtype(),
            )  # fmt: skip
        linear = isinstance(layer, LINEAR_TYPES)
        base = F.linear(x, layer.weight) if linear else layer._conv_forward(x, layer.weight, None)
        shape = (-1,) if linear else (-1,) + (1,) * (x.dim() - 2)
        scale = self._scale(layer.weight + self.lowrank_delta())
        out = scale.view(shape) * (base + self.lowrank_branch(x))
        if layer.bias is not None:
            out = out + layer.bias.view(shape)
        return out

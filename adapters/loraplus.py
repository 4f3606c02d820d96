"""LoRA+: the up-projection B learns faster than everything else.

Hayou, Ghosh and Yu (LoRA+, ICML 2024) show that with one learning rate for A and
B, LoRA's feature learning is inefficient at large width, and that a rate for B
``ratio`` times A's (they use 2 to 16) trains faster and better. Here the
trainable parameters are split into two optimizer groups; the group of B
matrices carries ``lr_scale``, which :func:`apply_lr_scales` applies after a
scheduler has set one rate for every group (SpeechBrain's schedulers read group
0's rate and write it to all groups).

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import torch
from torch import nn

#: The name of the up-projection (zero at start) in the LoRA family (LoRA, PoolLoRA, DoRA).
B_NAME = "lora_B"


def loraplus_groups(module: nn.Module, ratio: float = 1.0) -> list[dict]:
    """The trainable parameters of ``module`` as optimizer groups for LoRA+.

    Arguments
    ---------
    module : torch.nn.Module
        The adapted model.
    ratio : float
        B's learning rate over the others' (1: one group, plain LoRA).

    Returns
    -------
    list of dict
        ``[{"params": others}, {"params": B matrices, "lr_scale": ratio}]``, or one
        group when ``ratio`` is 1. Group 0 is the one schedulers read.

    Example
    -------
    >>> from adapters import LoRA
    >>> model = nn.Sequential(LoRA(nn.Linear(8, 8), rank=2), nn.LayerNorm(8))
    >>> groups = loraplus_groups(model, ratio=16)
    >>> [len(g["params"]) for g in groups], groups[1]["lr_scale"]
    ([3, 1], 16.0)
    >>> len(loraplus_groups(model))
    1
    """
    trainable = [(name, p) for name, p in module.named_parameters() if p.requires_grad]
    if ratio == 1:
        return [{"params": [p for _, p in trainable]}]
    if ratio <= 0:
        raise ValueError(f"loraplus_lr_ratio must be positive, not {ratio}.")
    up = [p for name, p in trainable if name.rsplit(".", 1)[-1] == B_NAME]
    if not up:
        raise ValueError(
            f"loraplus_lr_ratio is {ratio}, but the model has no trainable LoRA B matrix "
            f"('{B_NAME}'): LoRA+ applies to LoRA, PoolLoRA and DoRA. Set loraplus_lr_ratio "
            "to 1 for this adapter."
        )
    ids = {id(p) for p in up}
    return [
        {"params": [p for _, p in trainable if id(p) not in ids]},
        {"params": up, "lr_scale": float(ratio)},
    ]


def apply_lr_scales(optimizer: torch.optim.Optimizer) -> None:
    """Give each group group 0's rate times its ``lr_scale``: after a scheduler has set
    the rate (or after the optimizer's construction). Applying it twice changes nothing.

    Example
    -------
    >>> w, b = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    >>> opt = torch.optim.SGD([{"params": [w]}, {"params": [b], "lr_scale": 4.0}], lr=0.1)
    >>> apply_lr_scales(opt); apply_lr_scales(opt)
    >>> [g["lr"] for g in opt.param_groups]
    [0.1, 0.4]
    """
    rate = optimizer.param_groups[0]["lr"]
    for group in optimizer.param_groups[1:]:
        if "lr_scale" in group:
            group["lr"] = rate * group["lr_scale"]

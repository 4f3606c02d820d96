"""Build HF PEFT adapter layers (LoRA, LoHa, LoKr, IA3) from plain YAML kwargs.

SpeechBrain's tutorial names ``!name:peft.tuners.lora.layer.Linear`` as the
``adapter_class``; since peft 0.19 that layer also requires a ``config``
object, which YAML kwargs cannot provide. ``peft_adapter`` builds the config
from the kwargs and lets PEFT wrap the layer, so the result trains, saves,
loads and merges through ``AdaptedModel`` like this library's adapters.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

from typing import Any

from torch import nn

from adapters.base import accept_plain_keys

#: PEFT method name -> name of its config class in the ``peft`` package.
PEFT_CONFIGS = {
    "lora": "LoraConfig",
    "loha": "LoHaConfig",
    "lokr": "LoKrConfig",
    "ia3": "IA3Config",
}


def peft_adapter(target_module: nn.Module, method: str = "lora", **config: Any) -> nn.Module:
    """Wrap ``target_module`` in a PEFT adapter layer.

    Arguments
    ---------
    target_module : torch.nn.Module
        The pretrained layer (a Linear or convolution PEFT supports).
    method : str
        One of ``"lora"``, ``"loha"``, ``"lokr"``, ``"ia3"``.
    **config
        Fields of the PEFT config, e.g. ``r=8, lora_alpha=16`` for LoRA or
        ``r=8, alpha=8`` for LoHa/LoKr. ``alpha`` is accepted for LoRA too
        (as ``lora_alpha``), so one YAML serves several methods.

    Returns
    -------
    torch.nn.Module
        PEFT's layer, with the base frozen and the adapter ``"default"``
        trainable; it has PEFT's ``merge()`` and ``unmerge()``.

    Example
    -------
    >>> import torch
    >>> layer = peft_adapter(torch.nn.Linear(16, 8), method="lora", r=4, alpha=8)
    >>> type(layer).__module__, layer.scaling["default"]
    ('peft.tuners.lora.layer', 2.0)
    """
    import peft  # optional dependency: pip install "speech-adapters[peft]"

    if method not in PEFT_CONFIGS:
        raise ValueError(f"Unknown PEFT method {method!r}; use one of {sorted(PEFT_CONFIGS)}.")
    config_class = getattr(peft, PEFT_CONFIGS[method])
    if method == "lora" and "alpha" in config:
        config["lora_alpha"] = config.pop("alpha")
    if method == "ia3":
        config.setdefault("feedforward_modules", [])
    try:
        peft_config = config_class(target_modules=["layer"], **config)
    except TypeError as err:
        raise TypeError(f"Invalid kwargs for peft.{config_class.__name__}: {err}") from err
    holder = nn.Module()
    holder.layer = target_module
    peft.inject_adapter_in_model(peft_config, holder)
    layer = holder.layer
    for name, param in layer.named_parameters():
        param.requires_grad_(not name.startswith("base_layer."))
    layer._register_load_state_dict_pre_hook(accept_plain_keys, with_module=True)
    return layer

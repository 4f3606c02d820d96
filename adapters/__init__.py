"""Adapters for parameter-efficient fine-tuning of SpeechBrain models.

Name the classes in YAML, e.g. ``adapter_class: !name:adapters.LoRA``, and
wrap a model with ``!new:adapters.AdaptedModel``.
"""

from adapters.adapted_model import AdaptedModel
from adapters.base import Adapter
from adapters.dora import DoRA
from adapters.houlsby import Houlsby, HoulsbyAdapterLinear
from adapters.lora import LoRA
from adapters.loraplus import apply_lr_scales, loraplus_groups
from adapters.peft_bridge import peft_adapter
from adapters.peft_format import PeftFormatError, load_peft, save_peft
from adapters.pool_lora import PoolLoRA
from adapters.state import base_fingerprint, read_adapter_metadata

__all__ = [
    "AdaptedModel",
    "Adapter",
    "DoRA",
    "Houlsby",
    "HoulsbyAdapterLinear",
    "LoRA",
    "PeftFormatError",
    "PoolLoRA",
    "apply_lr_scales",
    "base_fingerprint",
    "load_peft",
    "loraplus_groups",
    "peft_adapter",
    "read_adapter_metadata",
    "save_peft",
]

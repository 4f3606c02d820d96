"""LoRA adapters in PEFT's format, both ways: ``adapter_config.json`` + ``adapter_model.safetensors``.

:func:`save_peft` writes the LoRA adapters of an :class:`adapters.AdaptedModel` as
``peft.PeftModel.save_pretrained`` does, so that
``peft.PeftModel.from_pretrained(base, folder)`` computes what the adapted model
computes (for a ``base`` with the wrapped model's module paths); :func:`load_peft`
reads a folder PEFT wrote into an ``AdaptedModel`` built the same way. Adapters PEFT
has no exact equivalent for are refused, not approximated. ``peft`` is needed only
to read its config class (the ``peft`` extra).

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adapters.base import Adapter

logger = logging.getLogger(__name__)

#: Prefix PEFT gives the module paths of the base model in its state dicts.
PEFT_PREFIX = "base_model.model."
PEFT_CONFIG = "adapter_config.json"
PEFT_WEIGHTS = "adapter_model.safetensors"

#: Fields of a PEFT ``LoraConfig`` that change the computation, with the value under
#: which PEFT's LoRA computes ``W + s B A`` as ``adapters.LoRA`` does. Any field PEFT
#: marks as a LoRA variant (DoRA, aLoRA, KaSA...) must be unset as well.
_NEUTRAL_LORA_FIELDS: dict[str, Any] = {
    "use_dora": False,
    "bias": "none",
    "lora_bias": False,
    "fan_in_fan_out": False,
    "use_qalora": False,
    "target_parameters": None,
    "layer_replication": None,
    "trainable_token_indices": None,
}


class PeftFormatError(ValueError):
    """Adapters that PEFT's LoRA format cannot represent exactly, or a PEFT folder that
    does not fit the model it is loaded into."""


def _refusal(name: str, adapter: nn.Module, adapted_model: nn.Module) -> str | None:
    """Why the adapter at ``name`` has no exact PEFT LoRA equivalent, or None."""
    from adapters.dora import DoRA
    from adapters.houlsby import Houlsby
    from adapters.lora import LoRA
    from adapters.pool_lora import PoolLoRA

    target = adapted_model._param_targets.get(name)
    if target is not None:
        holder = adapted_model.adapted_model.get_submodule(target.holder or target.owner)
        if isinstance(holder, nn.MultiheadAttention):
            return (
                "it adapts a weight of a torch nn.MultiheadAttention, and PEFT 0.21's LoRA on "
                "nn.MultiheadAttention applies the out_proj update twice (it computes with "
                "W + 2 dW), so PEFT would not reproduce this model"
            )
        return (
            f"it adapts a {target.label} held as a raw parameter, which PEFT's LoRA "
            "target_modules cannot address"
        )
    if not isinstance(adapter, Adapter):
        return (
            f"it is a foreign adapter ({type(adapter).__module__}.{type(adapter).__name__}); "
            "save a PEFT-built adapter with PEFT itself"
        )
    if isinstance(adapter, PoolLoRA):
        return "PEFT's LoRA has no input pooling (PoolLoRA's A sees features averaged by stride)"
    if isinstance(adapter, DoRA):
        return "DoRA is not exported by this function"
    if isinstance(adapter, Houlsby):
        return "PEFT has no bottleneck adapter of this form (a residual MLP after the layer)"
    if type(adapter) is not LoRA:
        return f"only adapters.LoRA is exported, not {type(adapter).__name__}"
    if adapter.init == "pissa":
        return (
            "PiSSA's update is s (B A - B0 A0), from its starting point B0 A0, which PEFT's "
            "LoRA tensors do not hold; export the merged model (--to transformers) instead"
        )
    if type(adapter.base_layer) is not nn.Linear:
        return f"only LoRA on nn.Linear is exported, not on {type(adapter.base_layer).__name__}"
    return None


def _check_peft_compatible(adapted_model: nn.Module, action: str) -> dict[str, nn.Module]:
    """The adapters of ``adapted_model`` (all plain LoRA on Linear), or an ``PeftFormatError``."""
    adapted_model._require_inserted(action)
    adapters = adapted_model.adapters()
    if getattr(adapted_model, "merged", False) or any(
        getattr(a, "merged", False) for a in adapters.values()
    ):
        raise PeftFormatError(
            f"{action}: the adapters are merged into the base weights. Call unmerge() first."
        )
    reasons: dict[str, list[str]] = defaultdict(list)
    for name, adapter in adapters.items():
        reason = _refusal(name, adapter, adapted_model)
        if reason:
            reasons[reason].append(name)
    if reasons:
        parts = [
            f"{names[0]}" + (f" (and {len(names) - 1} more)" if len(names) > 1 else "") + f": {why}"
            for why, names in reasons.items()
        ]
        raise PeftFormatError(
            f"{action}: PEFT's LoRA format cannot represent these adapters exactly. "
            + "; ".join(parts)
            + ". Use adapters.LoRA on nn.Linear layers for PEFT interchange, or export a merged "
            "model instead (export_transformers, AdaptedModel.export_plain)."
        )
    return adapters


def _scaling(alpha: float, rank: int, use_rslora: bool) -> float:
    return alpha / (math.sqrt(rank) if use_rslora else rank)


def _plain_number(value: float) -> float | int:
    return int(value) if float(value).is_integer() else float(value)


def save_peft(
    adapted_model: nn.Module,
    folder: str | os.PathLike,
    base_model_name_or_path: str | os.PathLike | None = None,
) -> Path:
    """Write the LoRA adapters of ``adapted_model`` as a PEFT LoRA folder.

    ``peft.PeftModel.from_pretrained(base, folder)`` then computes what
    ``adapted_model`` computes, for a ``base`` with the wrapped model's module
    paths (``WhisperForConditionalGeneration`` for SpeechBrain's Whisper).
    Unfrozen layers are written as PEFT's ``modules_to_save``. Per-layer ranks
    and alphas go to ``rank_pattern`` and ``alpha_pattern``.

    Arguments
    ---------
    adapted_model : adapters.AdaptedModel
        A model adapted with ``adapters.LoRA`` on ``nn.Linear`` layers.
    folder : str or PathLike
        Output folder (created if needed): ``adapter_config.json`` and
        ``adapter_model.safetensors`` are written into it, replacing files of
        those names. Commands that must not destroy a folder write into a fresh
        one and move it into place (``recipes.io.replace_folder``).
    base_model_name_or_path : str, optional
        Recorded in the config, e.g. the base model's folder or hub id.

    Returns
    -------
    Path
        ``folder``.

    Example
    -------
    >>> import tempfile
    >>> from adapters import AdaptedModel, LoRA
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> model = AdaptedModel(net, LoRA, all_linear=True, adapter_kwargs={"rank": 2, "alpha": 4})
    >>> folder = save_peft(model, tempfile.mkdtemp())
    >>> config = json.loads((folder / "adapter_config.json").read_text())
    >>> sorted(config["target_modules"]), config["r"], config["lora_alpha"]
    (['0', '2'], 2, 4)
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    adapters = _check_peft_compatible(adapted_model, "save_peft")
    modules = adapted_model.adapted_model
    tensors: dict[str, torch.Tensor] = {}
    for name, lora in adapters.items():
        tensors[f"{PEFT_PREFIX}{name}.lora_A.weight"] = lora.lora_A.detach()
        tensors[f"{PEFT_PREFIX}{name}.lora_B.weight"] = lora.lora_B.detach()
    for name in adapted_model.unfrozen_layers:
        for key, value in modules.get_submodule(name).state_dict().items():
            tensors[f"{PEFT_PREFIX}{name}.{key}"] = value.detach()

    rslora = {lora.use_rslora for lora in adapters.values()}
    if len(rslora) > 1:
        raise PeftFormatError(
            "save_peft: some LoRA layers use rsLoRA scaling and others do not; PEFT's "
            "use_rslora applies to all layers of a config. Train with one use_rslora setting."
        )
    rank = Counter(lora.rank for lora in adapters.values()).most_common(1)[0][0]
    alpha = Counter(lora.alpha for lora in adapters.values()).most_common(1)[0][0]
    dropout = max((getattr(lora.dropout, "p", 0.0) for lora in adapters.values()), default=0.0)
    config = LoraConfig(
        r=rank,
        lora_alpha=_plain_number(alpha),
        target_modules=sorted(adapters),
        rank_pattern={re.escape(n): a.rank for n, a in adapters.items() if a.rank != rank},
        alpha_pattern={
            re.escape(n): _plain_number(a.alpha) for n, a in adapters.items() if a.alpha != alpha
        },
        use_rslora=rslora.pop(),
        lora_dropout=dropout,
        bias="none",
        modules_to_save=list(adapted_model.unfrozen_layers) or None,
        base_model_name_or_path=base_model_name_or_path and str(base_model_name_or_path),
        inference_mode=True,
    )
    tensors = {k: v.to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(str(folder))
    save_file(tensors, str(folder / PEFT_WEIGHTS), metadata={"format": "pt"})
    return folder


def _peft_layer_setting(patterns: dict[str, Any], default: Any, name: str) -> Any:
    """The value PEFT gives layer ``name`` from a rank or alpha pattern dict."""
    from peft.utils.other import get_pattern_key

    key = get_pattern_key(list(patterns), name)
    return patterns.get(key, default)


def read_peft_folder(folder: str | os.PathLike) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """The config and tensors of a PEFT adapter folder (PEFT's key prefix removed)."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path, weights = folder / PEFT_CONFIG, folder / PEFT_WEIGHTS
    if not config_path.is_file():
        raise FileNotFoundError(f"{config_path} is missing: {folder} is not a PEFT adapter folder.")
    if not weights.is_file():
        legacy = folder / "adapter_model.bin"
        hint = " It has adapter_model.bin: re-save it with safetensors." if legacy.is_file() else ""
        raise FileNotFoundError(f"{weights} is missing.{hint}")
    config = json.loads(config_path.read_text())
    tensors = {}
    for key, value in load_file(str(weights)).items():
        tensors[key.removeprefix(PEFT_PREFIX)] = value
    return config, tensors


def load_peft(adapted_model: nn.Module, folder: str | os.PathLike) -> None:
    """Load a PEFT LoRA folder into the LoRA adapters of ``adapted_model``.

    The ``AdaptedModel`` must be built like the PEFT model: the same adapted
    layers (PEFT's module paths), rank, alpha and ``use_rslora`` per layer, and
    its ``unfrozen_layers`` must include PEFT's ``modules_to_save``. Anything
    else is refused before a tensor is copied.

    Arguments
    ---------
    adapted_model : adapters.AdaptedModel
        A model adapted with ``adapters.LoRA`` on ``nn.Linear`` layers.
    folder : str or PathLike
        A folder written by PEFT's ``save_pretrained`` (or :func:`save_peft`).

    Example
    -------
    >>> import copy, tempfile
    >>> from adapters import AdaptedModel, LoRA
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> def adapt(targets):
    ...     return AdaptedModel(copy.deepcopy(net), LoRA, target_layers=targets,
    ...                         adapter_kwargs={"rank": 2})
    >>> model = adapt(["0", "2"])
    >>> _ = torch.nn.init.normal_(model.adapters()["2"].lora_B)
    >>> folder = save_peft(model, tempfile.mkdtemp())
    >>> other = adapt(["0", "2"])
    >>> load_peft(other, folder)
    >>> torch.equal(other.adapters()["2"].lora_B, model.adapters()["2"].lora_B)
    True
    >>> load_peft(adapt(["0"]), folder)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
        ...
    adapters.peft_format.PeftFormatError: ... PEFT adapts 2, which this AdaptedModel does not adapt...
    """
    from peft import LoraConfig

    adapters = _check_peft_compatible(adapted_model, "load_peft")
    config, tensors = read_peft_folder(folder)
    where = Path(folder) / PEFT_CONFIG

    def refuse(problem: str) -> PeftFormatError:
        return PeftFormatError(
            f"Cannot load {where} into this AdaptedModel: {problem}. Build the AdaptedModel as the "
            "PEFT model was built (the same target layers, rank, alpha, use_rslora, unfrozen "
            "layers for modules_to_save), or train it again."
        )

    if config.get("peft_type") != "LORA":
        raise refuse(f"it holds a {config.get('peft_type')} adapter, not LoRA")
    variants = [f.name for f in dataclasses.fields(LoraConfig) if f.metadata.get("is_lora_variant")]
    for field, neutral in {**dict.fromkeys(variants), **_NEUTRAL_LORA_FIELDS}.items():
        value = config.get(field, neutral)
        if value != neutral and not (neutral is None and not value):
            raise refuse(
                f"{field}={value!r}, which adapters.LoRA does not compute (it needs {neutral!r})"
            )
    if any(".lora_embedding_" in key or ".lora_magnitude" in key for key in tensors):
        raise refuse("it holds embedding or DoRA adapter tensors, which adapters.LoRA lacks")

    lora_keys = {k for k in tensors if ".lora_A." in k or ".lora_B." in k}
    peft_layers = {k.rsplit(".lora_", 1)[0] for k in lora_keys}
    extra, missing = sorted(peft_layers - set(adapters)), sorted(set(adapters) - peft_layers)
    if extra:
        raise refuse(
            f"PEFT adapts {extra[0]}" + (f" (and {len(extra) - 1} more)" if len(extra) > 1 else "")
            + ", which this AdaptedModel does not adapt"
        )  # fmt: skip
    if missing:
        raise refuse(
            f"this AdaptedModel adapts {missing[0]}"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + ", which the PEFT folder has no weights for"
        )

    use_rslora = bool(config.get("use_rslora", False))
    rank_pattern, alpha_pattern = (
        config.get("rank_pattern") or {},
        config.get("alpha_pattern") or {},
    )
    new_lora: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, lora in adapters.items():
        a, b = tensors.get(f"{name}.lora_A.weight"), tensors.get(f"{name}.lora_B.weight")
        if a is None or b is None:
            raise refuse(f"{name} lacks lora_A.weight or lora_B.weight")
        rank = _peft_layer_setting(rank_pattern, config.get("r", 8), name)
        alpha = _peft_layer_setting(alpha_pattern, config.get("lora_alpha", 8), name)
        if a.shape != lora.lora_A.shape or b.shape != lora.lora_B.shape or rank != lora.rank:
            raise refuse(
                f"{name} has rank {rank} (lora_A {tuple(a.shape)}) in PEFT, rank {lora.rank} "
                f"(lora_A {tuple(lora.lora_A.shape)}) here"
            )
        if use_rslora != lora.use_rslora:
            raise refuse(f"PEFT has use_rslora={use_rslora}, {name} has {lora.use_rslora} here")
        theirs, ours = _scaling(alpha, rank, use_rslora), lora.scaling
        if not math.isclose(theirs, ours, rel_tol=1e-6):
            raise refuse(
                f"{name} is scaled by {theirs:g} in PEFT (lora_alpha {alpha}), by {ours:g} here "
                f"(alpha {lora.alpha:g})"
            )
        new_lora[name] = (a, b)

    unfrozen = list(adapted_model.unfrozen_layers)
    full: dict[str, dict[str, torch.Tensor]] = defaultdict(dict)
    for key in sorted(set(tensors) - lora_keys):
        owner = next((u for u in unfrozen if key.startswith(u + ".")), None)
        if owner is None:
            raise refuse(
                f"it holds the full weight {key} (PEFT's modules_to_save), which is not in a layer "
                "this AdaptedModel trains (unfrozen_layers)"
            )
        full[owner][key[len(owner) + 1 :]] = tensors[key]
    modules = adapted_model.adapted_model
    for name, state in full.items():
        expected = set(modules.get_submodule(name).state_dict())
        if set(state) != expected:
            raise refuse(f"the weights of {name} are {sorted(state)}, expected {sorted(expected)}")
    for name in sorted(set(unfrozen) - set(full)):
        logger.warning("load_peft: %s has no weights in %s; it keeps its own.", name, folder)

    with torch.no_grad():
        for name, (a, b) in new_lora.items():
            adapters[name].lora_A.copy_(a)
            adapters[name].lora_B.copy_(b)
        for name, state in full.items():
            modules.get_submodule(name).load_state_dict(state)

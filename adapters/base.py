"""The contract every adapter of this library follows.

An adapter wraps one pretrained layer (``base_layer``), freezes it, and adds a
small trainable branch. Adapters whose update is a change of the base weight
(LoRA and its relatives) can fold that change into the base (``merge``) and
take it out again (``unmerge``) without loss.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

#: Layer types whose ``weight`` adapters of this library know how to update.
LINEAR_TYPES: tuple[type[nn.Module], ...] = (nn.Linear,)
CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def accept_plain_keys(module: Adapter, state_dict: dict, prefix: str, *args: object) -> None:
    """Let a checkpoint of the plain model load into the adapted one.

    ``layer.weight`` of a pretrained checkpoint becomes
    ``layer.base_layer.weight`` once ``layer`` is wrapped by an adapter.
    """
    for local in module.base_layer.state_dict():
        if prefix + local in state_dict:
            state_dict.setdefault(f"{prefix}base_layer.{local}", state_dict.pop(prefix + local))


def within(name: str, prefix: str) -> bool:
    """Whether the module ``name`` is ``prefix`` or lies inside it.

    Example
    -------
    >>> within("encoder.layers.0.fc1", "encoder.layers.0"), within("encoder.layers.01", "encoder.layers.0")
    (True, False)
    """
    return name == prefix or name.startswith(prefix + ".")


def is_mergeable(adapter: nn.Module) -> bool:
    """The one rule of what merges: an adapter of this library says so with ``mergeable``;
    a foreign one (PEFT's layers) by having a ``merge`` method. The contract a foreign
    adapter class meets otherwise: it takes the layer as its first argument and keeps it
    as a submodule (``base_layer``), its own parameters are what trains, and, when it
    merges, ``merge()``/``unmerge()`` fold its update into ``base_layer.weight`` and out.
    :class:`~adapters.AdaptedModel` checks it at insertion.

    Example
    -------
    >>> is_mergeable(torch.nn.Linear(2, 2)), is_mergeable(type("P", (), {"merge": print})())
    (False, True)
    """
    return bool(getattr(adapter, "mergeable", callable(getattr(adapter, "merge", None))))


class Adapter(nn.Module):
    """Base class: holds and freezes the wrapped layer, tracks merging.

    Subclasses implement ``forward`` and, when mergeable, ``delta_weight``.

    Arguments
    ---------
    base_layer : torch.nn.Module
        The pretrained layer to wrap. Its parameters are frozen here, so an
        adapter is safe to use outside ``AdaptedModel`` too.

    Example
    -------
    >>> class Scale(Adapter):
    ...     def forward(self, x):
    ...         return 2 * self.base_layer(x)
    >>> layer = Scale(torch.nn.Linear(4, 4))
    >>> layer.base_layer.weight.requires_grad
    False
    """

    #: Whether ``delta_weight`` is implemented (the update is linear in W).
    mergeable: bool = False

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        for param in base_layer.parameters():
            param.requires_grad_(False)
        self.merged = False
        self._register_load_state_dict_pre_hook(accept_plain_keys, with_module=True)

    def __getattr__(self, name: str) -> object:
        """Attributes of the wrapped layer (``stride``, ``in_features``...) stay readable,
        as model code reads them (transformers' Whisper checks ``conv1.stride``)."""
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_layer":
                raise
            return getattr(self.base_layer, name)

    def delta_weight(self) -> torch.Tensor:
        """Return the change this adapter makes to ``base_layer.weight``."""
        raise NotImplementedError(f"{type(self).__name__} cannot be merged into its base layer.")

    def adapted_weight(self, weight: torch.Tensor) -> torch.Tensor:
        """The weight this adapter computes from a base ``weight``."""
        return weight + self.delta_weight()

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into the base weight; forward then skips the branch."""
        if self.merged:
            return
        weight = self.base_layer.weight
        # Keep an exact copy so that unmerge restores the base bit for bit.
        self.register_buffer("_unmerged_weight", weight.detach().clone(), persistent=False)
        weight.add_(self.delta_weight().to(weight.dtype))
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Restore the exact base weight saved by ``merge``."""
        if not self.merged:
            return
        self.base_layer.weight.copy_(self._unmerged_weight)
        del self._unmerged_weight
        self.merged = False

    def extra_repr(self) -> str:
        return "merged=True" if self.merged else ""


def accepted_kwargs(factory: Callable[..., Any]) -> list[str] | None:
    """Keyword names ``factory`` (an adapter class or function) takes after the layer,
    following ``**kwargs`` up the class hierarchy; None when it takes any.

    Example
    -------
    >>> class Scaled(nn.Module):
    ...     def __init__(self, layer: nn.Module, scale: float = 1.0) -> None:
    ...         super().__init__()
    >>> accepted_kwargs(Scaled), accepted_kwargs(lambda layer, **kwargs: layer)
    (['scale'], None)
    """
    if isinstance(factory, type):
        inits = [c.__dict__["__init__"] for c in factory.__mro__ if "__init__" in c.__dict__]
    else:
        inits = [factory]
    names: list[str] = []
    for init in inits:
        try:
            params = list(inspect.signature(init).parameters.values())
        except (TypeError, ValueError):
            return None
        names += [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            layer_arg = names[1] if isinstance(factory, type) else names[0]
            return [n for n in dict.fromkeys(names) if n not in ("self", layer_arg)]
    return None

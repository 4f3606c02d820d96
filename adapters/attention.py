"""Reach the attention projections that live in raw parameters.

torch's ``nn.MultiheadAttention`` (used by ``speechbrain.nnet.attention.
MultiheadAttention``) and SpeechBrain's ``RelPosMHAXL`` keep Q, K and V in one
packed ``in_proj_weight`` (or in ``q_proj_weight``/``k_proj_weight``/
``v_proj_weight``) that their forward passes to fused functions, and torch MHA
reads ``out_proj.weight`` directly. Wrapping modules cannot reach them.

Here each such projection gets a name that patterns can select
(``<attention>.q_proj``, ``.k_proj``, ``.v_proj``; ``out_proj`` keeps its
name) and is adapted functionally: the module's parameter is read through a
property that returns ``weight + update`` for the adapted row blocks, so the
fused kernels see the adapted weight, gradients reach the adapters, the
state-dict keys of the base stay unchanged, and merging is exact.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from adapters.base import Adapter

#: Virtual projection name -> parameter holding it separately.
SEPARATE_PROJECTIONS = {
    "q_proj": "q_proj_weight",
    "k_proj": "k_proj_weight",
    "v_proj": "v_proj_weight",
}


def projection_blocks(module: nn.Module) -> dict[str, tuple[str, slice]]:
    """Map the raw-parameter projections of ``module`` to (parameter, rows).

    Example
    -------
    >>> mha = torch.nn.MultiheadAttention(8, 2)
    >>> blocks = projection_blocks(mha)
    >>> sorted(blocks), blocks["k_proj"]
    (['k_proj', 'q_proj', 'v_proj'], ('in_proj_weight', slice(8, 16, None)))
    """
    params = module._parameters
    packed = params.get("in_proj_weight")
    if isinstance(packed, nn.Parameter) and packed.dim() == 2 and packed.shape[0] % 3 == 0:
        size = packed.shape[0] // 3
        return {
            name: ("in_proj_weight", slice(i * size, (i + 1) * size))
            for i, name in enumerate(("q_proj", "k_proj", "v_proj"))
        }
    return {
        name: (param, slice(None))
        for name, param in SEPARATE_PROJECTIONS.items()
        if isinstance(params.get(param), nn.Parameter)
    }


class RowView(nn.Linear):
    """A bias-free Linear whose weight is rows of another module's parameter.

    It reads the parameter at each access, so in-place updates (merging)
    write into the owner's parameter, also in a deep copy of the model.

    Example
    -------
    >>> mha = torch.nn.MultiheadAttention(4, 1)
    >>> view = RowView(mha, "in_proj_weight", slice(4, 8))
    >>> view.weight.shape, torch.equal(view.weight, mha.in_proj_weight[4:8])
    (torch.Size([4, 4]), True)
    """

    def __init__(self, owner: nn.Module, param_name: str, rows: slice) -> None:
        nn.Module.__init__(self)
        object.__setattr__(self, "owner", owner)  # not a submodule
        self.param_name, self.rows = param_name, rows
        self.out_features, self.in_features = self.weight.shape
        self.register_parameter("bias", None)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return self.owner._parameters[self.param_name][self.rows]


class BlockAdapters(nn.Module):
    """The adapters of the row blocks of one weight; called on that weight."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict()
        self.rows: dict[str, slice] = {}

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Return ``weight`` with each un-merged adapted block replaced."""
        active = [(n, a) for n, a in self.blocks.items() if not getattr(a, "merged", False)]
        if not active:
            return weight
        weight = weight.clone()
        for name, adapter in active:
            rows = self.rows[name]
            weight[rows] = adapter.adapted_weight(weight[rows])
        return weight


def _adapted_class(cls: type[nn.Module]) -> type[nn.Module]:
    """A subclass of ``cls`` whose adapted parameters read through adapters."""

    def getattr_(self: nn.Module, name: str) -> object:
        adapters = self.__dict__["_modules"].get("param_adapters")
        if adapters is not None and name in adapters:
            return adapters[name](self._parameters[name])
        return cls.__getattr__(self, name)

    return type(cls.__name__, (cls,), {"__getattr__": getattr_, "_adapted_base": cls})


def adapt_parameter(
    module: nn.Module,
    param_name: str,
    block: str,
    rows: slice,
    build: Callable[[nn.Module], Adapter],
) -> Adapter:
    """Adapt rows ``rows`` of ``module.<param_name>`` with ``build(layer)``.

    ``build`` receives a ``RowView`` of those rows (so merging writes into
    the module's parameter); the adapter is registered under
    ``module.param_adapters[param_name]``.

    Example
    -------
    >>> from adapters import LoRA
    >>> mha = torch.nn.MultiheadAttention(8, 2)
    >>> x = torch.randn(5, 1, 8)
    >>> before = mha(x, x, x)[0]
    >>> lora = adapt_parameter(mha, "in_proj_weight", "v_proj", slice(16, 24),
    ...                        lambda layer: LoRA(layer, rank=2))
    >>> torch.equal(mha(x, x, x)[0], before)  # B starts at zero
    True
    >>> _ = lora.lora_B.data.fill_(0.1)
    >>> torch.allclose(mha(x, x, x)[0], before)
    False
    >>> sorted(mha.state_dict())[:3]  # the base keeps its keys
    ['in_proj_bias', 'in_proj_weight', 'out_proj.bias']
    """
    adapter = build(RowView(module, param_name, rows))
    # The view holds no tensor of its own: keep it out of the module tree,
    # where traversals looking for nn.Linear layers would find it.
    object.__setattr__(adapter, "base_layer", adapter._modules.pop("base_layer"))
    if "param_adapters" not in module._modules:
        if not hasattr(type(module), "_adapted_base"):
            module.__class__ = _adapted_class(type(module))
        module.param_adapters = nn.ModuleDict()
    if param_name not in module.param_adapters:
        module.param_adapters[param_name] = BlockAdapters()
    holder = module.param_adapters[param_name]
    holder.blocks[block] = adapter
    holder.rows[block] = rows
    return adapter

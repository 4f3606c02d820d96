"""What can be adapted: layers as modules, and weights held as raw parameters.

Some weights are read straight from a parameter by fused kernels, where no
module wrapper reaches: attention Q/K/V packed in ``in_proj_weight`` (torch MHA,
SpeechBrain's RelPosMHAXL; named ``<attention>.q_proj`` etc.) and torch MHA's
``out_proj``; every ``weight_ih_l*``, ``weight_hh_l*``, ``weight_hr_l*`` of
``nn.LSTM``/``GRU``/``RNN``; any weight a user names ``<module>.<parameter>``
(like PEFT's ``target_parameters``). One mechanism serves all: the owner's class
is swapped for a subclass whose attribute lookup passes an adapted parameter
through its adapters. Kernels see the adapted weight, gradients reach the
adapters, the base keeps its state-dict keys (``torch.nn.utils.parametrize``
renames them; ``benchmarks/raw_param_cost.py`` times both), merging is exact.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

#: Virtual projection name -> parameter holding it separately.
SEPARATE_PROJECTIONS = {
    "q_proj": "q_proj_weight",
    "k_proj": "k_proj_weight",
    "v_proj": "v_proj_weight",
}


@dataclass(frozen=True)
class ParamTarget:
    """Rows of the parameter ``param`` of module ``owner``. ``holder``: the attention or
    recurrent module whose name selects it and whose weights ``all_linear`` reaches
    (None: reached by its own name only); ``label`` names its kind in messages."""

    owner: str
    param: str
    rows: slice
    holder: str | None
    label: str


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def projection_blocks(module: nn.Module) -> dict[str, tuple[str, slice]]:
    """Map the raw-parameter projections of ``module`` to (parameter, rows).

    Example
    -------
    >>> blocks = projection_blocks(torch.nn.MultiheadAttention(8, 2))
    >>> sorted(blocks), blocks["k_proj"]
    (['k_proj', 'q_proj', 'v_proj'], ('in_proj_weight', slice(8, 16, None)))
    """
    params = module._parameters
    packed = params.get("in_proj_weight")
    if isinstance(packed, nn.Parameter) and packed.dim() == 2 and packed.shape[0] % 3 == 0:
        size = packed.shape[0] // 3
        names = ("q_proj", "k_proj", "v_proj")
        return {n: ("in_proj_weight", slice(i * size, (i + 1) * size)) for i, n in enumerate(names)}
    return {
        name: (param, slice(None))
        for name, param in SEPARATE_PROJECTIONS.items()
        if isinstance(params.get(param), nn.Parameter)
    }


def parameter_targets(model: nn.Module) -> dict[str, ParamTarget]:
    """Every weight held as a raw parameter, by the name patterns select it with.

    Example
    -------
    >>> net = torch.nn.Sequential(torch.nn.LSTM(4, 3, bidirectional=True))
    >>> targets = parameter_targets(net)
    >>> [name for name, t in targets.items() if t.holder]  # doctest: +NORMALIZE_WHITESPACE
    ['0.weight_ih_l0', '0.weight_hh_l0', '0.weight_ih_l0_reverse', '0.weight_hh_l0_reverse']
    >>> targets["0.weight_hh_l0"].label
    'LSTM weight'
    """
    targets: dict[str, ParamTarget] = {}
    for name, module in model.named_modules():
        blocks = projection_blocks(module)
        for block, (param, rows) in blocks.items():
            targets[_join(name, block)] = ParamTarget(
                name, param, rows, name, "attention projection"
            )
        if isinstance(module, nn.MultiheadAttention):
            out = _join(name, "out_proj")
            targets[out] = ParamTarget(out, "weight", slice(None), name, "attention projection")
        recurrent = isinstance(module, nn.RNNBase)
        label = f"{type(module).__name__} weight"
        for pname, param in module.named_parameters(recurse=False):
            if param.dim() >= 2:
                holder = name if recurrent else None
                targets.setdefault(
                    _join(name, pname), ParamTarget(name, pname, slice(None), holder, label)
                )
    return targets


class WeightView(nn.Linear):
    """A bias-free Linear whose weight is rows of another module's parameter, read at
    each access (so merging writes into it, also in a deep copy of the model).

    Example
    -------
    >>> mha = torch.nn.MultiheadAttention(4, 1)
    >>> view = WeightView(mha, "in_proj_weight", slice(4, 8))
    >>> view.weight.shape, torch.equal(view.weight, mha.in_proj_weight[4:8])
    (torch.Size([4, 4]), True)
    """

    def __init__(self, owner: nn.Module, param_name: str, rows: slice) -> None:
        nn.Module.__init__(self)
        object.__setattr__(self, "owner", owner)  # not a submodule
        self.param_name, self.rows = param_name, rows
        self.out_features, self.in_features = self.weight.shape[:2]
        self.register_parameter("bias", None)

    @property
    def weight(self) -> torch.Tensor:  # type: ignore[override]
        return self.owner._parameters[self.param_name][self.rows]


class ParamAdapters(nn.Module):
    """The adapters of one parameter (of row blocks of it); called on that parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = nn.ModuleDict()
        self.rows: dict[str, slice] = {}

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        """Return ``weight`` with each un-merged adapted block replaced."""
        out = weight
        for name, adapter in self.blocks.items():
            if getattr(adapter, "merged", False):
                continue
            rows = self.rows[name]
            if rows == slice(None):
                out = adapter.adapted_weight(out)
            else:
                out = out.clone() if out is weight else out
                out[rows] = adapter.adapted_weight(out[rows])
        return out


def _flatten_plain_weights(self: nn.RNNBase) -> None:
    """Re-flatten plain (or merged) weights for cuDNN; adapted ones are new at each call."""
    if all(isinstance(w, nn.Parameter) for w in self._flat_weights):
        self._adapted_base.flatten_parameters(self)


def _read_flat_weights(self: nn.RNNBase) -> None:
    """The weights the recurrent kernel gets: each read once per call, adapted where adapted."""
    names = self._flat_weights_names
    self._flat_weights = [getattr(self, n) if n in self._parameters else None for n in names]
    self.flatten_parameters()


def _plain_state(self: nn.RNNBase) -> dict:
    """Copy and pickle the parameters, not the adapted weights of the last call."""
    state = self._adapted_base.__getstate__(self)
    state["_flat_weights"] = [self._parameters.get(n) for n in self._flat_weights_names]
    return state


_ADAPTED_CLASSES: dict[type, type] = {}


def _adapted_class(cls: type[nn.Module]) -> type[nn.Module]:
    """A subclass of ``cls`` whose adapted parameters read through adapters."""
    if cls not in _ADAPTED_CLASSES:

        def getattr_(self: nn.Module, name: str) -> object:
            adapters = self.__dict__["_modules"].get("param_adapters")
            if adapters is not None and name in adapters:
                return adapters[name](self._parameters[name])
            return cls.__getattr__(self, name)

        body = {"__getattr__": getattr_, "_adapted_base": cls}
        if issubclass(cls, nn.RNNBase):
            body.update(
                _update_flat_weights=_read_flat_weights,
                flatten_parameters=_flatten_plain_weights,
                __getstate__=_plain_state,
            )
        _ADAPTED_CLASSES[cls] = type(cls.__name__, (cls,), body)
    return _ADAPTED_CLASSES[cls]


def adapt_parameter(
    module: nn.Module, target: ParamTarget, block: str, build: Callable[[nn.Module], nn.Module]
) -> nn.Module:
    """Adapt ``target`` (a parameter of ``module``) with ``build(view)``.

    ``build`` gets a ``WeightView`` of the rows; the adapter is registered as
    ``module.param_adapters[target.param].blocks[block]``.

    Example
    -------
    >>> from adapters import LoRA
    >>> gru = torch.nn.GRU(4, 3)
    >>> x = torch.randn(5, 1, 4)
    >>> before = gru(x)[0]
    >>> target = parameter_targets(gru)["weight_hh_l0"]
    >>> lora = adapt_parameter(gru, target, "weight_hh_l0", lambda v: LoRA(v, rank=2))
    >>> torch.equal(gru(x)[0], before)  # B starts at zero
    True
    >>> _ = lora.lora_B.data.fill_(0.1)
    >>> torch.allclose(gru(x)[0], before)
    False
    >>> sorted(gru.state_dict())[:2]  # the base keeps its keys
    ['bias_hh_l0', 'bias_ih_l0']
    """
    adapter = build(WeightView(module, target.param, target.rows))
    # The view holds no tensor: keep it out of the module tree (and of nn.Linear searches).
    object.__setattr__(adapter, "base_layer", adapter._modules.pop("base_layer"))
    if "param_adapters" not in module._modules:
        module.__class__ = _adapted_class(type(module))
        module.param_adapters = nn.ModuleDict()
    if target.param not in module.param_adapters:
        module.param_adapters[target.param] = ParamAdapters()
    holder = module.param_adapters[target.param]
    holder.blocks[block] = adapter
    holder.rows[block] = target.rows
    return adapter


def remove_parameter_adapters(model: nn.Module) -> None:
    """Give every module its plain class back and drop its (merged) raw-parameter adapters."""
    for module in model.modules():
        if "param_adapters" in module._modules:
            del module._modules["param_adapters"]
            module.__class__ = module._adapted_base
            if isinstance(module, nn.RNNBase):
                module._init_flat_weights()  # the plain parameters, re-flattened for cuDNN

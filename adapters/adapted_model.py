"""Insert adapters into any torch model, selected by layer type or name pattern.

``AdaptedModel`` takes the keys of ``speechbrain.nnet.adapters.AdaptedModel``
so existing YAML keeps working, and fixes its pitfalls: patterns that match no
layer raise an error naming the closest layers, nothing is skipped silently,
inserting twice is harmless, checkpoints hold only what was trained (adapters,
unfrozen layers and their buffers such as BatchNorm statistics) and refuse to
load onto another base.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import copy
import logging
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from fnmatch import fnmatch
from typing import Any

import torch
from torch import nn

from adapters.bank import AdapterBank
from adapters.base import Adapter, accepted_kwargs, is_mergeable
from adapters.selection import as_patterns, check_patterns, select_layers
from adapters.state import AdapterCheckpoints
from adapters.targets import adapt_parameter, parameter_targets, remove_parameter_adapters

logger = logging.getLogger(__name__)


def _name(factory: object) -> str:
    return getattr(factory, "__name__", type(factory).__name__)


def _check_mergeable(name: str, adapter: nn.Module) -> None:
    """Raise ``TypeError`` unless ``adapter`` can fold into its base weights
    (:func:`adapters.base.is_mergeable`)."""
    if not is_mergeable(adapter):
        raise TypeError(f"Adapter at {name} ({type(adapter).__name__}) cannot be merged.")


class AdaptedModel(AdapterCheckpoints, AdapterBank):
    """Wrap a model, freeze it, and replace selected layers by adapters.

    Arguments
    ---------
    model_to_adapt : torch.nn.Module
        The pretrained model. All its parameters are frozen except those of
        ``unfrozen_layers``.
    adapter_class : callable
        Called as ``adapter_class(layer, **adapter_kwargs)`` for every
        selected layer: an adapter of this library, of SpeechBrain, or a
        user's own class; it must keep the layer it is given as a submodule.
    all_linear : bool
        Adapt every ``nn.Linear``, and the weights held as raw parameters by
        attention (Q/K/V, torch MHA's ``out_proj``) and recurrent layers (every
        ``weight_ih_l*``, ``weight_hh_l*``, ``weight_hr_l*`` of ``nn.LSTM``,
        ``nn.GRU``, ``nn.RNN``) when the adapter updates weights (LoRA, PoolLoRA, DoRA).
    all_conv : bool
        Adapt every ``nn.Conv1d``, ``nn.Conv2d`` and ``nn.Conv3d``.
    target_layers : list of str, optional
        fnmatch patterns of layers to adapt: module names, raw weights
        (``<attention>.q_proj``, ``<rnn>.weight_hh_l0``, any
        ``<module>.<parameter>``); an attention or recurrent module's name
        selects all its raw weights.
    unfrozen_layers : list of str, optional
        fnmatch patterns of module names trained in full (never adapted).
    exclude_layers : list of str, optional
        fnmatch patterns of layers never adapted (nor anything inside them).
    adapter_kwargs : dict, optional
        Keyword arguments for ``adapter_class``, e.g. ``{"rank": 8}``.
    adapter_kwargs_by_layer : dict, optional
        ``{fnmatch pattern: {keyword: value}}``: overrides of ``adapter_kwargs`` for
        the adapted layers a pattern matches, e.g. ``{"*.encoder.*": {"rank": 8}}`` to
        give the encoder more rank than the rest (PEFT's ``rank_pattern`` and
        ``alpha_pattern``, for any keyword). Where several patterns match a layer,
        later entries win. Each pattern must match an adapted layer.
    manual_adapter_insertion : bool
        If True, call ``insert_adapters()`` yourself, e.g. after a
        ``Pretrainer`` has loaded the base weights.

    Example
    -------
    >>> from adapters import LoRA
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> model = AdaptedModel(net, LoRA, all_linear=True, unfrozen_layers=["2"],
    ...                      adapter_kwargs={"rank": 2})
    >>> model.adapted_layers
    ['0']
    >>> model.num_trainable_parameters()
    50
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    >>> wide = AdaptedModel(net, LoRA, all_linear=True, adapter_kwargs={"rank": 1},
    ...                     adapter_kwargs_by_layer={"2": {"rank": 2}})
    >>> {name: a.rank for name, a in wide.adapters().items()}
    {'0': 1, '2': 2}
    >>> AdaptedModel(net, LoRA, target_layers=["1O"])
    Traceback (most recent call last):
        ...
    ValueError: target_layers pattern '1O' matches no layer of the model. ...
    """

    def __init__(
        self,
        model_to_adapt: nn.Module,
        adapter_class: Callable[..., nn.Module],
        all_linear: bool = False,
        all_conv: bool = False,
        target_layers: str | Sequence[str] | None = None,
        unfrozen_layers: str | Sequence[str] | None = None,
        adapter_kwargs: dict[str, Any] | None = None,
        manual_adapter_insertion: bool = False,
        exclude_layers: str | Sequence[str] | None = None,
        adapter_kwargs_by_layer: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__()
        self.adapted_model = model_to_adapt
        self.adapter_class = adapter_class
        self.adapter_kwargs = dict(adapter_kwargs or {})
        self.adapter_kwargs_by_layer = {
            str(pattern): dict(overrides or {})
            for pattern, overrides in (adapter_kwargs_by_layer or {}).items()
        }
        accepted = accepted_kwargs(adapter_class)
        for key, given in [
            ("adapter_kwargs", self.adapter_kwargs),
            *(
                (f"adapter_kwargs_by_layer[{pattern!r}]", overrides)
                for pattern, overrides in self.adapter_kwargs_by_layer.items()
            ),
        ]:
            unknown = sorted(set(given) - set(accepted or given))
            if unknown:
                raise TypeError(
                    f"{key} {unknown} are not accepted by {_name(adapter_class)}; "
                    f"accepted: {accepted}."
                )
        self._param_targets = parameter_targets(model_to_adapt)
        chosen = select_layers(
            model_to_adapt, self._param_targets, _name(adapter_class),
            by_weight=getattr(adapter_class, "mergeable", False) is True,
            all_linear=all_linear, all_conv=all_conv, target_layers=as_patterns(target_layers),
            unfrozen_layers=as_patterns(unfrozen_layers),
            exclude_layers=as_patterns(exclude_layers),
        )  # fmt: skip
        self.adapted_layers, self.unfrozen_layers = chosen.adapted, chosen.unfrozen
        self.left_out = chosen.left_out_message()
        if not self.adapted_layers and (all_linear or all_conv or target_layers):
            raise ValueError(
                "No layer was selected for adaptation: "
                + (self.left_out or "none fits.")
                + " Revise target_layers, unfrozen_layers or exclude_layers."
            )
        check_patterns(
            "adapter_kwargs_by_layer",
            list(self.adapter_kwargs_by_layer),
            self.adapted_layers,
            "adapted layer",
        )
        for param in model_to_adapt.parameters():
            param.requires_grad_(False)
        for name in self.unfrozen_layers:
            for param in model_to_adapt.get_submodule(name).parameters():
                param.requires_grad_(True)
        self.inserted = self.merged = self._grad_flow_checked = False
        self._foreign_backup: dict[str, torch.Tensor] = {}
        self._init_bank()
        if not manual_adapter_insertion:
            self.insert_adapters()

    def insert_adapters(self) -> None:
        """Insert the adapters; a second call does nothing."""
        if self.inserted:
            logger.info("Adapters are already inserted; insert_adapters() does nothing.")
            return
        for name in self.adapted_layers:
            target = self._param_targets.get(name)
            if target is not None:
                owner = self.adapted_model.get_submodule(target.owner)
                build = self._builder(name, target.label)
                adapt_parameter(owner, target, name.rpartition(".")[2], build)
            else:
                parent_name, _, child = name.rpartition(".")
                parent = self.adapted_model.get_submodule(parent_name)
                layer = getattr(parent, child)
                setattr(parent, child, self._builder(name, type(layer).__name__)(layer))
        self.inserted = True
        # The state every new named adapter starts from: adapters at their
        # (identity) initialisation, unfrozen layers and statistics pretrained.
        self._initial_state = self._snapshot()
        logger.info(self.summary(layers=True))
        if self.left_out:
            logger.warning(self.left_out)

    def layer_kwargs(self, name: str) -> dict[str, Any]:
        """The keyword arguments the adapter of layer ``name`` is built with:
        ``adapter_kwargs`` updated by every ``adapter_kwargs_by_layer`` pattern that
        matches ``name``, in order.

        Example
        -------
        >>> from adapters import LoRA
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
        >>> model = AdaptedModel(net, LoRA, all_linear=True, adapter_kwargs={"rank": 1},
        ...     adapter_kwargs_by_layer={"*": {"alpha": 4}, "1": {"rank": 2, "alpha": 8}})
        >>> model.layer_kwargs("0"), model.layer_kwargs("1")
        ({'rank': 1, 'alpha': 4}, {'rank': 2, 'alpha': 8})
        """
        kwargs = dict(self.adapter_kwargs)
        for pattern, overrides in self.adapter_kwargs_by_layer.items():
            if fnmatch(name, pattern):
                kwargs.update(overrides)
        return kwargs

    def _builder(self, name: str, label: str) -> Callable[[nn.Module], nn.Module]:
        """``adapter_class`` applied to the layer ``name``, with errors that name it."""

        def build(layer: nn.Module) -> nn.Module:
            cls = _name(self.adapter_class)
            try:
                adapter = self.adapter_class(layer, **self.layer_kwargs(name))
            except (TypeError, ValueError) as err:
                raise type(err)(
                    f"Cannot adapt {name} ({label}) with {cls}: {err} To leave "
                    f"it out, add {name!r} to exclude_layers."
                ) from err
            base = {id(p) for p in layer.parameters()}
            wraps = isinstance(adapter, nn.Module) and any(m is layer for m in adapter.modules())
            if not wraps or all(id(p) in base for p in adapter.parameters()):
                raise TypeError(
                    f"adapter_class {cls} returned a {type(adapter).__name__} for {name} that does "
                    "not wrap the layer it was given with parameters of its own to train. An "
                    "adapter class takes the layer as its first argument and keeps it as a "
                    "submodule (e.g. adapters.LoRA)."
                )
            if getattr(adapter, "mergeable", False) is True and not (
                callable(getattr(adapter, "merge", None))
                and callable(getattr(adapter, "unmerge", None))
            ):
                raise TypeError(
                    f"adapter_class {cls} says it is mergeable but has no merge()/unmerge(): "
                    "derive it from adapters.Adapter (which provides them from delta_weight()) "
                    "or set mergeable = False."
                )
            for param in layer.parameters():  # user classes may forget this
                param.requires_grad_(False)
            return adapter

        return build

    def _require_inserted(self, action: str) -> None:
        if not self.inserted:
            raise RuntimeError(
                f"{action} before insert_adapters(): with manual_adapter_insertion: True, call "
                "insert_adapters() after loading the pretrained weights (nothing is adapted yet)."
            )

    def forward(
        self, *args: Any, adapter_names: Sequence[str | None] | None = None, **kwargs: Any
    ) -> Any:
        """Call the adapted model (the first training call checks that gradients reach the
        adapters). ``adapter_names``: one adapter set per sample (``None``: the base), see
        ``mixed_adapters``."""
        if adapter_names is not None:
            with self.mixed_adapters(adapter_names):
                return self.forward(*args, **kwargs)
        if not self.training or not torch.is_grad_enabled() or self._grad_flow_checked:
            return self.adapted_model(*args, **kwargs)
        self._require_inserted("Training forward")
        entered: dict[str, bool] = {}

        def record(name: str) -> Callable[..., None]:
            return lambda *_: (
                None if name in entered else entered.update({name: torch.is_grad_enabled()})
            )

        named = self.adapted_model.named_modules()
        handles = [module.register_forward_pre_hook(record(name)) for name, module in named]
        try:
            output = self.adapted_model(*args, **kwargs)
        finally:
            for handle in handles:
                handle.remove()
        for layer, path in self._adapter_paths().items():
            if entered.get(path, True):
                continue
            wrapper = next(p for p in [*self._ancestors(path), ""] if entered.get(p))
            module = self.adapted_model.get_submodule(wrapper)
            frozen = " has freeze=True and" if getattr(module, "freeze", None) is True else ""
            raise RuntimeError(
                f"Gradients cannot reach the adapter at {layer}: module {wrapper or '<root>'!r} "
                f"({type(module).__name__}){frozen} runs it under torch.no_grad(), so training "
                "would change nothing. Set `freeze: False` for that module in the YAML (the "
                "adapters keep its weights frozen anyway), or add its layers to exclude_layers."
            )
        self._grad_flow_checked = True
        return output

    @staticmethod
    def _ancestors(path: str) -> list[str]:
        return [path.rsplit(".", i)[0] for i in range(1, path.count(".") + 1)]

    def _adapter_paths(self) -> dict[str, str]:
        """``{layer name: module path of its adapter}`` (``ParamAdapters`` for raw weights)."""
        paths = {}
        for name in self.adapted_layers:
            target = self._param_targets.get(name)
            owner = target.owner if target else ""
            paths[name] = f"{owner}.param_adapters.{target.param}".lstrip(".") if target else name
        return paths

    def __getattr__(self, item: str) -> Any:
        """Give access to the attributes of the wrapped model."""
        try:
            return super().__getattr__(item)
        except AttributeError:
            return getattr(super().__getattr__("adapted_model"), item)

    # ---------------------------------------------------------------- merging
    def _adapters_in(self, model: nn.Module) -> dict[str, nn.Module]:
        found = {}
        for name in self.adapted_layers if self.inserted else []:
            target = self._param_targets.get(name)
            if target is None:
                found[name] = model.get_submodule(name)
            else:
                holder = model.get_submodule(target.owner).param_adapters[target.param]
                found[name] = holder.blocks[name.rpartition(".")[2]]
        return found

    def adapters(self) -> dict[str, nn.Module]:
        """Return ``{layer name: adapter module}`` for the inserted adapters."""
        return self._adapters_in(self.adapted_model)

    def unmergeable_adapters(self) -> dict[str, str]:
        """``{layer: adapter class name}`` of the adapters that cannot fold into the weights
        (e.g. Houlsby): what :meth:`merge` and :meth:`export_plain` would refuse.

        Example
        -------
        >>> from adapters import Houlsby
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> AdaptedModel(net, Houlsby, all_linear=True,
        ...              adapter_kwargs={"projection_size": 2}).unmergeable_adapters()
        {'0': 'Houlsby'}
        """
        return {
            name: type(adapter).__name__
            for name, adapter in self.adapters().items()
            if not is_mergeable(adapter)
        }

    def merge(self) -> None:
        """Fold every adapter into its base weights (all must be mergeable)."""
        adapters = self.adapters()
        for name, adapter in adapters.items():
            _check_mergeable(name, adapter)
        for name, adapter in adapters.items():
            if not isinstance(adapter, Adapter) and name not in self._foreign_backup:
                # Foreign (e.g. PEFT) adapters unmerge by subtraction; keep the exact base.
                self._foreign_backup[name] = adapter.base_layer.weight.detach().clone()
            adapter.merge()
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo ``merge``, restoring the base weights bit for bit."""
        for name, adapter in self.adapters().items():
            if callable(getattr(adapter, "unmerge", None)):
                adapter.unmerge()
            if name in self._foreign_backup:
                adapter.base_layer.weight.copy_(self._foreign_backup.pop(name))
        self.merged = False

    def export_plain(self) -> nn.Module:
        """A copy of the model with every adapter merged in and then removed.

        The copy has the module names, classes and state-dict keys of the
        base model, so it loads into a fresh instance of the base model class
        and runs at the base model's speed.

        Example
        -------
        >>> from adapters import LoRA
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.GRU(4, 4))
        >>> model = AdaptedModel(net, LoRA, all_linear=True, adapter_kwargs={"rank": 1})
        >>> plain = model.export_plain()
        >>> [type(m).__name__ for m in plain], len(plain.state_dict())
        (['Linear', 'GRU'], 6)
        """
        model = copy.deepcopy(self.adapted_model)
        for name, adapter in self._adapters_in(model).items():
            _check_mergeable(name, adapter)
            adapter.merge()
            if name not in self._param_targets:
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, adapter.base_layer)
        remove_parameter_adapters(model)
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    # ------------------------------------------------------------- statistics
    def num_trainable_parameters(self) -> int:
        """Number of parameters that receive gradients."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def num_parameters(self) -> int:
        """Number of parameters, adapters included."""
        return sum(p.numel() for p in self.parameters())

    def summary(self, layers: bool = False) -> str:
        """A human-readable account of what is adapted and trained.

        Arguments
        ---------
        layers : bool
            Also list the adapted and unfrozen layers, with layer indices
            folded into ``*`` and a count per pattern.

        Example
        -------
        >>> from adapters import LoRA
        >>> net = torch.nn.Sequential(*[torch.nn.Linear(4, 4) for _ in range(3)])
        >>> print(AdaptedModel(net, LoRA, all_linear=True, unfrozen_layers=["2"],
        ...                    adapter_kwargs={"rank": 1}).summary(layers=True))
        LoRA on 2 layers, 1 unfrozen layers; trainable parameters 36 of 76 (47.37%)
          adapted   * (x2)
          unfrozen  *
        """
        trainable, total = self.num_trainable_parameters(), self.num_parameters()
        text = (
            f"{_name(self.adapter_class)} on {len(self.adapted_layers)} layers, "
            f"{len(self.unfrozen_layers)} unfrozen layers; trainable parameters {trainable:,} of "
            f"{total:,} ({100.0 * trainable / max(total, 1):.2f}%)"
        )
        if self.adapter_kwargs_by_layer:
            text += f"; by layer: {self.adapter_kwargs_by_layer}"
        lines = [text]
        for kind, names in (("adapted", self.adapted_layers), ("unfrozen", self.unfrozen_layers)):
            folded = Counter(re.sub(r"(?<![^.])\d+(?![^.])", "*", name) for name in names)
            for pattern, count in folded.items() if layers else ():
                lines.append(f"  {kind:<9} {pattern}" + (f" (x{count})" if count > 1 else ""))
        return "\n".join(lines)

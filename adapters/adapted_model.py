"""Insert adapters into any torch model, selected by layer type or name pattern.

``AdaptedModel`` takes the same keys as ``speechbrain.nnet.adapters.AdaptedModel``
so existing YAML keeps working, and fixes its pitfalls: patterns that match no
layer raise an error naming the closest layers, inserting twice is harmless,
checkpoints hold only what was trained (adapters, unfrozen layers and their
buffers such as BatchNorm statistics) and refuse to load onto another base.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import copy
import difflib
import inspect
import logging
import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from fnmatch import fnmatch
from typing import Any

import torch
from speechbrain.utils import checkpoints
from torch import nn

from adapters.attention import adapt_parameter, projection_blocks
from adapters.base import CONV_TYPES, LINEAR_TYPES, Adapter
from adapters.state import load_adapter_file, save_adapter_file

logger = logging.getLogger(__name__)


def _closest(pattern: str, names: Sequence[str], n: int = 5) -> list[str]:
    """Return the layer names most similar to ``pattern`` (for error messages)."""
    return difflib.get_close_matches(pattern, names, n=n, cutoff=0.0)


def _matches(name: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch(name, p) for p in patterns)


def _within(name: str, prefix: str) -> bool:
    """Whether module ``name`` is ``prefix`` or lies inside it."""
    return name == prefix or name.startswith(prefix + ".")


def _parameter_targets(model: nn.Module) -> dict[str, tuple[str, str, slice]]:
    """Projections held in raw parameters: ``{name: (module, parameter, rows)}``.

    Q/K/V of attention modules become ``<attention>.q_proj`` etc.; the
    ``out_proj`` of torch's MultiheadAttention keeps its module name, since
    torch reads its weight directly.
    """
    targets = {}
    for name, module in model.named_modules():
        for block, (param, rows) in projection_blocks(module).items():
            targets[f"{name}.{block}" if name else block] = (name, param, rows)
        if isinstance(module, nn.MultiheadAttention):
            out = f"{name}.out_proj" if name else "out_proj"
            targets[out] = (out, "weight", slice(None))
    return targets


def _check_mergeable(name: str, adapter: nn.Module) -> None:
    """Raise ``TypeError`` unless ``adapter`` can fold into its base weights.

    Our adapters say so with ``mergeable``; foreign ones (PEFT) by having ``merge``.
    """
    if not getattr(adapter, "mergeable", callable(getattr(adapter, "merge", None))):
        raise TypeError(f"Adapter at {name} ({type(adapter).__name__}) cannot be merged.")


def _check_patterns(kind: str, patterns: Sequence[str], names: Sequence[str]) -> None:
    """Raise ``ValueError`` for every pattern that matches no layer name."""
    for pattern in patterns:
        if not any(fnmatch(n, pattern) for n in names):
            raise ValueError(
                f"{kind} pattern {pattern!r} matches no layer of the model. Closest layer "
                f"names: {_closest(pattern, names)}. Patterns use fnmatch wildcards on the "
                "names printed by `model.named_modules()`."
            )


@checkpoints.register_checkpoint_hooks
class AdaptedModel(nn.Module):
    """Wrap a model, freeze it, and replace selected layers by adapters.

    Arguments
    ---------
    model_to_adapt : torch.nn.Module
        The pretrained model. All its parameters are frozen except those of
        ``unfrozen_layers``.
    adapter_class : callable
        Called as ``adapter_class(layer, **adapter_kwargs)`` for every
        selected layer: an adapter of this library, of SpeechBrain, or a
        user's own class.
    all_linear : bool
        Adapt every ``nn.Linear``.
    all_conv : bool
        Adapt every ``nn.Conv1d`` and ``nn.Conv2d``.
    target_layers : list of str, optional
        fnmatch patterns of module names to adapt.
    unfrozen_layers : list of str, optional
        fnmatch patterns of module names trained in full (never adapted).
    adapter_kwargs : dict, optional
        Keyword arguments for ``adapter_class``, e.g. ``{"rank": 8}``.
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
    ) -> None:
        super().__init__()
        self.adapted_model = model_to_adapt
        self.adapter_class = adapter_class
        self.adapter_kwargs = dict(adapter_kwargs or {})
        target_layers = (
            [target_layers] if isinstance(target_layers, str) else list(target_layers or [])
        )
        unfrozen_layers = (
            [unfrozen_layers] if isinstance(unfrozen_layers, str) else list(unfrozen_layers or [])
        )
        self._check_adapter_kwargs()

        # Raw-parameter projections (attention Q/K/V, torch MHA's out_proj) by name.
        self._param_targets = _parameter_targets(model_to_adapt)
        names = [name for name, _ in model_to_adapt.named_modules() if name]
        _check_patterns("target_layers", target_layers, [*names, *self._param_targets])
        _check_patterns("unfrozen_layers", unfrozen_layers, names)

        for param in model_to_adapt.parameters():
            param.requires_grad_(False)
        self.unfrozen_layers: list[str] = []
        for name, module in model_to_adapt.named_modules():
            if name and _matches(name, unfrozen_layers):
                self.unfrozen_layers.append(name)
                for param in module.parameters():
                    param.requires_grad_(True)

        self.adapted_layers = self._select_layers(all_linear, all_conv, target_layers)
        if not self.adapted_layers and (all_linear or all_conv or target_layers):
            raise ValueError(
                "No layer was selected for adaptation: the selected layers are all "
                "unfrozen_layers. Revise target_layers."
            )
        self.inserted = False
        self._foreign_backup: dict[str, torch.Tensor] = {}
        self.merged = False
        self.active_adapter: str | None = "default"
        self._bank: dict[str, dict[str, torch.Tensor]] = {}
        if not manual_adapter_insertion:
            self.insert_adapters()

    def _check_adapter_kwargs(self) -> None:
        """Fail early, with the accepted names, on a misspelled adapter key."""
        try:
            params = inspect.signature(self.adapter_class).parameters
        except (TypeError, ValueError):
            return
        if any(p.kind is p.VAR_KEYWORD for p in params.values()):
            return
        unknown = sorted(set(self.adapter_kwargs) - set(params))
        if unknown:
            accepted = list(params)[1:]  # the first argument is the wrapped layer
            raise TypeError(
                f"adapter_kwargs {unknown} are not accepted by "
                f"{getattr(self.adapter_class, '__name__', self.adapter_class)}; "
                f"accepted: {accepted}."
            )

    def _select_layers(
        self, all_linear: bool, all_conv: bool, target_layers: Sequence[str]
    ) -> list[str]:
        """Names of the layers to adapt, outermost first, none inside another."""
        by_weight = getattr(self.adapter_class, "mergeable", False) is True
        selected: list[str] = []
        candidates: list[tuple[str, Any]] = [
            *self.adapted_model.named_modules(),
            *self._param_targets.items(),
        ]
        for name, target in candidates:
            if not name or name in self.unfrozen_layers or any(_within(name, s) for s in selected):
                continue
            raw = name in self._param_targets
            if raw and isinstance(target, nn.Module):
                continue  # torch MHA's out_proj: reached as a parameter target below
            matched = _matches(name, target_layers)
            wanted = (
                matched
                or (all_linear and (raw or isinstance(target, LINEAR_TYPES)))
                or (all_conv and isinstance(target, CONV_TYPES))
            )
            if not wanted:
                continue
            if raw and not by_weight:
                if matched:
                    raise TypeError(
                        f"{name} is a projection stored as a raw attention parameter; only "
                        "weight-update adapters (LoRA, PoolLoRA, DoRA) can adapt it, not "
                        f"{getattr(self.adapter_class, '__name__', self.adapter_class)}."
                    )
                continue  # all_linear with a module adapter leaves attention as it is
            selected.append(name)
        return selected

    def insert_adapters(self) -> None:
        """Insert the adapters; a second call does nothing."""
        if self.inserted:
            logger.info("Adapters are already inserted; insert_adapters() does nothing.")
            return

        def build(layer: nn.Module) -> nn.Module:
            adapter = self.adapter_class(layer, **self.adapter_kwargs)
            for param in layer.parameters():  # user classes may forget this
                param.requires_grad_(False)
            return adapter

        for name in self.adapted_layers:
            if name in self._param_targets:
                owner, param, rows = self._param_targets[name]
                module = self.adapted_model.get_submodule(owner)
                adapt_parameter(module, param, name.rpartition(".")[2], rows, build)
            else:
                parent_name, _, child = name.rpartition(".")
                parent = self.adapted_model.get_submodule(parent_name)
                setattr(parent, child, build(getattr(parent, child)))
        self.inserted = True
        # The state every new named adapter starts from: adapters at their
        # (identity) initialisation, unfrozen layers and statistics pretrained.
        self._initial_state = self._snapshot()
        logger.info(self.summary(layers=True))

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the adapted model."""
        return self.adapted_model(*args, **kwargs)

    def __getattr__(self, item: str) -> Any:
        """Give access to the attributes of the wrapped model."""
        try:
            return super().__getattr__(item)
        except AttributeError:
            return getattr(super().__getattr__("adapted_model"), item)

    # ---------------------------------------------------------------- merging
    def adapters(self) -> dict[str, nn.Module]:
        """Return ``{layer name: adapter module}`` for the inserted adapters."""
        if not self.inserted:
            return {}
        found = {}
        for name in self.adapted_layers:
            if name in self._param_targets:
                owner, param, _ = self._param_targets[name]
                holder = self.adapted_model.get_submodule(owner).param_adapters[param]
                found[name] = holder.blocks[name.rpartition(".")[2]]
            else:
                found[name] = self.adapted_model.get_submodule(name)
        return found

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
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
        >>> model = AdaptedModel(net, LoRA, all_linear=True, adapter_kwargs={"rank": 1})
        >>> plain = model.export_plain()
        >>> type(plain[0]).__name__, sorted(plain.state_dict())
        ('Linear', ['0.bias', '0.weight', '1.bias', '1.weight'])
        """
        model = copy.deepcopy(self.adapted_model)
        if not self.inserted:
            return model
        for name in self.adapted_layers:
            if name in self._param_targets:
                owner, param, _ = self._param_targets[name]
                adapter = (
                    model.get_submodule(owner).param_adapters[param].blocks[name.rpartition(".")[2]]
                )
                replace = None
            else:
                adapter = model.get_submodule(name)
                replace = getattr(adapter, "base_layer", None)
            _check_mergeable(name, adapter)
            adapter.merge()
            if replace is not None:
                parent, _, child = name.rpartition(".")
                setattr(model.get_submodule(parent), child, replace)
        for module in model.modules():
            if "param_adapters" in module._modules:
                del module._modules["param_adapters"]
                module.__class__ = module._adapted_base
        for param in model.parameters():
            param.requires_grad_(True)
        return model

    # --------------------------------------------------------- named adapters
    def _snapshot(self) -> dict[str, torch.Tensor]:
        return {key: value.clone() for key, value in self.adapter_state_dict().items()}

    def _swap_to(self, state: dict[str, torch.Tensor], name: str | None) -> None:
        if not self.inserted:
            raise RuntimeError("Call insert_adapters() before managing named adapters.")
        if self.merged:
            raise RuntimeError("Unmerge the adapters before switching or disabling them.")
        if self.active_adapter is not None:
            self._bank[self.active_adapter] = self._snapshot()
        self.adapted_model.load_state_dict(state, strict=False)
        self.active_adapter = name

    @property
    def adapter_names(self) -> list[str]:
        """Names of the adapter sets held, the active one included."""
        names = set(self._bank) | ({self.active_adapter} if self.active_adapter else set())
        return sorted(names)

    def add_adapter(self, name: str) -> None:
        """Start a new adapter set ``name`` at its initial state and make it active.

        All sets share this model's adapted layers, adapter class and kwargs;
        each holds its own adapters, unfrozen layers and BatchNorm statistics.
        Switching copies those (small) tensors: one base serves several domains.

        Example
        -------
        >>> from adapters import LoRA
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> model = AdaptedModel(net, LoRA, all_linear=True, adapter_kwargs={"rank": 2})
        >>> x = torch.randn(1, 4)
        >>> _ = model.adapted_model[0].lora_B.data.fill_(1.0)
        >>> noisy = model(x)
        >>> model.add_adapter("telephone")
        >>> torch.equal(model(x), net[0].base_layer(x)), model.adapter_names
        (True, ['default', 'telephone'])
        >>> model.set_adapter("default")
        >>> torch.equal(model(x), noisy)
        True
        """
        if name in self.adapter_names:
            raise ValueError(f"An adapter named {name!r} exists already: {self.adapter_names}.")
        self._swap_to(getattr(self, "_initial_state", {}), name)

    def set_adapter(self, name: str) -> None:
        """Make the adapter set ``name`` active (this also re-enables adapters)."""
        if name == self.active_adapter:
            return
        if name not in self._bank:
            raise KeyError(f"No adapter named {name!r}; available: {self.adapter_names}.")
        self._swap_to(self._bank.pop(name), name)

    def disable_adapters(self) -> None:
        """Compute the pure base model until ``set_adapter`` is called."""
        if self.active_adapter is not None:
            self._swap_to(getattr(self, "_initial_state", {}), None)

    def delete_adapter(self, name: str) -> None:
        """Forget the adapter set ``name`` (switch away from it first)."""
        if name == self.active_adapter:
            raise ValueError(f"{name!r} is active: set_adapter() to another one first.")
        if name not in self._bank:
            raise KeyError(f"No adapter named {name!r}; available: {self.adapter_names}.")
        del self._bank[name]

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
        cls = getattr(self.adapter_class, "__name__", str(self.adapter_class))
        text = (
            f"{cls} on {len(self.adapted_layers)} layers, {len(self.unfrozen_layers)} unfrozen "
            f"layers; trainable parameters {trainable:,} of {total:,} "
            f"({100.0 * trainable / max(total, 1):.2f}%)"
        )
        if not layers:
            return text
        lines = [text]
        for kind, names in (("adapted", self.adapted_layers), ("unfrozen", self.unfrozen_layers)):
            folded = Counter(re.sub(r"(?<![^.])\d+(?![^.])", "*", name) for name in names)
            for pattern, count in folded.items():
                lines.append(f"  {kind:<9} {pattern}" + (f" (x{count})" if count > 1 else ""))
        return "\n".join(lines)

    # ----------------------------------------------------------- checkpoints
    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """What was trained: the trainable parameters, the buffers of adapters
        and unfrozen layers, and the running statistics of every BatchNorm
        (they move in training mode even when the layer is frozen).

        Keys are those of ``model_to_adapt.state_dict()`` after insertion.

        Example
        -------
        >>> from adapters import LoRA
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
        >>> sorted(AdaptedModel(net, LoRA, all_linear=True, adapter_kwargs={"rank": 1})
        ...        .adapter_state_dict())  # doctest: +NORMALIZE_WHITESPACE
        ['0.lora_A', '0.lora_B', '1.num_batches_tracked', '1.running_mean', '1.running_var']
        """
        adapted = [(name, f"{name}.base_layer") for name in self.adapters()]
        norms = {
            name
            for name, module in self.adapted_model.named_modules()
            if isinstance(module, nn.modules.batchnorm._NormBase)
        }

        def trained_buffer(owner: str) -> bool:
            return (
                owner in norms
                or any(_within(owner, u) for u in self.unfrozen_layers)
                or any(_within(owner, a) and not _within(owner, b) for a, b in adapted)
            )

        state = {}
        for key, value in self.adapted_model.state_dict(keep_vars=True).items():
            if isinstance(value, nn.Parameter):
                keep = value.requires_grad
            else:
                keep = trained_buffer(key.rpartition(".")[0])
            if keep:
                state[key] = value.detach()
        return state

    def base_state(self) -> dict[str, torch.Tensor]:
        """The frozen pretrained tensors, under their names in the plain model."""
        state = {}
        for key, value in self.adapted_model.state_dict(keep_vars=True).items():
            if isinstance(value, nn.Parameter) and not value.requires_grad:
                state[key.replace("base_layer.", "")] = value.detach()
        for name, adapter in self.adapters().items():  # merged weights: the original
            if isinstance(adapter, Adapter) and adapter.merged:
                state[f"{name}.weight"] = adapter._unmerged_weight
            elif name in self._foreign_backup:
                state[f"{name}.weight"] = self._foreign_backup[name]
        return state

    def save_adapter(self, path: str) -> None:
        """Write the adapter-only state to ``path`` (safetensors + JSON metadata)."""
        meta = {
            "adapter_class": getattr(self.adapter_class, "__qualname__", str(self.adapter_class)),
            "adapter_module": getattr(self.adapter_class, "__module__", ""),
            "adapter_kwargs": self.adapter_kwargs,
            "adapted_layers": self.adapted_layers,
            "unfrozen_layers": self.unfrozen_layers,
        }
        save_adapter_file(path, self.adapter_state_dict(), meta, self.base_state())

    def load_adapter(self, path: str) -> None:
        """Load a file written by ``save_adapter``; refuses another base model."""
        if not self.inserted:
            self.insert_adapters()
        expected = self.adapter_state_dict()
        tensors = load_adapter_file(path, self.base_state(), expected)
        self.adapted_model.load_state_dict(tensors, strict=False)

    @checkpoints.mark_as_saver
    def _save(self, path: str) -> None:
        self.save_adapter(path)

    @checkpoints.mark_as_loader
    def _load(self, path: str, end_of_epoch: bool) -> None:
        del end_of_epoch
        self.load_adapter(path)

    @checkpoints.mark_as_transfer
    def _transfer(self, path: str) -> None:
        self.load_adapter(path)

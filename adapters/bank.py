"""Named adapter sets on one base: add, switch, disable, delete, and mix in one batch.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from types import MethodType

import torch
from torch import nn

Groups = list[tuple[torch.Tensor, dict[str, torch.Tensor] | None]]


def _by_group(unit: nn.Module, x: torch.Tensor, groups: Groups, *args, **kwargs) -> torch.Tensor:
    """Run ``unit`` on each group of samples with that group's tensors (any module kind)."""
    out = None
    for index, params in groups:
        part = torch.func.functional_call(unit, params, (x[index], *args), kwargs)
        if out is None:
            out = part.new_empty((x.shape[0], *part.shape[1:]))
        out[index] = part
    return out


class AdapterBank(nn.Module):
    """Named sets of what ``AdaptedModel`` trains, swapped in and out of one model.

    Each set holds its own adapters, unfrozen layers and BatchNorm statistics
    (``adapter_state_dict()``); all share the adapted layers, adapter class and
    kwargs. Switching copies those (small) tensors: one base serves several domains.
    """

    def _init_bank(self) -> None:
        self.active_adapter: str | None = "default"
        self._bank: dict[str, dict[str, torch.Tensor]] = {}
        self._mixing = False

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

        Example
        -------
        >>> from adapters import AdaptedModel, LoRA
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

    def _set_state(self, name: str | None) -> dict[str, torch.Tensor]:
        """The tensors of the adapter set ``name`` (``None``: the base model's)."""
        if name is None:
            return self._initial_state
        if name == self.active_adapter:
            return self.adapter_state_dict()
        if name not in self._bank:
            raise KeyError(
                f"No adapter named {name!r} is loaded; available: {self.adapter_names} "
                "(load one with load_adapter(path, adapter_name=...))."
            )
        return self._bank[name]

    def can_mix(self) -> str | None:
        """None if one batch may mix adapter sets (:meth:`mixed_adapters`), else why not
        (adapters on raw weights change one weight for the whole batch)."""
        try:
            self._mixing_units()
        except ValueError as err:
            return str(err)
        return None

    def _mixing_units(self) -> dict[str, nn.Module]:
        """The modules whose tensors differ between adapter sets, by path."""
        raw = [p for p in self._adapter_paths().values() if ".param_adapters." in f".{p}"]
        if raw:
            raise ValueError(
                f"Mixed batches cannot serve adapters on raw weights ({raw[0]}, {len(raw)} in "
                "all: torch attention's packed projections, recurrent weights): those adapters "
                "change one weight for the whole batch. Adapt the Linear/conv layers instead, "
                "or run one adapter set per batch (set_adapter)."
            )
        roots = [*self._adapter_paths().values(), *self.unfrozen_layers]
        units = {}
        for key in self._initial_state:
            owner = next((r for r in roots if key.startswith(f"{r}.")), key.rpartition(".")[0])
            units[owner] = self.adapted_model.get_submodule(owner)
        return units

    @contextlib.contextmanager
    def mixed_adapters(self, names: Sequence[str | None]) -> Iterator[None]:
        """Within this context, sample ``i`` of every batch uses the adapter set
        ``names[i]`` (``None``: the base model), as PEFT's ``adapter_names=``.

        Inputs carry the batch in dimension 0; a batch ``k`` times longer (beam
        search) repeats each name ``k`` times in a row. LoRA, PoolLoRA and DoRA
        compute the base product once for the batch; other adapters, unfrozen
        layers and BatchNorm statistics run once per group of samples.

        Example
        -------
        >>> from adapters import AdaptedModel, LoRA
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> model = AdaptedModel(net, LoRA, all_linear=True, adapter_kwargs={"rank": 2})
        >>> _ = model.adapted_model[0].lora_B.data.fill_(1.0)
        >>> x = torch.randn(2, 4)
        >>> with model.mixed_adapters(["default", None]):
        ...     out = model(x)
        >>> torch.allclose(out[0], model(x[:1])[0]), torch.allclose(out[1], net[0].base_layer(x[1]))
        (True, True)
        """
        if not self.inserted:
            raise RuntimeError("Call insert_adapters() before running mixed batches.")
        if self.merged:
            raise RuntimeError("Unmerge the adapters before running a mixed batch.")
        if self._mixing:
            raise RuntimeError("A mixed batch is already being run.")
        units = self._mixing_units()
        states = {name: self._set_state(name) for name in dict.fromkeys(names)}
        live = self.adapter_state_dict()  # where each tensor must be (sets may sit elsewhere)
        per_unit = {
            path: {
                name: {
                    key[len(path) + 1 :]: value.to(live[key].device)
                    for key, value in state.items()
                    if key.startswith(f"{path}.")
                }
                for name, state in states.items()
            }
            for path in units
        }
        cache: dict[tuple[int, torch.device], dict[str | None, torch.Tensor]] = {}

        def indices(batch: int, device: torch.device) -> dict[str | None, torch.Tensor]:
            if (batch, device) not in cache:
                if batch % len(names):
                    raise ValueError(
                        f"A layer got a batch of {batch} samples for {len(names)} adapter names: "
                        "give one name per sample of the batch."
                    )
                repeated = [n for n in names for _ in range(batch // len(names))]
                cache[batch, device] = {
                    name: torch.tensor(
                        [i for i, n in enumerate(repeated) if n == name], device=device
                    )
                    for name in states
                }
            return cache[batch, device]

        def make_forward(unit: nn.Module, path: str):
            fast = callable(getattr(unit, "mixed_forward", None))

            def forward(self_: nn.Module, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
                groups = [
                    (index, per_unit[path][name] if name is not None or not fast else None)
                    for name, index in indices(x.shape[0], x.device).items()
                ]
                if fast and not args and not kwargs:
                    return unit.mixed_forward(x, groups)
                del unit.forward  # functional_call runs the class's forward
                try:
                    return _by_group(unit, x, groups, *args, **kwargs)
                finally:
                    unit.forward = MethodType(forward, unit)

            return forward

        self._mixing = True
        try:
            for path, unit in units.items():
                unit.forward = MethodType(make_forward(unit, path), unit)
            yield
        finally:
            for unit in units.values():
                unit.__dict__.pop("forward", None)
            self._mixing = False

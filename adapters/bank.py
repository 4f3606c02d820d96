"""Named adapter sets on one base: add, switch, disable, delete.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import torch
from torch import nn


class AdapterBank(nn.Module):
    """Named sets of what ``AdaptedModel`` trains, swapped in and out of one model.

    Each set holds its own adapters, unfrozen layers and BatchNorm statistics
    (``adapter_state_dict()``); all share the adapted layers, adapter class and
    kwargs. Switching copies those (small) tensors: one base serves several domains.
    """

    def _init_bank(self) -> None:
        self.active_adapter: str | None = "default"
        self._bank: dict[str, dict[str, torch.Tensor]] = {}

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

"""Adapter-only files: safetensors tensors with JSON metadata and a base fingerprint.

A file holds only what was trained, and says how to apply it. Its metadata
records the adapter kind and the format version, the settings as given and as
applied (rank, alpha, the scaling rule and each layer's scaling), the adapted
and unfrozen layers, each tensor's name, dtype and shape, a SHA-256 checksum of
the tensors, and a fingerprint of the frozen base (parameter names, shapes,
dtypes and a SHA-256 of their values). Loading refuses, naming what differs:
another base model, other settings (a file trained at ``alpha: 8`` is never
applied at ``alpha: 16``), a damaged file (checksum) and non-finite tensors.
Files of the first format version (no checksum, no applied settings) still load,
with a warning that they are unchecked.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from speechbrain.utils import checkpoints
from torch import nn

from adapters.base import Adapter, accepted_kwargs, within

FORMAT = "speech-adapters/2"
_FIRST_FORMAT = "speech-adapters/1"
_META_KEY = "speech_adapters"
#: Constructor arguments that shape training only: an adapter trained with other values
#: is applied the same way, so a file is not refused for them. ``freeze_a`` (LoRA-FA) and
#: ``saved_input_dtype`` change what backward keeps and what trains, never the forward:
#: the file holds ``A`` and ``B`` either way, applied as ``W + s B A``.
TRAINING_ONLY = frozenset({"init", "dropout", "freeze_a", "saved_input_dtype"})


def base_fingerprint(state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Fingerprint a set of frozen tensors.

    Arguments
    ---------
    state : mapping of str to torch.Tensor
        The frozen base tensors by name.

    Returns
    -------
    dict
        ``layout`` hashes names, shapes and dtypes, ``values`` hashes the
        bytes too, ``num_parameters`` counts elements.

    Example
    -------
    >>> a = base_fingerprint({"w": torch.zeros(2, 3)})
    >>> b = base_fingerprint({"w": torch.ones(2, 3)})
    >>> a["layout"] == b["layout"], a["values"] == b["values"], a["num_parameters"]
    (True, False, 6)
    """
    layout, values = hashlib.sha256(), hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        header = f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode()
        layout.update(header)
        values.update(header)
        values.update(
            tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        )
    return {
        "layout": layout.hexdigest(),
        "values": values.hexdigest(),
        "num_parameters": sum(t.numel() for t in state.values()),
    }


def save_adapter_file(
    path: str | os.PathLike,
    tensors: Mapping[str, torch.Tensor],
    meta: Mapping[str, Any],
    base_state: Mapping[str, torch.Tensor],
) -> None:
    """Write ``tensors`` to a safetensors file whose header carries ``meta``.

    The file is written to a temporary name and renamed, so a crash never
    leaves a half-written adapter behind.
    """
    bad = [key for key, value in tensors.items() if not bool(torch.isfinite(value).all())]
    if bad:
        raise ValueError(
            f"Refusing to write {path}: the adapter holds non-finite values in {bad[:5]} "
            f"({len(bad)} tensors). Training diverged; lower the learning rate and check the data."
        )
    data = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    header = {
        "format": FORMAT,
        **meta,
        "tensors": {k: {"dtype": str(v.dtype), "shape": list(v.shape)} for k, v in data.items()},
        "checksum": tensors_checksum(data),
        "base": base_fingerprint(base_state),
    }
    tmp = f"{os.fspath(path)}.tmp"
    save_file(data, tmp, metadata={_META_KEY: json.dumps(header, default=repr)})
    os.replace(tmp, path)


def tensors_checksum(tensors: Mapping[str, torch.Tensor]) -> str:
    """SHA-256 of a set of tensors: names, shapes, dtypes and bytes.

    Example
    -------
    >>> a = tensors_checksum({"w": torch.zeros(2)})
    >>> a == tensors_checksum({"w": torch.zeros(2)}), a == tensors_checksum({"w": torch.ones(2)})
    (True, False)
    """
    return base_fingerprint(tensors)["values"]


def settings_mismatch(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """How the settings a file records differ from a model's: ``"<setting>: the file has
    <value>, this model <value>"`` per difference (adapter kind, applied settings, each
    layer's scaling, adapted and unfrozen layers).

    Example
    -------
    >>> file = {"adapter_class": "LoRA", "settings": {"rank": 4, "alpha": 8.0},
    ...         "scaling": {"fc": 2.0}}
    >>> model = {"adapter_class": "LoRA", "settings": {"rank": 4, "alpha": 16.0},
    ...          "scaling": {"fc": 4.0}}
    >>> settings_mismatch(file, model)
    ['alpha: the file has 8.0, this model 16.0', 'scaling of fc: the file has 2.0, this model 4.0']
    """
    problems = []

    def differ(name: str, a: Any, b: Any) -> None:
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (a, b))
        floats = isinstance(a, float) or isinstance(b, float)
        same = math.isclose(a, b, rel_tol=1e-6) if numbers and floats else a == b
        if not same:
            problems.append(f"{name}: the file has {a}, this model {b}")

    differ("adapter kind", saved.get("adapter_class"), current.get("adapter_class"))
    mine, theirs = saved.get("settings", {}), current.get("settings", {})
    by_layer = saved.get("layer_settings"), current.get("layer_settings")
    if not any(by_layer):
        for key in sorted(set(mine) & set(theirs) - TRAINING_ONLY):
            differ(key, mine[key], theirs[key])
    else:  # settings by layer group: each layer's own, however the groups were written
        layers = set(saved.get("adapted_layers", [])) & set(current.get("adapted_layers", []))
        for layer in sorted(layers):
            ours = {**mine, **(by_layer[0] or {}).get(layer, {})}
            other = {**theirs, **(by_layer[1] or {}).get(layer, {})}
            for key in sorted(set(ours) & set(other) - TRAINING_ONLY):
                differ(f"{key} of {layer}", ours[key], other[key])
    mine, theirs = saved.get("scaling", {}), current.get("scaling", {})
    for layer in sorted(set(mine) & set(theirs)):
        differ(f"scaling of {layer}", mine[layer], theirs[layer])
    for key in ("adapted_layers", "unfrozen_layers"):
        if key in saved and key in current and sorted(saved[key]) != sorted(current[key]):
            gone = sorted(set(saved[key]) - set(current[key]))
            new = sorted(set(current[key]) - set(saved[key]))
            problems.append(f"{key}: only in the file {gone[:3]}, only in this model {new[:3]}")
    return problems


def by_layer_note(meta: Mapping[str, Any]) -> str:
    """`` with adapter_kwargs_by_layer {...}`` when the file has per-layer settings, else ``""``.

    Example
    -------
    >>> by_layer_note({"adapter_kwargs_by_layer": {"enc*": {"rank": 8}}}), by_layer_note({})
    (" with adapter_kwargs_by_layer {'enc*': {'rank': 8}}", '')
    """
    by_layer = meta.get("adapter_kwargs_by_layer")
    return f" with adapter_kwargs_by_layer {by_layer}" if by_layer else ""


def read_adapter_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """Return the JSON metadata stored in an adapter file."""
    try:
        with safe_open(os.fspath(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(_META_KEY)
    except Exception as err:  # safetensors raises its own error types
        raise ValueError(
            f"{path} is not an adapter file of this library (safetensors expected): {err}"
        ) from err
    if raw is None:
        raise ValueError(f"{path} has no {_META_KEY!r} metadata: it was not saved by AdaptedModel.")
    return json.loads(raw)


def load_adapter_file(
    path: str | os.PathLike,
    base_state: Mapping[str, torch.Tensor],
    expected: Mapping[str, torch.Tensor],
    settings: Mapping[str, Any] | None = None,
) -> dict[str, torch.Tensor]:
    """Read an adapter file after checking it belongs to this base, these settings and
    this layout, and that its tensors are intact and finite.

    ``base_state`` holds the frozen tensors of the model it is loaded into,
    ``expected`` its adapter state (names and shapes the file must provide),
    ``settings`` its adapter metadata (as :meth:`AdapterCheckpoints.adapter_metadata`
    gives it), compared with the file's by :func:`settings_mismatch`.
    Returns the tensors, for ``load_state_dict(..., strict=False)``.
    """
    meta = read_adapter_metadata(path)
    here = base_fingerprint(base_state)
    saved = meta.get("base", {})
    if saved.get("layout") != here["layout"]:
        raise ValueError(
            f"{path} was trained on another base model (different parameter names or shapes: "
            f"{saved.get('num_parameters')} vs {here['num_parameters']} frozen parameters). "
            "Load the base model the adapter was trained on, with the same adapter settings."
        )
    if saved.get("values") != here["values"]:
        raise ValueError(
            f"{path} was trained on a base model with the same layout but other weights "
            "(fingerprints differ). Load the pretrained checkpoint the adapter was trained on "
            "before loading the adapter."
        )
    checked = meta.get("format") != _FIRST_FORMAT
    if not checked:
        warnings.warn(
            f"{path} was written before adapter files carried their applied settings and a "
            "checksum: its scale (alpha) and integrity are unchecked. Save it again with "
            "save_adapter() to make it checkable.",
            stacklevel=3,
        )
    problems = settings_mismatch(meta, settings or {}) if checked else []
    if problems:
        raise ValueError(
            f"{path} was trained with other adapter settings than this model's: "
            + "; ".join(problems[:5])
            + ". Build the AdaptedModel with the settings the file records (read them with "
            "adapters.read_adapter_metadata), e.g. adapter_kwargs "
            f"{meta.get('adapter_kwargs')}"
            + by_layer_note(meta)
            + "; applying it otherwise gives wrong outputs."
        )
    with safe_open(os.fspath(path), framework="pt") as handle:
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (safe_open is no dict)
    if checked and tensors_checksum(tensors) != meta.get("checksum"):
        raise ValueError(
            f"{path} is damaged: its tensors do not match the checksum recorded when it was "
            "written (a changed byte, or an edited file). Use the run's own copy, or train again."
        )
    bad = sorted(k for k, v in tensors.items() if not bool(torch.isfinite(v).all()))
    if bad:
        raise ValueError(
            f"{path} holds non-finite values (NaN or infinity) in {bad[:5]} ({len(bad)} "
            "tensors): applying it would give wrong outputs. Use another copy, or train again."
        )
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in tensors if k in expected and tensors[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} does not fit this adapted model: missing {missing[:5]}, unexpected "
            f"{unexpected[:5]}, wrong shape {wrong[:5]}. Build the AdaptedModel with the "
            f"settings it was saved with: {meta.get('adapter_class')} {meta.get('adapter_kwargs')}"
            + by_layer_note(meta)
            + "."
        )
    return tensors


@checkpoints.register_checkpoint_hooks
class AdapterCheckpoints(nn.Module):
    """What ``AdaptedModel`` saves and loads: the trained tensors, checked against the base."""

    def adapter_state_dict(self) -> dict[str, torch.Tensor]:
        """What was trained: the trainable parameters, the buffers of adapters
        and unfrozen layers, and the running statistics of every BatchNorm
        (they move in training mode even when the layer is frozen).

        Keys are those of ``model_to_adapt.state_dict()`` after insertion.

        Example
        -------
        >>> from adapters import AdaptedModel, LoRA
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
        >>> sorted(AdaptedModel(net, LoRA, all_linear=True, adapter_kwargs={"rank": 1})
        ...        .adapter_state_dict())  # doctest: +NORMALIZE_WHITESPACE
        ['0.lora_A', '0.lora_B', '1.num_batches_tracked', '1.running_mean', '1.running_var']
        """
        state = self.adapted_model.state_dict(keep_vars=True)
        return {key: state[key].detach() for key in self._trained_keys(state)}

    def _trained_keys(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Keys of ``state`` that training changes, by the model's structure (so freezing
        everything for inference, as SpeechBrain's interfaces do, changes nothing here)."""
        paths = self._adapter_paths().values() if self.inserted else []
        adapted = [(path, f"{path}.base_layer") for path in paths]
        norms = {
            name
            for name, module in self.adapted_model.named_modules()
            if isinstance(module, nn.modules.batchnorm._NormBase)
        }

        def trained(key: str, value: torch.Tensor) -> bool:
            owner = key.rpartition(".")[0]
            in_adapter = any(within(owner, a) and not within(owner, b) for a, b in adapted)
            in_unfrozen = any(within(owner, u) for u in self.unfrozen_layers)
            if isinstance(value, nn.Parameter):
                return value.requires_grad or in_adapter or in_unfrozen
            return owner in norms or in_adapter or in_unfrozen

        return [key for key, value in state.items() if trained(key, value)]

    def base_state(self) -> dict[str, torch.Tensor]:
        """The frozen pretrained tensors, under their names in the plain model."""
        state = self.adapted_model.state_dict(keep_vars=True)
        trained = set(self._trained_keys(state))
        base = {}
        for key, value in state.items():
            if isinstance(value, nn.Parameter) and key not in trained:
                base[key.replace("base_layer.", "")] = value.detach()
        state = base
        for name, adapter in self.adapters().items():  # merged weights: the original
            merged = isinstance(adapter, Adapter) and adapter.merged
            original = adapter._unmerged_weight if merged else self._foreign_backup.get(name)
            target = self._param_targets.get(name)
            if original is not None and target is None:
                state[f"{name}.weight"] = original
            elif original is not None:
                key = f"{target.owner}.{target.param}".lstrip(".")
                state[key] = state[key].clone()
                state[key][target.rows] = original
        return state

    def adapter_metadata(self) -> dict[str, Any]:
        """How this model's adapters are applied, as an adapter file records it.

        ``settings``: the adapter class's constructor arguments as the first adapter
        holds them (defaults resolved, e.g. ``alpha`` equal to ``rank``);
        ``layer_settings``: the settings of each layer where they differ from those
        (``adapter_kwargs_by_layer``);
        ``scaling``: each layer's scale (``alpha / rank``, or ``alpha / sqrt(rank)``
        with rsLoRA), where the adapter has one.

        Example
        -------
        >>> from adapters import AdaptedModel, LoRA
        >>> net = torch.nn.Sequential(torch.nn.Linear(4, 4))
        >>> meta = AdaptedModel(net, LoRA, all_linear=True,
        ...                     adapter_kwargs={"rank": 2}).adapter_metadata()
        >>> meta["settings"]["alpha"], meta["scaling"]
        (2.0, {'0': 1.0})
        """
        adapters = self.adapters() if self.inserted else {}
        first = min(adapters) if adapters else None
        settings = self._applied_settings(adapters.get(first), self.adapter_kwargs)
        layer_settings = {}
        for name, adapter in adapters.items():
            own = self._applied_settings(adapter, self.layer_kwargs(name))
            differs = {k: v for k, v in own.items() if settings.get(k) != v}
            if differs:
                layer_settings[name] = differs
        return {
            "adapter_class": getattr(self.adapter_class, "__qualname__", str(self.adapter_class)),
            "adapter_module": getattr(self.adapter_class, "__module__", ""),
            "adapter_kwargs": self.adapter_kwargs,
            "adapter_kwargs_by_layer": self.adapter_kwargs_by_layer,
            "settings": settings,
            "layer_settings": layer_settings,
            "scaling": {
                name: float(a.scaling)
                for name, a in adapters.items()
                if isinstance(getattr(a, "scaling", None), (int, float))
            },
            "adapted_layers": self.adapted_layers,
            "unfrozen_layers": self.unfrozen_layers,
        }

    def _applied_settings(self, adapter: nn.Module | None, kwargs: Mapping[str, Any]) -> dict:
        """The constructor arguments as ``adapter`` holds them (``kwargs`` where it does not)."""
        settings = {}
        for name in accepted_kwargs(self.adapter_class) or list(kwargs):
            value = getattr(adapter, name, kwargs.get(name))
            if value is None or isinstance(value, (bool, int, float, str)):
                settings[name] = value
        return settings

    def save_adapter(self, path: str) -> None:
        """Write the adapter-only state to ``path`` (safetensors + JSON metadata)."""
        self._require_inserted("save_adapter() called")
        meta = self.adapter_metadata()
        save_adapter_file(path, self.adapter_state_dict(), meta, self.base_state())

    def load_adapter(self, path: str, adapter_name: str | None = None) -> None:
        """Load a file written by ``save_adapter``; refuses another base model.

        With ``adapter_name``, the file becomes a named adapter set held beside the
        active one (``set_adapter``, ``mixed_adapters``); without, it replaces the
        active set's tensors.
        """
        if not self.inserted:
            self.insert_adapters()
        expected = self.adapter_state_dict()
        tensors = load_adapter_file(path, self.base_state(), expected, self.adapter_metadata())
        if adapter_name is None or adapter_name == self.active_adapter:
            self.adapted_model.load_state_dict(tensors, strict=False)
            return
        if adapter_name in self.adapter_names:
            raise ValueError(
                f"An adapter named {adapter_name!r} is loaded already: {self.adapter_names}."
            )
        device = {key: value.device for key, value in expected.items()}
        self._bank[adapter_name] = {
            **self._initial_state,
            **{key: value.to(device[key]) for key, value in tensors.items()},
        }

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

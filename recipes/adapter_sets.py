"""Several adapter sets on one base: what the inference commands share.

``recipes.transcribe``, ``recipes.verify``, ``recipes.segment`` and ``recipes.enhance``
take a SOURCE (a run folder, its ``inference/`` folder, or an adapter file with
``--base``), repeated ``--adapter NAME=PATH`` options loading named adapter sets onto
the source's ``AdaptedModel`` (``--adapter NAME`` choosing the set files use by
default), and a manifest column choosing a set per file. ``default`` names the
source's own adapter, ``none`` the base model. A batch whose files chose different
sets runs as one mixed batch (``AdaptedModel.mixed_adapters``) when the adapters allow
it, else batches hold one set each.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import importlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from recipes.audio import audio_inputs
from recipes.inference import (
    BASE_KEYS,
    INTERFACES,
    MODEL_FOLDERS,
    load_task_interface,
    model_inference_folder,
)

logger = logging.getLogger(__name__)
T = TypeVar("T")
#: The name that chooses the base model, without adapters.
BASE = "none"


def add_source_arguments(parser: argparse.ArgumentParser, column: bool = True) -> None:
    """The options every inference command shares: SOURCE, ``--base``, ``--adapter`` and
    (for commands reading manifests per file) ``--adapter_column``.

    Example
    -------
    >>> parser = argparse.ArgumentParser()
    >>> add_source_arguments(parser)
    >>> args = parser.parse_args(["run", "--adapter", "v=a.safetensors", "--adapter", "none"])
    >>> args.source, args.base, args.adapter, args.adapter_column
    ('run', None, ['v=a.safetensors', 'none'], 'adapter')
    """
    parser.add_argument("source", help="run folder, inference folder, or adapter file (--base)")
    parser.add_argument("--base", help="the base of an adapter file given as SOURCE")
    parser.add_argument(
        "--adapter", action="append", default=[], metavar="NAME=PATH|NAME",
        help="load an adapter set by name (repeatable); NAME alone: the default ('none': the base)",
    )  # fmt: skip
    if column:
        parser.add_argument("--adapter_column", default="adapter", help="manifest column: adapter")


def adapter_spec(adapter_file: str | os.PathLike) -> type:
    """What :func:`recipes.inference.adapter_block` reads of an ``AdaptedModel``, from the
    metadata of an adapter file: its class, adapted and unfrozen layers, settings."""
    from adapters import read_adapter_metadata

    meta = read_adapter_metadata(adapter_file)
    cls = type(meta["adapter_class"], (), {"__module__": meta["adapter_module"]})
    cls.__qualname__ = meta["adapter_class"]
    return type(
        "AdapterSpec",
        (),
        {
            "adapter_class": cls,
            "adapted_layers": meta["adapted_layers"],
            "unfrozen_layers": meta["unfrozen_layers"],
            "adapter_kwargs": meta["adapter_kwargs"],
            "adapter_kwargs_by_layer": meta.get("adapter_kwargs_by_layer", {}),
        },
    )


def adapted_model_of(interface: Any) -> torch.nn.Module | None:
    """The ``AdaptedModel`` inside a loaded SpeechBrain interface, if it has adapters."""
    from adapters import AdaptedModel

    return next((m for m in interface.mods.modules() if isinstance(m, AdaptedModel)), None)


def load_task_source(
    source: str | os.PathLike,
    base: str | os.PathLike | None,
    interface: str,
    recipe: str,
    workdir: str | os.PathLike,
    device: str = "cpu",
) -> tuple[Any, Path | None]:
    """The ``interface`` for SOURCE of a task of :data:`recipes.inference.MODEL_FOLDERS`,
    and the adapter file still to load into its default set (or None).

    SOURCE is a run folder or its ``inference/`` folder; or an adapter file with ``base``:
    a run or inference folder of a run on that base (its settings, e.g. thresholds, are
    used), or the base checkpoint itself (an inference folder is written in ``workdir``
    with the template's settings and the sizes read from the checkpoint).
    """
    path = Path(source)
    if not path.is_file():
        if not path.is_dir():
            raise FileNotFoundError(f"{source} is neither a run folder nor an adapter file.")
        return load_task_interface(path, interface, recipe, device), None
    if base is None:
        raise ValueError(
            f"{source} is an adapter file: name the base it was trained on with --base (its "
            "checkpoint, or the folder of a run on that base)."
        )
    if Path(base).is_dir():
        return load_task_interface(base, interface, recipe, device), path
    if not Path(base).is_file():
        raise FileNotFoundError(f"--base {base} does not exist.")
    from safetensors.torch import load_file

    module, _, name = INTERFACES[interface].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    values = {"base_checkpoint": str(Path(base).resolve()), **cls.base_sizes(load_file(base))}
    task, modules = MODEL_FOLDERS[interface]
    folder = model_inference_folder(
        Path(workdir) / "inference", task, values, adapter_spec(path), {"adapter.ckpt": path},
        modules, base=BASE_KEYS.get(interface, "model"),
    )  # fmt: skip
    return load_task_interface(folder, interface, recipe, device), None


def load_adapter_sets(
    adapted: torch.nn.Module | None,
    specs: Sequence[str],
    own_file: str | os.PathLike | None = None,
    report: Callable[[str], None] | None = None,
) -> tuple[str | None, list[str]]:
    """Load the ``--adapter NAME=PATH`` sets of ``specs`` onto ``adapted``; ``--adapter NAME``
    (``none``: the base model) chooses the set files use unless they choose one.

    ``own_file`` (an adapter file given as SOURCE) fills the default set first. A set whose
    file cannot be loaded is reported (one line through ``report``, by default on standard
    error) and its name returned in the failed list. Returns the default choice (None: the
    base model) and the failed names. A malformed option, or sets for a model without
    adapters, raise ``ValueError``.
    """
    if own_file is not None:
        if adapted is None:
            raise ValueError("--base names a model without adapters: give an adapted run's folder.")
        adapted.load_adapter(str(own_file))
    default: str | None = "default" if adapted is not None else None
    failed: list[str] = []
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not name or (sep and not path):
            raise ValueError(f"--adapter {spec!r}: write NAME=PATH, or NAME to choose a set.")
        if adapted is None and name != BASE:
            raise ValueError(
                f"--adapter {name}: this model has no adapters to switch (a full fine-tuning or "
                "pretraining run); give an adapted run's folder."
            )
        if not sep:
            default = None if name == BASE else name
            continue
        try:
            adapted.load_adapter(path, adapter_name=name)
        except (ValueError, OSError) as err:  # the files that chose it are reported as such
            (report or _to_stderr)(f"error: --adapter {name}={path}: {err}")
            failed.append(name)
    return default, failed


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr)


def choice_error(adapted: torch.nn.Module | None, name: str | None) -> str:
    """Why files cannot use the adapter set ``name`` (None: the base), or ``""``."""
    known = set(adapted.adapter_names) if adapted is not None else set()
    if name is None or name in known:
        return ""
    loaded = ", ".join(sorted(known)) or "none (the model has no adapters)"
    return f"adapter {name!r} is not loaded (loaded: {loaded}, and {BASE!r}: the base model)"


def resolve_choice(choice: str | None, default: str | None) -> str | None:
    """The set a file uses: its own ``choice`` (``none``: the base, None) or ``default``.

    Example
    -------
    >>> resolve_choice(None, "default"), resolve_choice("none", "default"), resolve_choice("x", None)
    ('default', None, 'x')
    """
    choice = default if choice is None else choice
    return None if choice == BASE else choice


def can_mix(adapted: torch.nn.Module | None) -> bool:
    """Whether one batch may mix adapter sets (not with adapters on raw weights)."""
    if adapted is None:
        return False
    reason = adapted.can_mix()
    if reason is not None:
        logger.warning("%s Files are batched per adapter instead.", reason)
        return False
    return True


def batches(
    items: Sequence[T], size: int, adapter_of: Callable[[T], str | None], mixable: bool
) -> list[list[T]]:
    """Batches of ``size`` items, in order; without mixing, each holds one adapter's items.

    Example
    -------
    >>> names = ["a", "b", "a", None]
    >>> batches(names, 2, lambda n: n, mixable=True)
    [['a', 'b'], ['a', None]]
    >>> batches(names, 2, lambda n: n, mixable=False)
    [['a', 'a'], ['b'], [None]]
    """
    if mixable:
        return [list(items[i : i + size]) for i in range(0, len(items), size)]
    groups: dict[str | None, list[T]] = {}
    for item in items:
        groups.setdefault(adapter_of(item), []).append(item)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


@contextlib.contextmanager
def using_adapters(
    adapted: torch.nn.Module | None, names: Sequence[str | None] | None
) -> Iterator[None]:
    """Run a batch whose sample ``i`` uses the set ``names[i]`` (None: the base model): one
    mixed batch when the names differ, else that set, active for the batch only. Nothing
    changes when ``names`` is None or the model has no adapters."""
    if adapted is None or names is None:
        yield
        return
    if len(set(names)) > 1:
        with adapted.mixed_adapters(list(names)):
            yield
        return
    previous = adapted.active_adapter
    activate(adapted, names[0])
    try:
        yield
    finally:
        activate(adapted, previous)


def activate(adapted: torch.nn.Module, name: str | None) -> None:
    """Make the set ``name`` active (None: the base model)."""
    if name is None:
        adapted.disable_adapters()
    else:
        adapted.set_adapter(name)


@dataclass
class Input:
    """One input file, the adapter set its manifest row chose (None: not chosen), and an
    error that keeps it from being processed."""

    path: Path
    choice: str | None = None
    adapter: str | None = None
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


def inputs_with_choices(entries: Sequence[str], column: str) -> list[Input]:
    """:func:`recipes.audio.audio_inputs` of ``entries``, each with the value of a manifest's
    ``column`` (empty or absent: no choice)."""
    found: list[Input] = []
    for entry in entries:
        files = audio_inputs([entry])
        choices: list[str | None] = [None] * len(files)
        path = Path(entry)
        if path.suffix.lower() == ".csv" and path.is_file():
            with open(path, encoding="utf-8-sig", newline="") as handle:
                rows = list(csv.DictReader(handle, skipinitialspace=True))
            choices = [
                (next((v for k, v in row.items() if k and k.strip() == column), "") or "").strip()
                or None
                for row in rows
            ]
        found += [Input(file, choice) for file, choice in zip(files, choices, strict=True)]
    return found


def assign_adapters(
    inputs: Sequence[Input], adapted: torch.nn.Module | None, default: str | None
) -> None:
    """Set each input's adapter set (its choice, else ``default``), or its error when that
    set is not loaded."""
    for item in inputs:
        item.adapter = resolve_choice(item.choice, default)
        item.error = item.error or choice_error(adapted, item.adapter)

"""Run bookkeeping every recipe shares: so that a result is either right or refused.

- ``RunLock``: one run per output folder (the holder's pid and host; a lock left by
  a dead process is taken over with a warning).
- ``input_fingerprint`` / ``check_inputs``: what a run was built from (base weights,
  data contents, settings, code), recorded in ``inputs.json``; a rerun or
  continuation whose inputs differ stops and names what changed.

Exact resumption after a kill (``RunState``, ``CompleteCheckpointer``, ``fault_point``)
is :mod:`recipes.resumption`.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable, Collection, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch

from recipes.io import sha256_file, sha256_json, write_json

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parents[1]

#: Settings that do not change a run's figures (paths, workers, caches): left out of fingerprints.
NEUTRAL_SETTINGS = frozenset({
    "output_folder", "save_folder", "train_log", "data_folder", "num_workers", "before_cache",
    "hub_cache", "converted_folder", "prepare_corpus", "number_of_epochs", "base_checkpoint",
    "whisper_source", "fresh_start",
})  # fmt: skip
#: What a fresh start removes from an output folder (never anything else).
RUN_FILES = ("save", "summary.json", "before.json", "inputs.json", "adapter.safetensors",
             "train_log.txt")  # fmt: skip


# ------------------------------------------------------------------- lock
class RunLock:
    """``<folder>/.lock`` held by one process; a second run into the folder stops at once.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> lock = RunLock(folder)
    >>> RunLock(folder)
    Traceback (most recent call last):
        ...
    RuntimeError: Another run (pid ...) is using the output folder ...
    >>> lock.release()
    >>> RunLock(folder).release()
    """

    def __init__(self, folder: str) -> None:
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, ".lock")
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.ctime()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder.get("host") == me["host"] and not _alive(holder.get("pid")):
                    logger.warning("Taking over the lock of a dead run: %s", holder)
                    os.remove(self.path)
                    continue
                raise RuntimeError(
                    f"Another run (pid {holder.get('pid')} on {holder.get('host')}, started "
                    f"{holder.get('started')}) is using the output folder {folder}. Wait for it "
                    f"to end or choose another --output_folder; if no such run exists, delete "
                    f"{self.path}."
                ) from None
            with os.fdopen(fd, "w") as handle:
                json.dump(me, handle)
            return
        raise RuntimeError(f"Could not take the lock {self.path}; delete it and retry.")

    def _holder(self) -> dict:
        try:
            with open(self.path) as handle:
                return json.load(handle)
        except (OSError, ValueError):
            return {}  # a lock being written, or unreadable: treat as held by nobody alive

    def release(self) -> None:
        if self._holder().get("pid") == os.getpid():
            os.remove(self.path)


def _alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


# ---------------------------------------------------------- fingerprints
def data_fingerprint(dataset, file_columns: Collection[str] = ("wav",)) -> str:
    """A ``DynamicItemDataset``'s contents: its IDs and every column of its rows.

    Every column counts, whether the task reads it or not (transcripts, speech
    segments, speaker IDs, durations, paired references...), so that no change
    to what a figure depends on goes unseen. A column of ``file_columns`` names a
    file: the file's bytes are hashed instead of its path, so a corpus moved
    elsewhere is the same data and a file regenerated in place is not.

    Parameters
    ----------
    dataset : DynamicItemDataset
        The rows (``dataset.data``) of the IDs it holds (``dataset.data_ids``).
    file_columns : collection of str
        The columns naming files whose contents the task reads (audio, references).

    Returns
    -------
    str
        A SHA-256 hex digest.
    """
    digest = hashlib.sha256()
    for uid in sorted(dataset.data_ids):
        row = {"ID": uid, **dataset.data[uid]}
        for column in file_columns:
            if isinstance(row.get(column), str) and os.path.isfile(row[column]):
                row[column] = {"sha256": sha256_file(row[column])}
        digest.update(sha256_json(row).encode())
    return digest.hexdigest()


def tensors_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """The values of a set of tensors (a base model's weights)."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
        digest.update(
            tensor.reshape(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        )
    return digest.hexdigest()


def settings_fingerprint(hparams: Mapping[str, Any]) -> dict[str, str]:
    """A hash per setting that can change the figures (plain YAML values only; where the
    data lies is left out, its contents are fingerprinted instead)."""
    out = {}
    for key, value in hparams.items():
        neutral = key in NEUTRAL_SETTINGS or key.endswith("_csv") or key == "test_sets"
        if neutral or key.startswith("__") or not _plain(value):
            continue
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != "num_workers"}
        out[key] = sha256_json(value)[:16]
    return out


def _plain(value: Any) -> bool:
    """Whether ``value`` is YAML data (not an object the YAML built)."""
    if isinstance(value, dict):
        return all(_plain(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(_plain(v) for v in value)
    return isinstance(value, str | int | float | bool | type(None))


def describe_setting(value: Any) -> Any:
    """A JSON-able description of a setting, as far as it can change a figure.

    Plain YAML data is itself; an object the YAML built (a decoder, a feature
    extractor) is its class with the plain attributes its constructors take, e.g. a searcher's
    ``max_decode_ratio`` or ``beam_size``; lists and dicts are described item by item.

    Example
    -------
    >>> from functools import partial
    >>> describe_setting({"threshold": 0.5, "search": partial(round, ndigits=2)})
    {'threshold': 0.5, 'search': {'class': 'functools.partial', 'function': 'builtins.round', \
'args': [], 'keywords': {'ndigits': 2}}}
    """
    if _plain(value) and not isinstance(value, tuple):
        return value
    if isinstance(value, dict):
        return {str(k): describe_setting(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [describe_setting(v) for v in value]
    description: dict[str, Any] = {"class": _qualified_name(type(value))}
    if isinstance(value, partial):
        description["function"] = _qualified_name(value.func)
        description["args"] = describe_setting(list(value.args))
        description["keywords"] = describe_setting(dict(value.keywords))
        return description
    settings = _constructor_parameters(type(value))
    for name, attribute in sorted(getattr(value, "__dict__", {}).items()):
        if name in settings and _plain(attribute):
            description[name] = describe_setting(attribute)
    return description


def _constructor_parameters(cls: type) -> set[str]:
    """Names of the parameters of every ``__init__`` in ``cls``'s hierarchy: the attributes
    of an object that are its settings (not state it gathers, like a decoder's cache)."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            try:
                names |= set(inspect.signature(klass.__init__).parameters)
            except (TypeError, ValueError):  # a builtin without a signature
                continue
    return names - {"self", "args", "kwargs"}


def _qualified_name(thing: Any) -> str:
    """``module.QualifiedName`` of a class or function."""
    return f"{getattr(thing, '__module__', '')}.{getattr(thing, '__qualname__', repr(thing))}"


def code_fingerprint(folders: Iterable[str] = ("adapters", "recipes")) -> str:
    """The library's and the recipes' Python sources."""
    digest = hashlib.sha256()
    for folder in folders:
        for path in sorted((ROOT / folder).rglob("*.py")):
            digest.update(str(path.relative_to(ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


def input_fingerprint(
    hparams: Mapping[str, Any],
    base: Mapping[str, torch.Tensor],
    datasets: dict,
    file_columns: Collection[str] = ("wav",),
    evaluation: Mapping[str, Any] | None = None,
) -> dict:
    """What a run is built from: base weights, data per set, settings, evaluation, code.

    Parameters
    ----------
    hparams : mapping
        The loaded hyperparameters (their plain values are fingerprinted).
    base : mapping of str to torch.Tensor
        The weights the run starts from.
    datasets : dict
        Named datasets (``train``, ``valid``, ``test_<name>``): every column of
        their rows, and the bytes of the files their ``file_columns`` name.
    file_columns : collection of str
        The manifest columns naming files the task reads.
    evaluation : mapping, optional
        What the task's figures depend on besides the above (its decoding
        settings, threshold, trial lists...), described as JSON-able values
        (:func:`describe_setting`); see ``AdaptationBrain.evaluation_inputs``.

    Returns
    -------
    dict
        ``base``, ``data``, ``settings`` and ``evaluation`` (a hash per name), ``code``.
    """
    return {
        "base": tensors_fingerprint(base),
        "data": {name: data_fingerprint(data, file_columns) for name, data in datasets.items()},
        "settings": settings_fingerprint(hparams),
        "evaluation": {key: sha256_json(value)[:16] for key, value in (evaluation or {}).items()},
        "code": code_fingerprint(),
    }


def changed_inputs(recorded: dict, current: dict) -> list[str]:
    """Human-readable names of what differs between two fingerprints.

    Example
    -------
    >>> old = {"base": "a", "data": {"train": "x"}, "settings": {"rank": "1"}, "code": "c"}
    >>> new = {"base": "b", "data": {"train": "y"}, "settings": {"rank": "2"}, "code": "c",
    ...        "evaluation": {"test_search": "s"}}
    >>> changed_inputs(old, new)
    ['the base model weights', 'the data of train', 'the setting rank', 'the evaluation input \
test_search']
    """
    changes = ["the base model weights"] if recorded.get("base") != current.get("base") else []
    kinds = (("data", "the data of"), ("settings", "the setting"),
             ("evaluation", "the evaluation input"))  # fmt: skip
    for kind, label in kinds:
        old, new = recorded.get(kind, {}), current.get(kind, {})
        changes += [f"{label} {k}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    if recorded.get("code") != current.get("code"):
        changes.append("the code (adapters/, recipes/)")
    return changes


# ------------------------------------------------- run options and acceptance
#: SpeechBrain run options (``--precision bf16``...) that change a run's figures: recorded
#: in ``hparams["run_options"]`` (so in the summary and the settings fingerprint), and a
#: resumed run must keep them. Checkpoint intervals, workers and progress bars do not.
FIGURE_RUN_OPTIONS = (
    "precision", "eval_precision", "grad_accumulation_factor", "max_grad_norm",
    "skip_nonfinite_grads", "nonfinite_patience", "optimizer_step_limit",
    "remove_vector_weight_decay", "debug", "debug_batches", "debug_epochs", "jit", "compile",
)  # fmt: skip

#: Per output folder (its real path): the run options of this process's run and what
#: is written there once its inputs are accepted (:func:`check_inputs`).
_PENDING_RUNS: dict[str, dict[str, Any]] = {}


def figure_run_options(run_opts: Mapping[str, Any], hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The run options that change figures, as the ``Brain`` will apply them.

    A value given on the command line wins, then one in the YAML, then SpeechBrain's
    default (the ``Brain``'s own order); the older ``auto_mix_prec`` and
    ``bfloat16_mix_prec`` flags become the precision they select. The device kind and
    the number of processes are recorded too.

    Parameters
    ----------
    run_opts : mapping
        SpeechBrain's run options (``sb.parse_arguments``); ``overridden_args`` names
        those given on the command line (a plain mapping: all of its keys).
    hparams : mapping
        The loaded hyperparameters.

    Returns
    -------
    dict
        Option name -> plain value.

    Example
    -------
    >>> options = figure_run_options({"precision": "bf16"}, {"precision": "fp32", "lr": 1.0})
    >>> options["precision"], options["world_size"]  # the command line wins over the YAML
    ('bf16', 1)
    """
    given = getattr(run_opts, "overridden_args", None)
    given = set(run_opts) if given is None else set(given)

    def value(key: str) -> Any:
        if key in given or key not in hparams:
            return run_opts.get(key)
        return hparams[key]

    options = {key: value(key) for key in FIGURE_RUN_OPTIONS if key in run_opts or key in hparams}
    if value("auto_mix_prec"):
        options["precision"] = "fp16"
    if value("bfloat16_mix_prec"):
        options["precision"] = "bf16"
    device = value("device") or ("cuda" if torch.cuda.is_available() else "cpu")
    options["device_type"] = str(device).split(":")[0]
    options["world_size"] = int(os.environ.get("WORLD_SIZE", "1"))
    return options


def figure_settings(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The value of every setting that can change a figure, for ``summary.json``.

    The plain YAML settings the settings fingerprint covers (paths, workers and
    caches left out; see :func:`settings_fingerprint`), ``run_options`` among them.

    Example
    -------
    >>> figure_settings({"lr": 0.01, "output_folder": "out", "run_options": {"precision": "bf16"},
    ...                  "train_loader": {"batch_size": 4, "num_workers": 2}})
    {'lr': 0.01, 'run_options': {'precision': 'bf16'}, 'train_loader': {'batch_size': 4}}
    """
    settings = {}
    for key in sorted(settings_fingerprint(hparams)):
        value = hparams[key]
        if isinstance(value, dict):
            value = {k: v for k, v in value.items() if k != "num_workers"}
        settings[key] = value
    return settings


def defer_until_accepted(
    folder: str, run_options: Mapping[str, Any], write: Callable[[], None]
) -> None:
    """Hold ``write`` (what a run writes into ``folder``: its settings file, log,
    environment) until :func:`check_inputs` accepts the folder's inputs, so that a
    refused run changes nothing there; ``run_options`` are checked against the
    options the folder's run was made with."""
    _PENDING_RUNS[os.path.realpath(folder)] = {"run_options": dict(run_options), "write": write}


def changed_run_options(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """``name: recorded -> current`` for each figure-changing run option that differs.

    Example
    -------
    >>> changed_run_options({"precision": "fp32", "jit": False}, {"precision": "bf16"})
    ['precision: fp32 -> bf16']
    """
    return [
        f"{key}: {recorded[key]} -> {current[key]}"
        for key in sorted(set(recorded) & set(current))
        if recorded[key] != current[key]
    ]


def _refuse_changed_run_options(folder: str, recorded: Mapping, current: Mapping) -> None:
    changes = changed_run_options(recorded, current)
    if not changes:
        return
    differing = [k for k in sorted(set(recorded) & set(current)) if recorded[k] != current[k]]
    how = [f"--{key} {recorded[key]}" for key in differing if key in FIGURE_RUN_OPTIONS]
    if set(differing) - set(FIGURE_RUN_OPTIONS):  # the device kind or the process count
        how.append("the same device kind and number of processes")
    raise RuntimeError(
        f"The output folder {folder} holds a run made with other run options than this "
        f"command's ({'; '.join(changes)}, recorded -> asked). Continuing it would mix them in "
        f"one result. To continue that run, rerun with {' and '.join(how)}; to train again "
        "with the new options, rerun with --fresh_start True (deletes that run's checkpoints "
        "and results) or choose another --output_folder."
    )


def check_inputs(folder: str, current: dict, fresh_start: bool = False) -> None:
    """Record ``current`` in ``<folder>/inputs.json``, or stop if a run there was built otherwise.

    With ``fresh_start``, the earlier run's files (``RUN_FILES``) are deleted first.
    A folder with checkpoints but no record was made by an older version: refused too.
    The run options given to :func:`defer_until_accepted` for this folder are compared
    with the recorded ones (naming both values) and recorded; once accepted, what was
    deferred is written. A refusal changes nothing in the folder.
    """
    pending = _PENDING_RUNS.pop(os.path.realpath(folder), {})
    options = pending.get("run_options", {})
    path = os.path.join(folder, "inputs.json")
    if fresh_start:
        for name in RUN_FILES:
            target = os.path.join(folder, name)
            if os.path.isdir(target):  # emptied, not removed: the checkpointer writes there
                shutil.rmtree(target)
                os.makedirs(target)
            elif os.path.exists(target):
                os.remove(target)
    if os.path.isfile(path):
        with open(path) as handle:
            recorded = json.load(handle)
        _refuse_changed_run_options(folder, recorded.get("run_options", {}), options)
        changes = changed_inputs(recorded, current)
    elif os.path.isdir(os.path.join(folder, "save")) and any(Path(folder, "save").glob("CKPT*")):
        changes = ["unknown: its checkpoints have no record of their inputs (inputs.json)"]
    else:
        changes = []
    if changes:
        raise RuntimeError(
            f"The output folder {folder} holds a run built from other inputs; changed: "
            f"{', '.join(changes)}. Continuing would mix them. Start fresh in a new folder "
            "(--output_folder ...) or here with --fresh_start True (deletes that run's "
            "checkpoints and results)."
        )
    write_json(path, {**current, "run_options": options} if pending else current)
    if pending:
        pending["write"]()

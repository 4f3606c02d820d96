"""Exact resumption after a kill at any moment: checkpoints that are whole or not used.

- ``CompleteCheckpointer``: SpeechBrain's ``Checkpointer`` whose checkpoint counts only
  once its ``COMPLETE`` marker is written, after all its files; the marker records each
  file's size and SHA-256, checked before the checkpoint is loaded. A folder without the
  marker (a kill while it was written, or while it was deleted: the marker goes first)
  is removed with a warning; a damaged file in a complete one stops the run with the
  file's name and the way out.
- ``RunState``: every random state training consumes and the training time so far. A
  checkpoint written inside an epoch restores them only once the epoch's data loader
  has been rebuilt, so a resumed run consumes the very random numbers an uninterrupted
  one does.
- ``fault_point``: where the fault-injection tests kill a run (``SPEECH_ADAPTERS_FAULT``).

Fault points of a checkpoint save, in order (``SPEECH_ADAPTERS_FAULT=<point>:<count>``
kills the process at the ``count``-th pass; ``<point>:<count>:torn`` also cuts the file
just written to half its bytes first, as a kill inside ``write`` would):

``checkpoint_file``
    after each file of a checkpoint is written (``CKPT.yaml`` first, then one file per
    recoverable); ``checkpoint_write`` is passed inside the random-state file's writer.
``checkpoint_marker``
    every file written, the ``COMPLETE`` marker not yet.
``checkpoint_complete``
    the marker written, older checkpoints not yet deleted.
``checkpoint_delete``
    while an older checkpoint is deleted: once its marker is removed, then after each
    of its files.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import signal
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from speechbrain.utils import checkpoints
from speechbrain.utils.distributed import ddp_barrier, if_main_process

from recipes.io import sha256_file, sha256_json, write_json

logger = logging.getLogger(__name__)

#: The environment variable naming the fault point to kill at: ``name:count[:torn]``.
FAULT_VARIABLE = "SPEECH_ADAPTERS_FAULT"
_FAULT_HITS: dict[str, int] = {}


# ------------------------------------------------------------- fault injection
def fault_point(name: str, written: str | os.PathLike | None = None) -> None:
    """Kill this process (SIGKILL) at the ``count``-th pass here when
    ``SPEECH_ADAPTERS_FAULT=name:count`` is set: the fault-injection tests' hook.

    Parameters
    ----------
    name : str
        The point's name.
    written : path, optional
        The file just written before this point: with ``name:count:torn`` it is cut
        to half its bytes before the kill (a kill inside ``write``).
    """
    wanted = os.environ.get(FAULT_VARIABLE, "").split(":")
    if wanted[0] != name or len(wanted) < 2:
        return
    _FAULT_HITS[name] = _FAULT_HITS.get(name, 0) + 1
    if _FAULT_HITS[name] != int(wanted[1]):
        return
    if "torn" in wanted[2:] and written is not None and os.path.isfile(written):
        os.truncate(written, os.path.getsize(written) // 2)
    os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------------------- random states
def random_states() -> dict[str, Any]:
    """Every random stream training may draw from (torch, CUDA, numpy, Python), as JSON.

    Example
    -------
    >>> state = random_states()
    >>> expected = torch.rand(2), np.random.rand(), random.random()
    >>> restore_random_states(state)
    >>> torch.equal(torch.rand(2), expected[0]), np.random.rand() == expected[1]
    (True, True)
    """
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    python = random.getstate()
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    return {
        "torch": torch.get_rng_state().tolist(),
        "cuda": [s.tolist() for s in cuda],
        "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
        "python": [python[0], list(python[1]), python[2]],
    }


def restore_random_states(state: dict[str, Any]) -> None:
    """Set every random stream to ``state`` (from :func:`random_states`)."""
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))


@partial(checkpoints.register_checkpoint_hooks, save_on_main_only=False)  # every process saves
class RunState:
    """Random states (torch, CUDA, numpy, Python) and training seconds, checkpointed.

    Saved as JSON (no pickle), one file per DDP process. Loading restores the random
    streams, so dropout, augmentation and data order after a resume are those of an
    uninterrupted run. The states loaded stay in ``loaded`` for the checkpointer to
    apply again once a data loader resumed inside an epoch has been rebuilt
    (:meth:`CompleteCheckpointer.load_checkpoint`).

    Example
    -------
    >>> import tempfile
    >>> state, path = RunState(), tempfile.mktemp()
    >>> state.train_seconds = 12.5
    >>> state._save(path)
    >>> expected = torch.rand(3)
    >>> other = RunState()
    >>> other._load(path, end_of_epoch=True)
    >>> torch.equal(torch.rand(3), expected), other.train_seconds
    (True, 12.5)
    """

    def __init__(self) -> None:
        self.train_seconds = 0.0
        self.loaded: dict[str, Any] | None = None

    @checkpoints.mark_as_saver
    def _save(self, path: str) -> None:
        fault_point("checkpoint_write")
        write_json(_for_this_rank(path), {**random_states(), "train_seconds": self.train_seconds})

    @checkpoints.mark_as_loader
    def _load(self, path: str, end_of_epoch: bool) -> None:
        del end_of_epoch
        mine = _for_this_rank(path)
        with open(mine if os.path.isfile(mine) else path) as handle:
            state = json.load(handle)
        restore_random_states(state)
        self.loaded = state
        self.train_seconds = float(state["train_seconds"])


def _for_this_rank(path: str) -> str:
    """Each DDP process keeps its own random states: ``path`` for rank 0, ``path.rank<r>`` else."""
    rank = int(os.environ.get("RANK", "0"))
    return str(path) if rank == 0 else f"{path}.rank{rank}"


def restore_after_next_iteration(loader: Any, restore: Callable[[], None]) -> None:
    """Call ``restore`` right after ``loader``'s next iterator is made, once.

    A data loader draws a seed from torch's global generator each time an iterator
    is made, at the start of an epoch. A checkpoint written inside an epoch holds the
    random states after that draw; a run resumed from it makes the epoch's iterator
    again, and that draw would shift every random number after it (dropout masks,
    augmentation) against the uninterrupted run. Restoring the states after the
    draw puts the streams back where the checkpoint left them.

    Example
    -------
    >>> loader = torch.utils.data.DataLoader(range(4), batch_size=2)
    >>> state = random_states()
    >>> restore_after_next_iteration(loader, lambda: restore_random_states(state))
    >>> expected = torch.rand(1)
    >>> _ = iter(loader)  # draws a seed, then the states are put back
    >>> restore_random_states(state)
    >>> torch.equal(torch.rand(1), expected), type(loader).__name__
    (True, 'DataLoader')
    """
    original = type(loader)

    class Resuming(original):  # type: ignore[misc, valid-type]
        def __iter__(self):
            iterator = super().__iter__()
            self.__class__ = original  # once only: later epochs draw as usual
            restore()
            return iterator

    Resuming.__name__ = Resuming.__qualname__ = original.__name__
    loader.__class__ = Resuming


# ------------------------------------------------------------- checkpoints
class DamagedCheckpointError(RuntimeError):
    """A checkpoint marked complete whose files are not those it was written with."""


def damaged_checkpoint_message(folder: str | os.PathLike, problem: str) -> str:
    """The refusal for a damaged checkpoint: what is wrong, which file, what to do.

    Example
    -------
    >>> print(damaged_checkpoint_message("out/save/CKPT+1", "its file model.ckpt is missing"))
    ... # doctest: +NORMALIZE_WHITESPACE
    The checkpoint out/save/CKPT+1 is marked complete, but its file model.ckpt is missing:
    training cannot resume from it. Remove that checkpoint (`rm -r out/save/CKPT+1`) and
    rerun the same command to resume from the checkpoint before it (or from the start if
    there is none), or rerun with --fresh_start True to delete this run's checkpoints and
    results and train again from the start.
    """
    return (
        f"The checkpoint {folder} is marked complete, but {problem}: training cannot resume "
        f"from it. Remove that checkpoint (`rm -r {folder}`) and rerun the same command to "
        "resume from the checkpoint before it (or from the start if there is none), or rerun "
        "with --fresh_start True to delete this run's checkpoints and results and train again "
        "from the start."
    )


class CompleteCheckpointer(checkpoints.Checkpointer):
    """SpeechBrain's ``Checkpointer`` whose checkpoints count once whole, and are checked.

    - A checkpoint counts once its ``COMPLETE`` marker is written, after all its files
      (of every DDP process); the marker records each file's size and SHA-256, and a
      checksum of that record.
    - Listing removes, with a warning, the folders without a marker: a kill while one
      was written, or while one was deleted (deletion removes the marker first).
    - Loading first checks every recorded file: one missing or changed stops the run
      naming the file, the checkpoint and the way out (:class:`DamagedCheckpointError`).
    - A checkpoint written inside an epoch restores the random states after the data
      loader's iterator is made again (:func:`restore_after_next_iteration`).

    Example
    -------
    >>> import tempfile
    >>> layer = torch.nn.Linear(2, 2)
    >>> checkpointer = CompleteCheckpointer(tempfile.mkdtemp(), recoverables={"layer": layer})
    >>> saved = checkpointer.save_checkpoint(meta={"WER": 1.0})
    >>> sorted(json.loads((saved.path / "COMPLETE").read_text())["files"])
    ['CKPT.yaml', 'layer.ckpt']
    >>> checkpointer.recover_if_possible().path == saved.path
    True
    """

    MARKER = "COMPLETE"

    # ---------------------------------------------------------- saving
    def save_checkpoint(
        self,
        meta: Mapping[str, Any] | None = None,
        end_of_epoch: bool = True,
        name: str | None = None,
        verbosity: int = logging.INFO,
    ) -> checkpoints.Checkpoint | None:
        """Save every recoverable, then the marker (see ``Checkpointer.save_checkpoint``).

        Returns
        -------
        Checkpoint or None
            The checkpoint saved, on the main process; ``None`` on the others.
        """
        own_hooks = self.custom_save_hooks
        self.custom_save_hooks = {
            key: _then_fault_point(hook) for key, hook in self._save_hooks().items()
        }
        try:
            ckpt = super().save_checkpoint(
                meta=dict(meta or {}), end_of_epoch=end_of_epoch, name=name, verbosity=verbosity
            )
        finally:
            self.custom_save_hooks = own_hooks
        ddp_barrier()  # every process has written its files (each keeps its random states)
        if ckpt is not None:  # the main process
            fault_point("checkpoint_marker")
            files = _file_records(Path(ckpt.path))
            write_json(Path(ckpt.path, self.MARKER), {"files": files, "sha256": sha256_json(files)})
        ddp_barrier()  # no process lists checkpoints before the marker exists
        fault_point("checkpoint_complete")
        return ckpt

    def _save_hooks(self) -> dict[str, Callable]:
        """The save hook of each recoverable: its custom one, else its type's default."""
        hooks = {}
        for key, obj in self.recoverables.items():
            hook = self.custom_save_hooks.get(key)
            hook = hook or checkpoints.get_default_hook(obj, checkpoints.DEFAULT_SAVE_HOOKS)
            if hook is not None:  # else SpeechBrain says it cannot save it
                hooks[key] = hook
        return hooks

    def _save_checkpoint_metafile(
        self,
        fpath: Path,
        meta_to_include: Mapping[str, Any] | None = None,
        end_of_epoch: bool = True,
    ) -> dict[str, Any]:
        meta = super()._save_checkpoint_metafile(fpath, meta_to_include or {}, end_of_epoch)
        fault_point("checkpoint_file", fpath)
        return meta

    def save_and_keep_only(
        self, *args: Any, importance_keys: list[Callable] | None = None, **kwargs: Any
    ) -> None:
        """``Checkpointer.save_and_keep_only`` without its shared default list, to which
        each call appended a key (so every deletion grew slower over a run)."""
        super().save_and_keep_only(*args, importance_keys=list(importance_keys or []), **kwargs)

    # ---------------------------------------------------------- deleting
    def delete_checkpoints(
        self,
        *,
        num_to_keep: int = 1,
        min_keys: list[str] | None = None,
        max_keys: list[str] | None = None,
        importance_keys: list[Callable] | None = None,
        ckpt_predicate: Callable | None = None,
        verbosity: int = logging.INFO,
    ) -> None:
        """``Checkpointer.delete_checkpoints``, removing each checkpoint's marker first,
        so a kill inside a deletion leaves a folder the next listing removes, never a
        checkpoint marked complete with files missing."""
        if num_to_keep < 0:
            raise ValueError("Number of checkpoints to keep must be positive.")
        keys = [{"min_key": key} for key in min_keys or []]
        keys += [{"max_key": key} for key in max_keys or []]
        keys += [{"importance_key": key} for key in importance_keys or [checkpoints.ckpt_recency]]
        candidates, protected = set(), set()
        for key in keys:
            candidates.update(self.find_checkpoints(ckpt_predicate=ckpt_predicate, **key))
            protected.update(
                self.find_checkpoints(
                    ckpt_predicate=ckpt_predicate, max_num_checkpoints=num_to_keep, **key
                )
            )
        ddp_barrier()  # no process is listing while the main one deletes
        if if_main_process():
            for ckpt in sorted(candidates - protected, key=lambda c: str(c.path)):
                self._retire(Path(ckpt.path))
                logger.log(verbosity, "Deleted checkpoint in %s", ckpt.path)
        ddp_barrier()

    def _retire(self, folder: Path) -> None:
        """Delete a checkpoint: its marker first, then its files, then the folder."""
        os.remove(folder / self.MARKER)
        fault_point("checkpoint_delete")
        for path in sorted(folder.iterdir()):
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
            fault_point("checkpoint_delete")
        folder.rmdir()

    # ---------------------------------------------------------- listing
    def list_checkpoints(self) -> list[checkpoints.Checkpoint]:
        """Complete checkpoints only; the main process removes the others (cut short by a
        kill while written or deleted). A complete one whose ``CKPT.yaml`` is damaged
        stops the run (:class:`DamagedCheckpointError`)."""
        if if_main_process():
            self._remove_cut_short()
        complete = [p for p in self._list_checkpoint_dirs() if (p / self.MARKER).is_file()]
        return [self._checkpoint(path) for path in sorted(complete)]

    def _remove_cut_short(self) -> None:
        for path in sorted(self.checkpoints_dir.glob(f"{checkpoints.CKPT_PREFIX}+*")):
            if path.is_dir() and not (path / self.MARKER).is_file():
                logger.warning("Removing %s: a checkpoint cut short while being written.", path)
                shutil.rmtree(path, ignore_errors=True)

    def _checkpoint(self, folder: Path) -> checkpoints.Checkpoint:
        """The ``Checkpoint`` of a complete folder, its ``CKPT.yaml`` checked first."""
        problem = self._problems(folder, only=[checkpoints.METAFNAME])
        if problem:
            raise DamagedCheckpointError(damaged_checkpoint_message(folder, problem[0]))
        try:
            return self._construct_checkpoint_objects([folder])[0]
        except Exception as error:  # a damaged CKPT.yaml in a checkpoint from an older version
            problem = f"its file {folder / checkpoints.METAFNAME} cannot be read ({error})"
            raise DamagedCheckpointError(damaged_checkpoint_message(folder, problem)) from error

    def _problems(self, folder: Path, only: Iterable[str] | None = None) -> list[str]:
        """What differs between ``folder``'s files and those its marker recorded."""
        marker = folder / self.MARKER
        try:
            content = json.loads(marker.read_text() or '{"files": null}')
            recorded = content["files"]
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
            return [f"its marker {marker} cannot be read ({error})"]
        if recorded is None:  # a marker written before files were recorded: nothing to check
            return []
        if content.get("sha256") != sha256_json(recorded):
            return [f"its marker {marker} does not match its own checksum (its bytes changed)"]
        wanted = set(only) if only is not None else set(recorded)
        return [
            problem
            for name, record in sorted(recorded.items())
            if name in wanted
            for problem in [_file_problem(folder / name, record)]
            if problem
        ]

    # ---------------------------------------------------------- loading
    def load_checkpoint(self, checkpoint: checkpoints.Checkpoint) -> None:
        """Check the checkpoint's files against its marker, then load it; a checkpoint
        written inside an epoch restores the random states once more, after the data
        loader resumed with it makes its iterator (see :func:`restore_after_next_iteration`).
        """
        folder = Path(checkpoint.path)
        problems = self._problems(folder)
        if problems:
            raise DamagedCheckpointError(damaged_checkpoint_message(folder, problems[0]))
        try:
            super().load_checkpoint(checkpoint)
        except Exception as error:
            if self._records_files(folder):
                raise  # its files are those written: not damage
            problem = f"one of its files {sorted(checkpoint.paramfiles)} cannot be read ({error})"
            raise DamagedCheckpointError(damaged_checkpoint_message(folder, problem)) from error
        if not checkpoint.meta.get("end-of-epoch", True):
            self._restore_after_loaders()

    def _records_files(self, folder: Path) -> bool:
        try:
            return json.loads((folder / self.MARKER).read_text())["files"] is not None
        except (ValueError, KeyError, TypeError):
            return False

    def _restore_after_loaders(self) -> None:
        states = [s for s in self.recoverables.values() if isinstance(s, RunState) and s.loaded]
        loaders = [
            obj
            for obj in self.recoverables.values()
            if getattr(obj, "_speechbrain_recovery_skip_to", None) is not None
        ]
        if states and loaders:
            state = states[0].loaded

            def restore() -> None:
                restore_random_states(state)

            restore_after_next_iteration(loaders[0], restore)


def _then_fault_point(hook: Callable) -> Callable:
    """A save hook that passes the ``checkpoint_file`` fault point after writing."""

    def save(obj: Any, path: Any) -> None:
        hook(obj, path)
        fault_point("checkpoint_file", path)

    return save


def _file_records(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and SHA-256 of each file of a checkpoint folder (temporary files aside)."""
    return {
        path.name: {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
        for path in sorted(folder.iterdir())
        if path.is_file() and not path.name.startswith(".")
        and path.name != CompleteCheckpointer.MARKER
    }  # fmt: skip


def _file_problem(path: Path, record: dict[str, Any]) -> str:
    """Why ``path`` is not the file ``record`` describes; empty when it is."""
    if not path.is_file():
        return f"its file {path} is missing"
    size = path.stat().st_size
    if size != record["bytes"]:
        return f"its file {path} has {size} bytes where {record['bytes']} were written"
    if sha256_file(path) != record["sha256"]:
        return (
            f"its file {path} does not have the SHA-256 recorded when it was written (its "
            "bytes changed on disk)"
        )
    return ""

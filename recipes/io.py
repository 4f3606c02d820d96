"""Writing files and folders so that nothing is lost: the one place every writer goes through.

- :func:`write_bytes`, :func:`write_text`, :func:`write_json`: a file is written under a
  temporary name beside it, flushed to disk and renamed, so a reader (or a rerun after a
  kill) sees the old file or the new one, never a part.
- :func:`replace_folder`: a folder is built in a temporary sibling and swapped into
  place. A target that holds anything this project did not write there is refused
  unless ``overwrite`` is given, and so is a target inside or around a source folder.
- :func:`sha256_file`, :func:`sha256_json`: the hashes stamps and fingerprints record;
  :func:`write_stamp` / :func:`stamp_problems` record the hashes of a folder's files when it
  is written and check them when it is used.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

#: The file naming what a folder written by this project holds (see :func:`replace_folder`).
MARKER = ".written-by-speech-adapters.json"


class TargetError(ValueError):
    """A folder may not be written where it was asked to be (it would destroy something)."""


# ---------------------------------------------------------------- hashing
def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes.

    Example
    -------
    >>> path = Path(tempfile.mkdtemp()) / "a.txt"
    >>> _ = path.write_bytes(b"abc")
    >>> sha256_file(path)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(data: Any) -> str:
    """SHA-256 of a JSON-able value, canonically serialised (key order does not count).

    Example
    -------
    >>> sha256_json({"a": 1, "b": 2}) == sha256_json({"b": 2, "a": 1})
    True
    """
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


# ---------------------------------------------------------------- files
def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary sibling, fsync, rename); the file's
    mode follows the umask, as a plain ``open`` would give it.

    Example
    -------
    >>> path = Path(tempfile.mkdtemp()) / "x.bin"
    >>> write_bytes(path, b"new").read_bytes()
    b'new'
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{os.urandom(4).hex()}.tmp")
    try:
        handle = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(handle, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Write ``data`` as indented JSON to ``path`` atomically.

    Example
    -------
    >>> path = Path(tempfile.mkdtemp()) / "s.json"
    >>> json.loads(write_json(path, {"wer": 12.5}).read_text())
    {'wer': 12.5}
    """
    return write_text(path, json.dumps(data, indent=2) + "\n")


# ---------------------------------------------------------------- stamps
def write_stamp(folder: str | os.PathLike, name: str, fields: Mapping[str, Any]) -> Path:
    """Write ``folder/name``: ``fields`` plus ``files``, the SHA-256 of every file in
    ``folder`` (hidden files and the stamp aside), so that :func:`stamp_problems` can tell
    later whether what is used is what was written."""
    folder = Path(folder)
    files = {
        str(p.relative_to(folder)): sha256_file(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != name and not p.name.startswith(".")
    }
    return write_json(folder / name, {**fields, "files": files})


def stamp_problems(folder: str | os.PathLike, name: str) -> list[str]:
    """What differs between ``folder`` and the hashes its stamp ``name`` recorded.

    Empty when every recorded file is there with its recorded SHA-256. A stamp
    written before hashes were recorded (no ``files``) gives one problem.

    Example
    -------
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "w.bin").write_bytes(b"weights")
    >>> _ = write_stamp(folder, "stamp.json", {"source": "test"})
    >>> stamp_problems(folder, "stamp.json")
    []
    >>> _ = (folder / "w.bin").write_bytes(b"edited")
    >>> stamp_problems(folder, "stamp.json")  # doctest: +ELLIPSIS
    ['w.bin has SHA-256 ..., recorded ...']
    """
    folder = Path(folder)
    try:
        recorded = json.loads((folder / name).read_text()).get("files")
    except (OSError, ValueError) as err:
        return [f"{folder / name} cannot be read ({err})"]
    if not isinstance(recorded, dict):
        return [f"{folder / name} records no file hashes (written by an older version)"]
    problems = []
    for relative, expected in recorded.items():
        path = folder / relative
        if not path.is_file():
            problems.append(f"{relative} is missing")
            continue
        found = sha256_file(path)
        if found != expected:
            problems.append(f"{relative} has SHA-256 {found[:12]}, recorded {expected[:12]}")
    return problems


# ---------------------------------------------------------------- folders
def _inside(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies inside it (both resolved)."""
    return path == folder or folder in path.parents


def _written_files(folder: Path) -> set[str] | None:
    """The files the marker of ``folder`` says this project wrote there, or None."""
    try:
        return set(json.loads((folder / MARKER).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def check_target(
    target: str | os.PathLike,
    sources: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    option: str = "--overwrite",
) -> None:
    """Refuse a folder ``target`` whose writing would destroy something.

    Refused: ``target`` equal to, inside or around one of ``sources`` (always); a
    file where the folder should be; a non-empty folder holding anything this
    project did not write there (unless ``overwrite``). ``option`` is how the
    caller's user says "overwrite".

    Example
    -------
    >>> folder = Path(tempfile.mkdtemp())
    >>> _ = (folder / "notes.txt").write_text("mine")
    >>> try:
    ...     check_target(folder)
    ... except TargetError as err:
    ...     print("notes.txt" in str(err), "--overwrite" in str(err))
    True True
    >>> check_target(folder, overwrite=True)  # the user said so
    >>> try:
    ...     check_target(folder / "sub", sources=[folder], overwrite=True)
    ... except TargetError as err:
    ...     print(str(err).split(",")[0].endswith(folder.name))
    True
    """
    target = Path(target).resolve()
    for source in sources:
        source = Path(source).resolve()
        if _inside(target, source) or _inside(source, target):
            where = (
                "is" if target == source else "is inside" if _inside(target, source) else "holds"
            )
            raise TargetError(
                f"Refusing to write {target}: it {where} {source}, the folder it is made from, "
                "and writing it would change or delete its source. Choose an output folder "
                "outside it."
            )
    if target.exists() and not target.is_dir():
        raise TargetError(
            f"Refusing to write the folder {target}: a file of that name exists. Remove it or "
            "choose another output folder."
        )
    if not target.is_dir() or overwrite:
        return
    present = {str(p.relative_to(target)) for p in target.rglob("*") if not p.is_dir()}
    present.discard(MARKER)
    foreign = sorted(present - (_written_files(target) or set()))
    if foreign:
        shown = ", ".join(foreign[:3]) + (
            f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
        )
        raise TargetError(
            f"Refusing to write {target}: it holds files this command did not write ({shown}), "
            f"which would be lost. Choose an empty or new folder, or give {option} to replace "
            "the folder and everything in it."
        )


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False if unsupported."""
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    renameat2 = getattr(libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return result == 0


def _leftovers(target: Path) -> list[Path]:
    """Temporary siblings an earlier, interrupted :func:`replace_folder` left."""
    return sorted(target.parent.glob(f".{target.name}.*.tmp"))


@contextlib.contextmanager
def replace_folder(
    target: str | os.PathLike,
    sources: Iterable[str | os.PathLike] = (),
    overwrite: bool = False,
    option: str = "--overwrite",
) -> Iterator[Path]:
    """Build a folder in a temporary sibling (yielded) and swap it in for ``target``.

    :func:`check_target` runs first. The new folder gets a marker listing its
    files, so a later write may replace it without ``overwrite`` as long as
    nobody added a file. The swap is one atomic rename exchange where the
    system has it (Linux); elsewhere the old folder is moved aside, the new one
    renamed in, the old one removed, and an interrupted swap is undone on the
    next call. An error inside the block leaves ``target`` untouched.

    Example
    -------
    >>> target = Path(tempfile.mkdtemp()) / "export"
    >>> with replace_folder(target) as tmp:
    ...     _ = (tmp / "model.ckpt").write_text("v1")
    >>> with replace_folder(target) as tmp:  # ours, unchanged: replaced without overwrite
    ...     _ = (tmp / "model.ckpt").write_text("v2")
    >>> (target / "model.ckpt").read_text(), sorted(p.name for p in target.parent.iterdir())
    ('v2', ['export'])
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    for leftover in _leftovers(target):  # an interrupted earlier swap
        if leftover.name.endswith(".old.tmp") and not target.exists():
            os.replace(leftover, target)
        else:
            shutil.rmtree(leftover, ignore_errors=True)
    check_target(target, sources, overwrite, option)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".new.tmp", dir=target.parent))
    try:
        yield tmp
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if not p.is_dir())
        write_json(tmp / MARKER, {"files": files})
        if target.exists() and _exchange(tmp, target):
            shutil.rmtree(tmp)  # now the old folder
            return
        if target.exists():
            old = tmp.with_name(tmp.name.replace(".new.tmp", ".old.tmp"))
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

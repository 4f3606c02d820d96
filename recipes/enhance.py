"""Enhance audio with what a run of ``recipes/enhancement/train.py`` trained.

    python -m recipes.enhance results/enhancement/lora/noisy noisy.wav --output-dir enhanced
    python -m recipes.enhance results/enhancement/lora/noisy recordings/ calls.csv \\
        --output-dir enhanced

RUN is a run folder or its ``inference/`` folder. IN is files, folders (the audio files
in them, searched recursively) or CSV manifests (a ``wav`` column; ``$data_root`` and
relative paths are the manifest's folder). Each file is read by the recipes' loader at
the model's rate (resampled, downmixed), enhanced as the recipe's evaluation enhanced it,
and written to ``DIR/<name>.wav`` (16 kHz, 16-bit), where ``<name>`` is its file name
without the suffix; inputs that share a name get ``<name>-2``, ``<name>-3``... in the
order given. Files are written atomically (the old file or the new, never a part). An
existing output is refused before any work unless ``--overwrite`` is given; an input is
never overwritten. A file that cannot be enhanced gets one error line on stderr; the
others are still written, and the exit status is 1.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from recipes.audio import AudioError, audio_inputs
from recipes.inference import load_task_interface


@dataclass
class Job:
    """One file to enhance and where its enhanced audio goes."""

    source: Path
    target: Path


def output_names(files: list[Path]) -> list[str]:
    """``<stem>.wav`` for each file; a name already taken (case aside) gets ``-2``, ``-3``...

    Example
    -------
    >>> output_names([Path("a/x.wav"), Path("b/x.flac"), Path("y.wav"), Path("c/X.wav")])
    ['x.wav', 'x-2.wav', 'y.wav', 'X-3.wav']
    """
    taken: set[str] = set()
    names = []
    for path in files:
        stem, number = path.stem, 1
        name = f"{stem}.wav"
        while name.casefold() in taken:
            number += 1
            name = f"{stem}-{number}.wav"
        taken.add(name.casefold())
        names.append(name)
    return names


def plan(files: list[Path], output_dir: Path, overwrite: bool) -> list[Job]:
    """Where each file's enhanced audio goes; refuses, before any work, a target that
    exists (unless ``overwrite``) or that is one of the inputs."""
    jobs = [Job(f, output_dir / n) for f, n in zip(files, output_names(files))]
    inputs = {f.resolve() for f in files}
    clash = [job.target for job in jobs if job.target.resolve() in inputs]
    if clash:
        raise ValueError(
            f"{clash[0]} is an input and would be its own output: choose an --output-dir "
            "other than the folder the recordings are in."
        )
    existing = [job.target for job in jobs if job.target.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise FileExistsError(
            f"{existing[0]} exists{more}: choose another --output-dir, or give --overwrite "
            "to replace the files."
        )
    return jobs


def load_enhancer(run: str | Path, device: str = "cpu"):
    """The ``SpeechEnhancer`` of an enhancement run (or its inference folder)."""
    return load_task_interface(run, "SpeechEnhancer", "recipes/enhancement/train.py", device)


def enhance_all(enhancer, jobs: list[Job]) -> list[str]:
    """Enhance and write each job's file; return one error line per file that failed."""
    errors = []
    for job in tqdm(jobs, desc="enhancing", unit="file", file=sys.stderr, disable=None):
        try:
            enhancer.enhance_file(job.source, job.target)
        except (AudioError, OSError, RuntimeError, ValueError) as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            errors.append(f"error: {job.source}: {reason}")
    return errors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.enhance", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("run", help="an enhancement run's output folder (or its inference/)")
    parser.add_argument("inputs", nargs="+", metavar="IN", help="audio files, folders, manifests")
    parser.add_argument("--output-dir", required=True, help="folder the enhanced files go to")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)
    try:
        if output_dir.exists() and not output_dir.is_dir():
            raise ValueError(f"--output-dir {output_dir} is a file: give a folder.")
        jobs = plan(audio_inputs(args.inputs), output_dir, args.overwrite)
        enhancer = load_enhancer(args.run, args.device)
    except (ValueError, OSError, RuntimeError) as err:  # a refused target, an unusable RUN
        print(f"error: {err}", file=sys.stderr)
        return 2
    output_dir.mkdir(parents=True, exist_ok=True)
    errors = enhance_all(enhancer, jobs)
    for line in errors:
        print(line, file=sys.stderr)
    print(f"{len(jobs) - len(errors)} of {len(jobs)} files enhanced into {output_dir}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

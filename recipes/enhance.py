"""Enhance audio with what a run of ``recipes/enhancement/train.py`` trained.

    python -m recipes.enhance results/enhancement/lora/noisy noisy.wav --output-dir enhanced
    python -m recipes.enhance results/enhancement/lora/noisy recordings/ calls.csv \\
        --output-dir enhanced
    python -m recipes.enhance adapter.safetensors noisy.wav --base nsnet2.safetensors \\
        --output-dir enhanced
    python -m recipes.enhance results/enhancement/lora/noisy calls.csv --output-dir enhanced \\
        --adapter phone=results/enhancement/lora/telephone/adapter.safetensors

SOURCE is a run folder, its ``inference/`` folder, or an adapter file with ``--base``
(the base checkpoint it was trained on, or the folder of a run on that base). IN is
files, folders (the audio files
in them, searched recursively) or CSV manifests (a ``wav`` column; ``$data_root`` and
relative paths are the manifest's folder). Each file is read by the recipes' loader at
the model's rate (resampled, downmixed), enhanced as the recipe's evaluation enhanced it
(``--batch_size`` files at once, padded: a file's row of a batch is what it gives alone),
and written to ``DIR/<name>.wav`` (16 kHz, 16-bit), where ``<name>`` is its file name
without the suffix; inputs that share a name get ``<name>-2``, ``<name>-3``... in the
order given. Files are written atomically (the old file or the new, never a part). An
existing output is refused before any work unless ``--overwrite`` is given; an input is
never overwritten. A file that cannot be enhanced gets one error line on stderr; the
others are still written, and the exit status is 1.

``--adapter NAME=PATH`` (repeatable) loads adapter sets onto the base; a manifest's
``--adapter_column`` chooses one per file, ``--adapter NAME`` the one the others use
(``default``: the source's own adapter, ``none``: the base model). A batch whose files
chose different sets runs as one mixed batch (see :mod:`recipes.adapter_sets`). A file
that chose a set that is not loaded gets one error line.

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from recipes.adapter_sets import (
    adapted_model_of,
    add_source_arguments,
    assign_adapters,
    batches,
    can_mix,
    inputs_with_choices,
    load_adapter_sets,
    load_task_source,
)
from recipes.audio import AudioError
from recipes.inference import load_task_interface

RECIPE = "recipes/enhancement/train.py"


@dataclass
class Job:
    """One file to enhance and where its enhanced audio goes."""

    source: Path
    target: Path
    adapter: str | None = None
    error: str = ""
    wav: torch.Tensor | None = field(default=None, repr=False)


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
    return load_task_interface(run, "SpeechEnhancer", RECIPE, device)


def enhance_all(enhancer, jobs: list[Job], batch_size: int = 1) -> list[str]:
    """Enhance and write each job's file, ``batch_size`` at a time, each with its adapter set
    (``Job.adapter``; a job with an error is skipped); return one error line per file that
    failed."""
    for job in jobs:
        if not job.error:
            try:
                job.wav = enhancer.load_audio(job.source)
            except (AudioError, OSError, RuntimeError, ValueError) as err:
                job.error = (str(err).splitlines() or [type(err).__name__])[0]
    adapted = adapted_model_of(enhancer)
    todo = [job for job in jobs if not job.error]
    groups = batches(todo, batch_size, lambda job: job.adapter, can_mix(adapted))
    for group in tqdm(groups, desc="enhancing", unit="batch", file=sys.stderr, disable=None):
        try:
            _enhance_batch(enhancer, group, adapted is not None)
        except (OSError, RuntimeError, ValueError):  # find the file: each alone
            for job in group:
                try:
                    _enhance_batch(enhancer, [job], adapted is not None)
                except (OSError, RuntimeError, ValueError) as err:
                    job.error = (str(err).splitlines() or [type(err).__name__])[0]
    for job in jobs:
        job.wav = None
    return [f"error: {job.source}: {job.error}" for job in jobs if job.error]


def _enhance_batch(enhancer, group: list[Job], adapters: bool) -> None:
    """Enhance a batch of files in one padded pass and write each, cut to its length."""
    lengths = torch.tensor([len(job.wav) for job in group], dtype=torch.float)
    padded = torch.nn.utils.rnn.pad_sequence([job.wav for job in group], batch_first=True)
    names = [job.adapter for job in group] if adapters else None
    enhanced = enhancer.enhance_batch(padded, lengths / lengths.max(), adapters=names).cpu()
    for row, job in enumerate(group):
        enhancer.write_file(enhanced[row, : len(job.wav)], job.target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m recipes.enhance", description=__doc__.split("\n\n")[0]
    )
    add_source_arguments(parser)
    parser.add_argument("inputs", nargs="+", metavar="IN", help="audio files, folders, manifests")
    parser.add_argument("--output-dir", required=True, help="folder the enhanced files go to")
    parser.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    parser.add_argument("--batch_size", type=int, default=4, help="files enhanced at once")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    output_dir = Path(args.output_dir)
    with tempfile.TemporaryDirectory() as workdir:
        try:
            if output_dir.exists() and not output_dir.is_dir():
                raise ValueError(f"--output-dir {output_dir} is a file: give a folder.")
            inputs = inputs_with_choices(args.inputs, args.adapter_column)
            jobs = plan([item.path for item in inputs], output_dir, args.overwrite)
            enhancer, own_file = load_task_source(
                args.source, args.base, "SpeechEnhancer", RECIPE, workdir, args.device
            )
            adapted = adapted_model_of(enhancer)
            default, failed = load_adapter_sets(adapted, args.adapter, own_file)
        except (ValueError, OSError, RuntimeError) as err:  # a refused target, an unusable RUN
            print(f"error: {err}", file=sys.stderr)
            return 2
    assign_adapters(inputs, adapted, default)
    for job, item in zip(jobs, inputs, strict=True):
        job.adapter, job.error = item.adapter, item.error
    output_dir.mkdir(parents=True, exist_ok=True)
    errors = enhance_all(enhancer, jobs, args.batch_size)
    for line in errors:
        print(line, file=sys.stderr)
    print(f"{len(jobs) - len(errors)} of {len(jobs)} files enhanced into {output_dir}")
    return 1 if errors or failed else 0


if __name__ == "__main__":
    sys.exit(main())

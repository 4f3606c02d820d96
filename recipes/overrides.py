"""One command line for several recipe runs: each run gets the arguments it takes.

``bash run.sh main --target voices --rank 16`` runs LoRA and full fine-tuning with
the same extra arguments; ``rank`` means nothing to full fine-tuning. This module
keeps, for one YAML, SpeechBrain's run options (``--precision``, ``--device``...)
and the overrides of keys that YAML defines, and notes what it leaves out. An
override that no YAML of the group defines is a typo: it stops the job.

    python -m recipes.overrides hparams/full_whisper.yaml hparams/lora_whisper.yaml -- --rank 16

prints the arguments for the first YAML, NUL-separated (for ``mapfile -d ''``).

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path

from speechbrain.utils.run_opts import RunOptions

RUN_OPTIONS = frozenset(field.name for field in dataclasses.fields(RunOptions))


def yaml_keys(path: str | Path) -> set[str]:
    """Top-level keys of a HyperPyYAML file (what ``--key value`` may override)."""
    text = Path(path).read_text()
    return set(re.findall(r"^([A-Za-z_][\w]*)\s*:", text, flags=re.MULTILINE))


def argument_groups(argv: list[str]) -> list[tuple[str, list[str]]]:
    """Split ``--name value`` / ``--name=value`` / ``--flag`` arguments into ``(name, tokens)``.

    Example
    -------
    >>> argument_groups(["--rank", "16", "--target=voices", "--debug"])
    [('rank', ['--rank', '16']), ('target', ['--target=voices']), ('debug', ['--debug'])]
    """
    groups: list[tuple[str, list[str]]] = []
    for token in argv:
        if token.startswith("--"):
            groups.append((token[2:].split("=", 1)[0], [token]))
        elif groups:
            groups[-1][1].append(token)
        else:
            raise ValueError(f"Expected --name value arguments, got {token!r} first.")
    return groups


def arguments_for(
    hparams_file: str | Path, argv: list[str], others: list[str | Path] = ()
) -> tuple[list[str], list[str]]:
    """The arguments of ``argv`` that apply to ``hparams_file``, and the names left out.

    Raises ``ValueError`` for an override that neither ``hparams_file`` nor any of
    ``others`` defines.

    Example
    -------
    >>> kept, left_out = arguments_for("hparams/full_whisper.yaml",
    ...     ["--target", "voices", "--rank", "16", "--precision=bf16"],
    ...     others=["hparams/lora_whisper.yaml"])
    >>> kept, left_out
    (['--target', 'voices', '--precision=bf16'], ['rank'])
    """
    own = yaml_keys(hparams_file)
    known = own.union(*(yaml_keys(other) for other in others))
    kept: list[str] = []
    left_out: list[str] = []
    for name, tokens in argument_groups(argv):
        if name in RUN_OPTIONS or name in own:
            kept += tokens
        elif name in known:
            left_out.append(name)
        else:
            files = ", ".join(str(f) for f in [hparams_file, *others])
            raise ValueError(
                f"--{name} is neither a SpeechBrain run option nor a key of {files}: check the "
                "spelling (keys are the YAML's top-level names, e.g. --rank, --target, --lr)."
            )
    return kept, left_out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if "--" not in args or args.index("--") == 0:
        print(
            "usage: python -m recipes.overrides THIS.yaml [OTHER.yaml...] -- ARGS", file=sys.stderr
        )
        return 2
    split = args.index("--")
    files, rest = args[:split], args[split + 1 :]
    try:
        kept, left_out = arguments_for(files[0], rest, files[1:])
    except ValueError as err:
        print(err, file=sys.stderr)
        return 2
    if left_out:
        names = ", ".join(f"--{n}" for n in left_out)
        print(f"[note] {names}: not a setting of {files[0]}; left out of that run", file=sys.stderr)
    sys.stdout.write("".join(f"{token}\0" for token in kept))
    return 0


if __name__ == "__main__":
    sys.exit(main())

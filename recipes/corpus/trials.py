"""Speaker groups and verification trial lists, from any manifest with a ``spk_id`` column.

Speaker verification is scored on speakers the model never trained on: every
speaker falls, by a hash of its ID and a seed, either in the ``adapt`` group
(training) or the ``held_out`` group (trials). A trial list pairs every two
utterances of held-out speakers in a manifest, one line each, in the format of
SpeechBrain's VoxCeleb recipe: ``label enrol_id test_id`` with label 1 for the
same speaker and 0 for two different ones.

    python -m recipes.corpus.trials data/corpus/telephone_test.csv out_trials.txt

Authors
 * speech-adapters contributors 2026
"""

from __future__ import annotations

import argparse
import itertools
import os
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path

HELD_OUT_SHARE = 3
"""One speaker in this many (by hash) is held out of training, for trials."""


def speaker_group(spk_id: str, seed: int = 1234) -> str:
    """``"held_out"`` for about a third of the speakers, ``"adapt"`` for the rest.

    A pure function of the ID and the seed, so every split and every domain of a
    corpus puts a speaker in the same group.

    Example
    -------
    >>> speaker_group("en-us+m3"), speaker_group("en-us+m3", seed=7)
    ('held_out', 'adapt')
    """
    held = zlib.crc32(f"{seed}-{spk_id}".encode()) % HELD_OUT_SHARE == 0
    return "held_out" if held else "adapt"


def trial_pairs(
    utterances: Iterable[tuple[str, str]], max_nontarget_per_target: int | None = None
) -> list[tuple[int, str, str]]:
    """Every pair of utterances ``(ID, speaker)`` as a trial ``(label, enrol, test)``.

    Pairs come in a fixed order (sorted IDs). With ``max_nontarget_per_target``,
    non-target pairs are thinned evenly (every k-th) to at most that many per
    target pair, which keeps large lists cheap to score.

    Example
    -------
    >>> trial_pairs([("a1", "A"), ("a2", "A"), ("b1", "B")])
    [(1, 'a1', 'a2'), (0, 'a1', 'b1'), (0, 'a2', 'b1')]
    """
    ordered = sorted(utterances)
    pairs = [(int(s1 == s2), u1, u2) for (u1, s1), (u2, s2) in itertools.combinations(ordered, 2)]
    if max_nontarget_per_target is None:
        return pairs
    targets = [p for p in pairs if p[0] == 1]
    others = [p for p in pairs if p[0] == 0]
    keep = max(1, len(targets)) * max_nontarget_per_target
    if len(others) > keep:
        step = len(others) / keep
        others = [others[int(i * step)] for i in range(keep)]
    chosen = set(targets) | set(others)
    return [p for p in pairs if p in chosen]


def write_trials(
    manifest: str | os.PathLike,
    path: str | os.PathLike,
    seed: int = 1234,
    held_out_only: bool = True,
    max_nontarget_per_target: int | None = 50,
) -> dict[str, int]:
    """Write the trial list of a manifest's held-out speakers (or of all its speakers).

    Returns the counts ``{"target", "nontarget", "speakers", "utterances"}``.
    The file is replaced atomically, so a reader never sees half a list.
    """
    from recipes.common import read_manifest

    rows = read_manifest(str(manifest), hint="A trial list needs a manifest with spk_id.")
    if any("spk_id" not in row or not row["spk_id"] for row in rows.values()):
        raise ValueError(
            f"Manifest {manifest} lacks speaker labels: speaker verification needs a spk_id "
            "column with each utterance's speaker."
        )
    chosen = [
        (uid, row["spk_id"])
        for uid, row in rows.items()
        if not held_out_only or speaker_group(row["spk_id"], seed) == "held_out"
    ]
    trials = trial_pairs(chosen, max_nontarget_per_target)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(path.name + ".tmp")
    temp.write_text("".join(f"{label} {e} {t}\n" for label, e, t in trials))
    os.replace(temp, path)
    targets = sum(label for label, _, _ in trials)
    return {
        "target": targets,
        "nontarget": len(trials) - targets,
        "speakers": len({s for _, s in chosen}),
        "utterances": len(chosen),
    }


def read_trials(path: str | os.PathLike) -> list[tuple[int, str, str]]:
    """Read ``label enrol test`` lines; a malformed line raises an error naming it."""
    trials = []
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 3 or fields[0] not in ("0", "1"):
                raise ValueError(
                    f"Trial list {path}, line {number}: expected 'label enrol_id test_id' with "
                    f"label 0 or 1, got {line.strip()!r}."
                )
            trials.append((int(fields[0]), fields[1], fields[2]))
    return trials


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point; see ``--help``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("manifest", help="CSV manifest with ID and spk_id columns")
    parser.add_argument("output", help="trial list to write")
    parser.add_argument("--seed", type=int, default=1234, help="speaker grouping seed")
    parser.add_argument("--all_speakers", action="store_true", help="not only held-out ones")
    args = parser.parse_args(argv)
    counts = write_trials(args.manifest, args.output, args.seed, not args.all_speakers)
    print(counts)


if __name__ == "__main__":
    main()

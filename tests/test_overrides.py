"""``bash run.sh main|asr ARGS``: each of the two runs takes the arguments its YAML defines."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from recipes.overrides import arguments_for

ROOT = Path(__file__).resolve().parents[1]
JOBS = {
    "main": ("hparams/lora_whisper.yaml", "hparams/full_whisper.yaml"),
    "asr": ("hparams/lora_asr.yaml", "hparams/full_asr.yaml"),
    "speaker": ("hparams/lora_speaker.yaml", "hparams/full_speaker.yaml"),
    "enhancement": ("hparams/lora_enhancement.yaml", "hparams/full_enhancement.yaml"),
}


def test_readme_example_gives_rank_to_the_lora_run_only():
    argv = ["--target", "voices", "--rank", "16"]
    lora, full = JOBS["main"]
    assert arguments_for(ROOT / lora, argv, [ROOT / full]) == (argv, [])
    assert arguments_for(ROOT / full, argv, [ROOT / lora]) == (["--target", "voices"], ["rank"])


def test_run_options_reach_both_runs_and_a_typo_stops_the_job():
    lora, full = (ROOT / p for p in JOBS["asr"])
    kept, _ = arguments_for(full, ["--precision=bf16", "--device", "cpu", "--alpha", "8"], [lora])
    assert kept == ["--precision=bf16", "--device", "cpu"]
    with pytest.raises(ValueError, match="--rnak is neither"):
        arguments_for(lora, ["--rnak", "16"], [full])
    result = subprocess.run(
        [sys.executable, "-m", "recipes.overrides", str(full), str(lora), "--", "--rank", "4"],
        cwd=ROOT, capture_output=True, check=True,
    )  # fmt: skip
    assert result.stdout == b"" and b"--rank: not a setting" in result.stderr


def test_every_run_sh_example_of_the_readme_applies_to_both_runs():
    """The README's ``bash run.sh <job> ...`` examples: no run gets a key it lacks."""
    text = (ROOT / "README.md").read_text()
    examples = re.findall(r"bash run\.sh (main|asr|speaker|enhancement) (--[^`\n]*)", text)
    assert examples, "the README shows no run.sh example with arguments"
    for job, args in examples:
        lora, full = (ROOT / p for p in JOBS[job])
        argv = re.sub(r"--model[ =]\S+", "", args).split()  # run.sh's own: which Whisper
        for yaml, other in ((lora, full), (full, lora)):
            kept, left_out = arguments_for(yaml, argv, [other])
            assert len(kept) + 2 * len(left_out) == len(argv)  # every --key value placed


RANKED = sorted(
    p.name
    for p in (ROOT / "hparams").glob("*.yaml")
    if re.search(r"^alpha:", p.read_text(), re.MULTILINE)
)


@pytest.mark.parametrize("yaml", RANKED)
def test_a_rank_override_keeps_the_scale_unless_alpha_is_given(yaml):
    """``--rank 16`` keeps ``alpha / rank`` at the YAML's value (the rule the sweeps used);
    ``--alpha`` given too sets it apart."""
    text = (ROOT / "hparams" / yaml).read_text()
    from hyperpyyaml import resolve_references

    def resolved(overrides):
        return resolve_references(text, overrides).getvalue()

    def value(resolved_text, key):
        return float(re.search(rf"^{key}: *([0-9.]+)", resolved_text, re.MULTILINE).group(1))

    default = resolved({})
    scale = value(default, "alpha") / value(default, "rank")
    assert scale == 2.0
    sixteen = resolved({"rank": 16})
    assert value(sixteen, "alpha") == 16 * scale
    assert value(resolved({"rank": 16, "alpha": 8}), "alpha") == 8

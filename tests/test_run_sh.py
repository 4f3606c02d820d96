"""``run.sh``: every job has one shape (weights once, LoRA, full fine-tuning, table).

``run.sh`` is run with a stand-in Python that records each command instead of running it
(``recipes.overrides``, which picks each run's arguments, runs for real).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def fake_venv(tmp_path_factory) -> Path:
    """A venv folder whose ``python`` logs its arguments; set up as if installed."""
    venv = tmp_path_factory.mktemp("venv")
    (venv / "bin").mkdir()
    digest = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()[:16]
    (venv / f".installed-{digest}").touch()
    python = venv / "bin" / "python"
    python.write_text(
        "#!/bin/bash\n"
        'if [ "$1 $2" = "-m recipes.overrides" ]; then exec ' + sys.executable + ' "$@"; fi\n'
        'echo "$*" >>"$LOG"\n'
    )
    python.chmod(0o755)
    return venv


def run_job(fake_venv: Path, tmp_path: Path, *args: str) -> tuple[int, list[str], str]:
    """Run ``bash run.sh ARGS``; its exit status, the commands it ran, its output."""
    log = tmp_path / "commands.log"
    log.write_text("")
    env = {**os.environ, "VENV": str(fake_venv), "LOG": str(log)}
    done = subprocess.run(
        ["bash", str(ROOT / "run.sh"), *args], check=False, env=env, capture_output=True, text=True
    )
    return done.returncode, log.read_text().splitlines(), done.stdout + done.stderr


JOBS = {  # job: (task, where its weights go, results folder)
    "main": ("whisper", "pretrained/whisper-tiny.en", "results/whisper"),
    "asr": ("asr", "results/asr/pretrain", "results/asr"),
    "speaker": ("speaker", "pretrained/resemblyzer", "results/speaker"),
    "enhancement": ("enhancement", "pretrained/nsnet2", "results/enhancement"),
    "vad": ("vad", "pretrained/silero_vad", "results/vad"),
}


@pytest.mark.parametrize("job", sorted(JOBS))
def test_every_job_has_the_same_four_steps(fake_venv, tmp_path, job):
    task, weights, results = JOBS[job]
    status, commands, output = run_job(fake_venv, tmp_path, job, "--rank", "16")
    assert status == 0, output
    assert commands[0] == f"-m recipes.{task}.pretrained --output {weights}"
    assert commands[1] == f"recipes/{task}/train.py hparams/lora_{task}.yaml --rank 16"
    assert commands[2] == f"recipes/{task}/train.py hparams/full_{task}.yaml"  # no --rank
    assert commands[3].startswith(f"recipes/report.py {results}")
    real = [f"-m recipes.transcribe {results}/lora/noisy data/corpus/real_sample.csv --compare"]
    assert commands[4:] in ([], real if task == "whisper" else [])  # real speech: Whisper


def test_run_sh_alone_is_the_main_job(fake_venv, tmp_path):
    status, commands, output = run_job(fake_venv, tmp_path)
    assert status == 0, output
    assert commands[:2] == [
        "-m recipes.whisper.pretrained --output pretrained/whisper-tiny.en",
        "recipes/whisper/train.py hparams/lora_whisper.yaml",
    ]


def test_whisper_base_gets_its_own_weights_and_results(fake_venv, tmp_path):
    for spelling in (["--model", "base"], ["--whisper_source", "packaged-base"]):
        status, commands, output = run_job(fake_venv, tmp_path, "main", *spelling)
        assert status == 0, output
        assert (
            commands[0]
            == "-m recipes.whisper.pretrained --model base --output pretrained/whisper-base"
        )
        for run in commands[1:3]:
            words = run.split()
            assert words.count("--whisper_source") == 1 and "packaged-base" in words
            assert words[words.index("--results_folder") + 1] == "results/whisper-base"
        assert commands[3] == "recipes/report.py results/whisper-base"


def test_a_results_folder_given_is_where_the_table_is_read(fake_venv, tmp_path):
    status, commands, output = run_job(fake_venv, tmp_path, "vad", "--results_folder=out/vad")
    assert status == 0, output
    assert all("--results_folder=out/vad" in run for run in commands[1:3])
    assert commands[3] == "recipes/report.py out/vad"


@pytest.mark.parametrize(
    "args, message",
    [
        (["main", "--model", "small"], "expected tiny.en or base"),
        (["speaker", "--model", "base"], "option of the main job only"),
        (["main", "--rnak", "4"], "rnak"),
    ],
)
def test_a_wrong_job_argument_stops_before_anything_runs(fake_venv, tmp_path, args, message):
    status, commands, output = run_job(fake_venv, tmp_path, *args)
    assert status == 2 and message in output
    assert not any("train.py" in command for command in commands)

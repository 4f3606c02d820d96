"""Running recipe commands from tests: one place for the subprocess details."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    return subprocess.run(
        command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=3600
    )


def run(*args: str, cwd: Path = ROOT, launcher: tuple[str, ...] = (sys.executable,)) -> str:
    """Run a command, failing the test with its output if it fails; return the output."""
    result = _run([*launcher, *args], cwd)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    return result.stdout + result.stderr


def run_failing(*args: str, cwd: Path = ROOT) -> str:
    """Run a Python command that must fail; return what it printed."""
    result = _run([sys.executable, *args], cwd)
    assert result.returncode != 0, result.stdout[-3000:]
    return result.stdout + result.stderr


def killed_at(point: str, *args: str) -> int:
    """Run a Python command with the fault ``point`` (``SPEECH_ADAPTERS_FAULT``, e.g.
    ``train_batch:3``: SIGKILL there); return its exit status (-9 when it was killed)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPEECH_ADAPTERS_FAULT": point}
    return subprocess.run(
        [sys.executable, *args], check=False, env=env, cwd=ROOT, capture_output=True, timeout=3600
    ).returncode


def epoch_losses(train_log: Path) -> list[float]:
    """The training loss of every epoch, in order, from SpeechBrain's ``train_log.txt``."""
    import re

    text = Path(train_log).read_text()
    return [
        float(x) for x in re.findall(r"^epoch: \d+.* train loss: ([-+.\deE]+)", text, re.MULTILINE)
    ]


def run_two_processes(*args: str) -> str:
    """Run a recipe as two gloo processes under ``torchrun`` (a free port each time)."""
    torchrun = str(Path(sys.executable).with_name("torchrun"))
    return run("--standalone", "--nproc_per_node=2", *args, "--distributed_backend=gloo",
               launcher=(torchrun,))  # fmt: skip


def written_once(out: Path) -> dict:
    """The summary of a finished DDP run, after checking that its adapter and inference
    folder were written (by rank 0) and that no temporary file was left."""
    import json

    assert (out / "adapter.safetensors").is_file()
    assert (out / "inference" / "adapter.ckpt").is_file()
    assert not list(out.rglob("*.tmp"))
    return json.loads((out / "summary.json").read_text())

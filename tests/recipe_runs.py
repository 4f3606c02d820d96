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


def epoch_losses(train_log: Path) -> list[float]:
    """The training loss of every epoch, in order, from SpeechBrain's ``train_log.txt``."""
    import re

    text = Path(train_log).read_text()
    return [
        float(x) for x in re.findall(r"^epoch: \d+.* train loss: ([-+.\deE]+)", text, re.MULTILINE)
    ]

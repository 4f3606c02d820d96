"""DDP on CPU beyond one recipe run: BatchNorm, and two nodes on one machine."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from conftest import ASR_TINY
from recipe_runs import run

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_batchnorm_trains_under_cpu_ddp_where_speechbrains_wrapping_stops():
    """SpeechBrain's Brain turns BatchNorm into SyncBatchNorm, which runs on GPUs only; the
    recipes' Brain keeps it per process on CPU, says so, and trains."""
    script = str(ROOT / "tests" / "ddp_batchnorm.py")
    ours = run("--standalone", "--nproc_per_node=2", script, launcher=(TORCHRUN,))
    assert "rank 0 trained" in ours and "rank 1 trained" in ours
    assert "statistics are kept per process" in ours
    theirs = subprocess.run(
        [TORCHRUN, "--standalone", "--nproc_per_node=2", script, "--sync"],
        cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=3600, check=False,
    )  # fmt: skip
    assert theirs.returncode != 0 and "SyncBatchNorm layers only work with GPU" in theirs.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_nodes_on_one_machine(asr_base, tmp_path):
    """The documented multi-node command, as two nodes on 127.0.0.1 (one process each):
    one run, one summary and one adapter, written by the first node."""
    port = _free_port()
    out = tmp_path / "two_nodes"
    recipe = [
        str(ROOT / "recipes" / "asr" / "train.py"), "hparams/lora_asr.yaml",
        f"--data_folder={asr_base['corpus']}", *ASR_TINY, "--number_of_epochs=1",
        f"--base_checkpoint={asr_base['base']}", "--distributed_backend=gloo",
        f"--output_folder={out}",
    ]  # fmt: skip

    def node(rank: int) -> subprocess.Popen:
        command = [TORCHRUN, "--nnodes=2", f"--node_rank={rank}", "--nproc_per_node=1",
                   "--master_addr=127.0.0.1", f"--master_port={port}", *recipe]  # fmt: skip
        return subprocess.Popen(
            command, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )

    nodes = [node(0), node(1)]
    outputs = [node.communicate(timeout=3600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "lora" and "after" in summary
    assert (out / "adapter.safetensors").is_file() and (
        out / "inference" / "adapter.ckpt"
    ).is_file()

"""Fixtures shared by the recipe tests: one tiny pretrained Conformer CTC per session."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_runs import run

ROOT = Path(__file__).resolve().parents[1]
ASR_TRAIN = ROOT / "recipes" / "asr" / "train.py"
# A small model on the tiny corpus: seconds per epoch.
ASR_TINY = [
    "--corpus_size=tiny",
    "--batch_size=4",
    "--num_workers=0",
    "--d_model=64",
    "--nhead=2",
    "--num_encoder_layers=2",
    "--d_ffn=256",
]


@pytest.fixture(scope="session")
def asr_base(tmp_path_factory):
    """A Conformer CTC pretrained for 30 epochs on the tiny corpus (about 20 s): it
    transcribes the source domain a little, so adaptation has something to move."""
    tmp = tmp_path_factory.mktemp("asr_base")
    run(
        str(ASR_TRAIN), "hparams/pretrain_asr.yaml", f"--data_folder={tmp / 'corpus'}",
        *ASR_TINY, "--number_of_epochs=30", f"--output_folder={tmp / 'pre'}",
    )  # fmt: skip
    return {"corpus": tmp / "corpus", "pre": tmp / "pre", "base": tmp / "pre" / "base_model.ckpt"}

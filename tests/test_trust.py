"""A result is either right or refused: resume after kill -9, changed inputs, locks,
poisoned data, runs that train nothing, learning itself (Conformer CTC recipe, tiny)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from conftest import ASR_TINY
from recipe_runs import epoch_losses, run, run_failing

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "recipes" / "asr" / "train.py")
TWO_EPOCHS = [*ASR_TINY, "--number_of_epochs=2", "--rank=4"]


def lora(asr_base, out: Path, *extra: str) -> list[str]:
    """The recipe's command line; ``extra`` overrides replace the defaults they name."""
    given = {arg.split("=")[0] for arg in extra}
    defaults = [f"--data_folder={asr_base['corpus']}", f"--base_checkpoint={asr_base['base']}",
                *TWO_EPOCHS, f"--output_folder={out}"]  # fmt: skip
    return [
        TRAIN,
        "hparams/lora_asr.yaml",
        *(a for a in defaults if a.split("=")[0] not in given),
        *extra,
    ]


def killed(args: list[str], point: str) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPEECH_ADAPTERS_FAULT": point}
    return subprocess.run(
        [sys.executable, *args], check=False, env=env, cwd=ROOT, capture_output=True, timeout=600
    ).returncode


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def figures(out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    summary.pop("train_time_s")
    return summary


@pytest.fixture(scope="module")
def reference(asr_base, tmp_path_factory):
    """An uninterrupted two-epoch LoRA run."""
    out = tmp_path_factory.mktemp("trust") / "reference"
    run(*lora(asr_base, out))
    return out


@pytest.mark.parametrize("point", ["checkpoint_write:1", "train_batch:5", "before_test:1"])
def test_kill_9_at_any_point_then_rerun_ends_with_the_same_figures(
    asr_base, reference, tmp_path, point
):
    """Killed mid-checkpoint (files half written), mid-epoch 2, or after training: the
    rerun resumes and its summary and adapter bytes equal the uninterrupted run's."""
    out = tmp_path / "run"
    assert killed(lora(asr_base, out), point) == -9
    run(*lora(asr_base, out))
    assert figures(out) == figures(reference)
    assert digest(out / "adapter.safetensors") == digest(reference / "adapter.safetensors")
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["train_time_s"] > 0  # accumulated across the resume, never reset to 0
    if point.startswith("checkpoint_write"):
        assert not [p for p in (out / "save").glob("CKPT+*") if not (p / "COMPLETE").is_file()]


def test_a_finished_run_is_not_redone_or_overwritten(asr_base, reference):
    before = (reference / "summary.json").read_bytes()
    out = run(*lora(asr_base, reference))
    assert "This run is finished" in out
    assert (reference / "summary.json").read_bytes() == before


def test_changed_inputs_stop_a_rerun_and_fresh_start_redoes_it(asr_base, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference, out)
    (out / ".lock").unlink(missing_ok=True)
    message = run_failing(*lora(asr_base, out, "--alpha=2"))
    assert "changed: the setting alpha" in message and "--fresh_start True" in message
    other = tmp_path / "other_base.ckpt"
    state = torch.load(asr_base["base"], weights_only=True)
    frozen = next(k for k in state if k.startswith("encoder.") and k.endswith(".weight"))
    state[frozen] += 0.01
    torch.save(state, other)
    args = lora(asr_base, out, f"--base_checkpoint={other}")
    assert "changed: the base model weights" in run_failing(*args)
    run(*args, "--fresh_start=True")
    assert figures(out)["after"] != figures(reference)["after"] or digest(
        out / "adapter.safetensors"
    ) != digest(reference / "adapter.safetensors")


def test_one_run_per_output_folder(asr_base, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / ".lock").write_text(
        json.dumps({"pid": os.getpid(), "host": os.uname().nodename, "started": "now"})
    )
    assert f"Another run (pid {os.getpid()}" in run_failing(*lora(asr_base, out))
    (out / ".lock").write_text(
        json.dumps({"pid": 2**22 + 12345, "host": os.uname().nodename, "started": "then"})
    )
    assert "Taking over the lock of a dead run" in run(*lora(asr_base, out, "--number_of_epochs=1"))
    assert not (out / ".lock").exists()  # released at the end


def poisoned_manifests(asr_base, tmp_path, split: str) -> dict:
    """The noisy manifests, with a zero-length recording added to ``split``."""
    corpus = asr_base["corpus"]
    paths = {}
    for name in ("train", "valid", "test"):
        text = (corpus / f"noisy_{name}.csv").read_text().replace("$data_root", str(corpus))
        if name == split:
            soundfile.write(tmp_path / "empty.wav", np.zeros((0, 1)), 16000)
            text += f"empty-1,0.0,{tmp_path / 'empty.wav'},SILENCE\n"
        paths[name] = tmp_path / f"noisy_{name}.csv"
        paths[name].write_text(text)
    return {"train_csv": paths["train"], "valid_csv": paths["valid"], "test": paths["test"]}


def test_an_empty_recording_is_left_out_of_training_and_refused_in_a_test_set(asr_base, tmp_path):
    paths = poisoned_manifests(asr_base, tmp_path, "train")
    data = [f"--train_csv={paths['train_csv']}", f"--valid_csv={paths['valid_csv']}",
            f"--test_sets={{target: {paths['test']}}}", "--prepare_corpus=False"]  # fmt: skip
    out = run(*lora(asr_base, tmp_path / "run", *data, "--number_of_epochs=1"))
    assert "1 of 13 audio files" in out and "empty.wav" in out
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["train_utterances"] == 12 and summary["skipped_updates"] == 0
    paths = poisoned_manifests(asr_base, tmp_path, "test")
    data[2] = f"--test_sets={{target: {paths['test']}}}"
    message = run_failing(*lora(asr_base, tmp_path / "run2", *data))
    assert "empty.wav is empty (0 samples)" in message and "ID empty-1" in message


def test_diverging_training_stops_instead_of_writing_a_broken_adapter(asr_base, tmp_path):
    out = tmp_path / "run"
    message = run_failing(
        *lora(asr_base, out, "--lr=1e8", "--n_warmup_steps=1", "--number_of_epochs=3")
    )
    assert "updates in a row had a non-finite loss or gradient" in message
    assert not (out / "adapter.safetensors").exists() and not (out / "summary.json").exists()


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (["--alpha=0"], "alpha: 0 makes the update of every adapter zero"),
        (
            ["--all_linear=False", "--unfrozen_layers=[]"],
            "No layer is adapted and none is unfrozen",
        ),
        (["--lr=0"], "The first epoch made no update with a non-zero gradient"),
    ],
)
def test_a_run_that_trains_nothing_is_refused(asr_base, tmp_path, overrides, expected):
    message = run_failing(*lora(asr_base, tmp_path / "run", *overrides))
    assert expected in message
    assert not (tmp_path / "run" / "summary.json").exists()


def test_evaluation_only_is_allowed_when_asked(asr_base, tmp_path):
    out = tmp_path / "run"
    run(*lora(asr_base, out, "--all_linear=False", "--unfrozen_layers=[]", "--evaluate_only=True"))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["evaluate_only"] is True and "target" in summary["after"]
    assert not (out / "adapter.safetensors").exists()


def test_an_unknown_target_names_the_domains(asr_base, tmp_path):
    message = run_failing(*lora(asr_base, tmp_path / "run", "--target=noisey"))
    assert "target 'noisey' names no domain" in message and "noisy, voices, telephone" in message


@pytest.mark.parametrize("method", ["lora", "full"])
def test_adaptation_learns_a_set_it_can_overfit(asr_base, tmp_path, method):
    """Trained and tested on the same 12 utterances: the loss falls and the WER too."""
    corpus = asr_base["corpus"]
    out = tmp_path / method
    run(
        TRAIN, f"hparams/{method}_asr.yaml", f"--data_folder={corpus}", *ASR_TINY,
        f"--base_checkpoint={asr_base['base']}", "--number_of_epochs=15", "--lr=0.02" if method == "lora" else "--lr=0.002",
        "--n_warmup_steps=5", f"--test_sets={{target: {corpus / 'noisy_train.csv'}}}", f"--output_folder={out}",
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    losses = epoch_losses(out / "train_log.txt")
    assert len(losses) == 15 and losses[-1] < 0.7 * losses[0]
    assert summary["after"]["target"]["WER"] < summary["before"]["target"]["WER"]
    assert summary["after"]["target"]["CER"] < 0.8 * summary["before"]["target"]["CER"]

"""A result is either right or refused: resume after kill -9, changed inputs, locks,
poisoned data, runs that train nothing, learning itself (Conformer CTC recipe, tiny)."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from conftest import ASR_TINY
from recipe_runs import epoch_losses, killed_at, run, run_failing

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
    assert killed_at(point, *lora(asr_base, out)) == -9
    run(*lora(asr_base, out))
    assert figures(out) == figures(reference)
    assert digest(out / "adapter.safetensors") == digest(reference / "adapter.safetensors")
    resumed = json.loads((out / "summary.json").read_text())
    assert resumed["train_time_s"] > 0  # accumulated across the resume, never reset to 0
    if point.startswith("checkpoint_write"):
        assert not [p for p in (out / "save").glob("CKPT+*") if not (p / "COMPLETE").is_file()]


#: Kills inside checkpoint saves, one checkpoint per training step: two epochs of three
#: batches make saves 1-3 and 5-7 inside the epochs, 4 and 8 at their ends, 8 files each
#: (CKPT.yaml, then model, scheduler, counter, run_state, brain, dataloader, optimizer).
INSIDE_SAVES = [
    "checkpoint_write:2",  # writing the 2nd save's random states: resumes from the 1st
    "checkpoint_file:29:torn",  # epoch 1's closing save, a file half written: resumes from
    # the checkpoint after its last batch, with no batch left to run in epoch 1
    "checkpoint_marker:6",  # every file of a save inside epoch 2, not its marker
    "checkpoint_complete:4",  # epoch 1's closing save complete, the older one not deleted
    "checkpoint_delete:22",  # that deletion cut after its marker and three files
]


@pytest.mark.parametrize("point", INSIDE_SAVES)
def test_kill_9_inside_any_step_of_a_checkpoint_save_then_rerun_ends_bit_exact(
    asr_base, reference, tmp_path, point
):
    """With --ckpt_interval_steps=1 (a checkpoint after every batch), a kill at each step
    of a save or of the deletion after it: the rerun ends with the summary and adapter
    bytes of the uninterrupted run (which wrote no checkpoint inside its epochs)."""
    out = tmp_path / "run"
    args = lora(asr_base, out, "--ckpt_interval_steps=1")
    assert killed_at(point, *args) == -9
    run(*args)
    assert figures(out) == figures(reference)
    assert digest(out / "adapter.safetensors") == digest(reference / "adapter.safetensors")
    assert all((p / "COMPLETE").is_file() for p in (out / "save").glob("CKPT+*"))


def folder_contents(folder: Path) -> dict[str, str]:
    """Every file's SHA-256 (a link: its target) under ``folder``, by relative path; the
    lock aside (a killed run leaves its lock, which the next run takes over)."""
    return {
        str(p.relative_to(folder)): f"-> {os.readlink(p)}" if p.is_symlink() else digest(p)
        for p in sorted(folder.rglob("*"))
        if (p.is_symlink() or p.is_file()) and p.name != ".lock"
    }


def other_base(asr_base, tmp_path: Path) -> Path:
    """The base checkpoint with one frozen weight moved: another base model."""
    path = tmp_path / "other_base.ckpt"
    state = torch.load(asr_base["base"], weights_only=True)
    frozen = next(k for k in state if k.startswith("encoder.") and k.endswith(".weight"))
    state[frozen] += 0.01
    torch.save(state, path)
    return path


def test_a_refused_rerun_changes_nothing_in_the_folder(asr_base, reference, tmp_path):
    """A rerun with another base is refused, and every file of the folder keeps its
    bytes (hyperparams.yaml, env.log, log.txt, the save/pretrained link...)."""
    out = tmp_path / "run"
    shutil.copytree(reference, out, symlinks=True)
    before = folder_contents(out)
    message = run_failing(
        *lora(asr_base, out, f"--base_checkpoint={other_base(asr_base, tmp_path)}")
    )
    assert "changed: the base model weights" in message
    assert folder_contents(out) == before


def test_a_run_resumed_with_another_precision_is_refused(asr_base, reference, tmp_path):
    """The precision is recorded in the summary; a run killed in fp32 and rerun with
    bf16 is refused naming both values and the ways out, and the folder is unchanged;
    --fresh_start True trains again in bf16."""
    assert figures(reference)["settings"]["run_options"]["precision"] == "fp32"
    out = tmp_path / "run"
    assert killed_at("train_batch:5", *lora(asr_base, out)) == -9
    before = folder_contents(out)
    message = run_failing(*lora(asr_base, out, "--precision=bf16"))
    assert "precision: fp32 -> bf16" in message and "rerun with --precision fp32" in message
    assert "--fresh_start True" in message
    assert folder_contents(out) == before
    run(*lora(asr_base, out, "--precision=bf16", "--fresh_start=True"))
    assert figures(out)["settings"]["run_options"]["precision"] == "bf16"


def test_a_damaged_checkpoint_names_the_file_and_the_way_out(asr_base, reference, tmp_path):
    """A flipped byte in a file of the checkpoint a rerun resumes from: refused naming
    that file, rm -r of its checkpoint and --fresh_start True; doing the former, the
    rerun ends with the uninterrupted run's figures and adapter."""
    out = tmp_path / "run"
    assert killed_at("before_test:1", *lora(asr_base, out)) == -9
    newest = max(
        (out / "save").glob("CKPT+*"),
        key=lambda p: float(yaml.safe_load((p / "CKPT.yaml").read_text())["unixtime"]),
    )
    data = bytearray((newest / "model.ckpt").read_bytes())
    data[len(data) // 2] ^= 0x01
    (newest / "model.ckpt").write_bytes(bytes(data))
    message = run_failing(*lora(asr_base, out))
    assert str(newest / "model.ckpt") in message
    assert f"rm -r {newest}" in message and "--fresh_start True" in message
    shutil.rmtree(newest)
    run(*lora(asr_base, out))
    assert figures(out) == figures(reference)
    assert digest(out / "adapter.safetensors") == digest(reference / "adapter.safetensors")


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
    args = lora(asr_base, out, f"--base_checkpoint={other_base(asr_base, tmp_path)}")
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

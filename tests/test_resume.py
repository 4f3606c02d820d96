"""Exact resumption, unit by unit: a kill at every step of a checkpoint save or deletion,
damaged checkpoints, random states inside an epoch, run options, deferred folder writes.

The recipe-level tests (a tiny Conformer killed and rerun) are in ``test_trust.py``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from speechbrain.dataio.dataloader import SaveableDataLoader
from speechbrain.utils.run_opts import RunOptions

from recipes.bookkeeping import (
    changed_run_options,
    check_inputs,
    defer_until_accepted,
    figure_run_options,
    figure_settings,
)
from recipes.resumption import CompleteCheckpointer, DamagedCheckpointError, RunState

ROOT = Path(__file__).resolve().parents[1]

#: Four checkpoints, each keeping only the newest: layer weights = the save's number.
SAVES = textwrap.dedent(
    """
    import sys
    import torch
    from recipes.resumption import CompleteCheckpointer

    layer = torch.nn.Linear(2, 2)
    checkpointer = CompleteCheckpointer(sys.argv[1], recoverables={"layer": layer})
    for step in range(1, 5):
        with torch.no_grad():
            layer.weight.fill_(step)
        checkpointer.save_and_keep_only(meta={"step": step}, num_to_keep=1)
    """
)
# Per save: CKPT.yaml and layer.ckpt (checkpoint_file passes 2 per save); per deletion
# of the older one: its marker, then its two files (checkpoint_delete passes 3 each).
AFTER_THE_FIRST_SAVE = [
    *(f"checkpoint_file:{n}" for n in (3, 4, 8)),
    "checkpoint_file:4:torn",
    *(f"checkpoint_marker:{n}" for n in (2, 4)),
    *(f"checkpoint_complete:{n}" for n in (1, 2, 4)),
    *(f"checkpoint_delete:{n}" for n in (1, 2, 3, 4, 9)),
]


def saves_killed_at(folder: Path, point: str) -> int:
    env = {**os.environ, "SPEECH_ADAPTERS_FAULT": point, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", SAVES, str(folder)], env=env, cwd=ROOT, capture_output=True,
        check=False, timeout=3600,
    )  # fmt: skip
    return done.returncode


@pytest.mark.parametrize("point", AFTER_THE_FIRST_SAVE)
def test_a_kill_at_any_step_of_a_save_or_deletion_leaves_only_whole_checkpoints(tmp_path, point):
    """Whatever the step a kill cuts (a file written or torn, the marker, the deletion of
    the older checkpoint), the checkpoints that count are whole and load their own values;
    the others are removed, and the newest whole one is the one resumed from."""
    assert saves_killed_at(tmp_path, point) == -9
    layer = torch.nn.Linear(2, 2)
    checkpointer = CompleteCheckpointer(tmp_path, recoverables={"layer": layer})
    found = checkpointer.list_checkpoints()
    assert found  # the first save was complete before any of these points
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(c.path.name for c in found)
    for ckpt in found:
        checkpointer.load_checkpoint(ckpt)  # every file checked against its marker
        assert torch.all(layer.weight == ckpt.meta["step"])
    newest = checkpointer.recover_if_possible()
    assert newest.meta["step"] == max(c.meta["step"] for c in found)


@pytest.mark.parametrize(
    "point", ["checkpoint_file:1", "checkpoint_file:2:torn", "checkpoint_marker:1"]
)
def test_a_kill_inside_the_first_save_leaves_nothing_to_resume_from(tmp_path, point):
    assert saves_killed_at(tmp_path, point) == -9
    checkpointer = CompleteCheckpointer(tmp_path, recoverables={"layer": torch.nn.Linear(2, 2)})
    assert checkpointer.recover_if_possible() is None and not list(tmp_path.iterdir())


def flip_a_byte(path: Path, where: float = 0.5) -> None:
    data = bytearray(path.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damaged", ["layer.ckpt", "CKPT.yaml", "COMPLETE"])
@pytest.mark.parametrize("where", [0.1, 0.5, 0.9])
def test_a_damaged_file_in_a_complete_checkpoint_is_named_with_the_way_out(
    tmp_path, damaged, where
):
    checkpointer = CompleteCheckpointer(tmp_path, recoverables={"layer": torch.nn.Linear(2, 2)})
    saved = checkpointer.save_checkpoint(meta={"WER": 1.0})
    flip_a_byte(saved.path / damaged, where)
    with pytest.raises(DamagedCheckpointError) as refused:
        checkpointer.recover_if_possible(min_key="WER")
    message = str(refused.value)
    assert str(saved.path / damaged) in message
    assert f"rm -r {saved.path}" in message and "--fresh_start True" in message


def test_a_missing_file_in_a_complete_checkpoint_is_named(tmp_path):
    checkpointer = CompleteCheckpointer(tmp_path, recoverables={"layer": torch.nn.Linear(2, 2)})
    saved = checkpointer.save_checkpoint()
    (saved.path / "layer.ckpt").unlink()
    with pytest.raises(DamagedCheckpointError, match=r"layer\.ckpt is missing"):
        checkpointer.recover_if_possible()


def test_a_checkpoint_inside_an_epoch_resumes_the_random_streams_exactly(tmp_path):
    """The epoch's data loader draws a seed from torch's generator when its iterator is
    made; resumed inside the epoch, that draw happens again, and the random states
    must be those of the checkpoint after it (dropout would differ otherwise)."""

    def loader() -> SaveableDataLoader:
        return SaveableDataLoader(list(range(8)), batch_size=2)

    torch.manual_seed(0)
    first, state = loader(), RunState()
    checkpointer = CompleteCheckpointer(tmp_path, recoverables={"data": first, "state": state})
    batches = iter(first)  # the epoch starts: a seed is drawn
    next(batches)
    checkpointer.save_checkpoint(end_of_epoch=False)
    expected = [next(batches).tolist(), torch.rand(4)]

    torch.manual_seed(1)  # another process, other states
    second, state = loader(), RunState()
    resumed = CompleteCheckpointer(tmp_path, recoverables={"data": second, "state": state})
    resumed.recover_if_possible()
    batches = iter(second)
    assert next(batches).tolist() == expected[0]
    assert torch.equal(torch.rand(4), expected[1])
    assert type(second) is SaveableDataLoader  # later epochs draw as usual


def test_run_options_that_change_figures_are_recorded_as_the_brain_applies_them():
    defaults = RunOptions(device="cpu")
    assert figure_run_options(defaults, {"precision": "bf16"})["precision"] == "bf16"  # YAML
    given = RunOptions(device="cpu", precision="fp32", overridden_args={"precision"})
    options = figure_run_options(given, {"precision": "bf16"})  # the command line wins
    assert options["precision"] == "fp32" and options["device_type"] == "cpu"
    assert options["world_size"] == int(os.environ.get("WORLD_SIZE", "1"))
    legacy = RunOptions(bfloat16_mix_prec=True, overridden_args={"bfloat16_mix_prec"})
    assert figure_run_options(legacy, {})["precision"] == "bf16"
    settings = figure_settings({"lr": 0.1, "data_folder": "x", "run_options": options})
    assert settings == {"lr": 0.1, "run_options": options}
    assert changed_run_options({"precision": "fp32"}, {"precision": "bf16"}) == [
        "precision: fp32 -> bf16"
    ]


def inputs() -> dict:
    return {"base": "a", "data": {"train": "x"}, "settings": {"lr": "1"}, "code": "c"}


def test_a_changed_precision_is_refused_naming_both_values_and_the_way_out(tmp_path):
    written = []
    defer_until_accepted(str(tmp_path), {"precision": "fp32"}, lambda: written.append(1))
    check_inputs(str(tmp_path), inputs())
    assert written == [1]
    assert json.loads((tmp_path / "inputs.json").read_text())["run_options"]["precision"] == "fp32"
    defer_until_accepted(str(tmp_path), {"precision": "bf16"}, lambda: written.append(2))
    with pytest.raises(RuntimeError) as refused:
        check_inputs(str(tmp_path), inputs())
    message = str(refused.value)
    assert "precision: fp32 -> bf16" in message and "--precision fp32" in message
    assert "--fresh_start True" in message and written == [1]
    defer_until_accepted(str(tmp_path), {"precision": "bf16"}, lambda: written.append(3))
    check_inputs(str(tmp_path), inputs(), fresh_start=True)
    assert written == [1, 3]


def test_a_refused_check_writes_nothing(tmp_path):
    check_inputs(str(tmp_path), inputs())
    before = (tmp_path / "inputs.json").read_bytes()
    written = []
    defer_until_accepted(str(tmp_path), {}, lambda: written.append(1))
    with pytest.raises(RuntimeError, match="changed: the base model weights"):
        check_inputs(str(tmp_path), {**inputs(), "base": "b"})
    assert not written and (tmp_path / "inputs.json").read_bytes() == before

"""Run bookkeeping, unit by unit: fingerprints, the folder lock, complete checkpoints."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile
import torch
from speechbrain.dataio.dataset import DynamicItemDataset

from recipes.bookkeeping import (
    RunLock,
    check_inputs,
    data_fingerprint,
    settings_fingerprint,
)
from recipes.resumption import CompleteCheckpointer


def dataset(tmp_path, values) -> DynamicItemDataset:
    rows = {}
    for i, value in enumerate(values):
        path = tmp_path / f"u{i}.wav"
        soundfile.write(path, np.full((800, 1), value), 16000)
        rows[f"u{i}"] = {"wav": str(path), "wrd": "HELLO", "duration": 0.05}
    return DynamicItemDataset(rows)


def test_data_fingerprint_sees_new_audio_behind_the_same_ids(tmp_path):
    first = data_fingerprint(dataset(tmp_path, [0.1, 0.2]))
    assert data_fingerprint(dataset(tmp_path, [0.1, 0.2])) == first
    assert data_fingerprint(dataset(tmp_path, [0.1, 0.3])) != first  # regenerated, same IDs


def test_settings_fingerprint_leaves_out_paths_and_workers_only():
    base = {"lr": 0.01, "rank": 8, "train_loader": {"batch_size": 4, "num_workers": 2},
            "output_folder": "a", "train_csv": "x.csv", "model": torch.nn.Linear(2, 2)}  # fmt: skip
    moved = {
        **base,
        "output_folder": "b",
        "train_csv": "y.csv",
        "train_loader": {"batch_size": 4, "num_workers": 0},
    }
    assert settings_fingerprint(moved) == settings_fingerprint(base)
    assert "model" not in settings_fingerprint(base)  # objects are described by their settings
    bigger = {**base, "train_loader": {"batch_size": 8, "num_workers": 2}}
    assert (
        settings_fingerprint(bigger)["train_loader"] != settings_fingerprint(base)["train_loader"]
    )


def test_check_inputs_records_refuses_and_starts_fresh(tmp_path):
    inputs = {"base": "a", "data": {"train": "x"}, "settings": {"lr": "1"}, "code": "c"}
    check_inputs(str(tmp_path), inputs)
    check_inputs(str(tmp_path), inputs)  # the same inputs: a continuation is fine
    (tmp_path / "save").mkdir()
    (tmp_path / "summary.json").write_text("{}")
    changed = {**inputs, "data": {"train": "y"}}
    with pytest.raises(RuntimeError, match="changed: the data of train"):
        check_inputs(str(tmp_path), changed)
    check_inputs(str(tmp_path), changed, fresh_start=True)
    assert not (tmp_path / "summary.json").exists() and (tmp_path / "save").is_dir()
    assert json.loads((tmp_path / "inputs.json").read_text()) == changed


def test_a_folder_with_checkpoints_but_no_record_is_refused(tmp_path):
    (tmp_path / "save" / "CKPT+old").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="no record of their inputs"):
        check_inputs(str(tmp_path), {"base": "a", "data": {}, "settings": {}, "code": "c"})


def test_a_stale_lock_is_taken_over_and_a_live_one_is_not(tmp_path, caplog):
    lock = tmp_path / ".lock"
    lock.write_text(json.dumps({"pid": 2**22 + 7, "host": os.uname().nodename}))
    RunLock(str(tmp_path)).release()
    assert "dead run" in caplog.text and not lock.exists()
    lock.write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename}))
    with pytest.raises(RuntimeError, match=f"pid {os.getppid()}"):
        RunLock(str(tmp_path))


def test_a_checkpoint_cut_short_is_removed_not_loaded(tmp_path, caplog):
    layer = torch.nn.Linear(2, 2)
    checkpointer = CompleteCheckpointer(tmp_path, recoverables={"layer": layer})
    good = checkpointer.save_checkpoint(meta={"WER": 1.0})
    cut = tmp_path / "CKPT+cut-short"
    cut.mkdir()
    (cut / "CKPT.yaml").write_text("WER: 0.5\nend-of-epoch: true\nunixtime: 1\n")
    assert [c.path for c in checkpointer.list_checkpoints()] == [good.path]
    assert not cut.exists() and "cut short" in caplog.text
    assert checkpointer.recover_if_possible(min_key="WER").path == good.path


@pytest.mark.parametrize("cls", ["LoRA", "DoRA", "PoolLoRA", "Houlsby"])
def test_every_method_on_one_base_starts_from_the_same_fingerprint(cls):
    """So that full fine-tuning and each adapter share the cached 'before' figures."""
    import adapters
    from recipes.adaptation import _pretrained_state
    from recipes.bookkeeping import tensors_fingerprint

    def net():
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(4, 4),
            torch.nn.BatchNorm1d(4),
            torch.nn.LSTM(4, 4),
            torch.nn.Linear(4, 2),
        )

    kwargs = {"projection_size": 2} if cls == "Houlsby" else {"rank": 2}
    adapted = adapters.AdaptedModel(
        net(), getattr(adapters, cls), all_linear=True, unfrozen_layers=["3"], adapter_kwargs=kwargs
    )
    plain = _pretrained_state(net(), None)
    state = _pretrained_state(adapted, adapted)
    assert sorted(state) == sorted(plain)
    assert tensors_fingerprint(state) == tensors_fingerprint(plain)
    with torch.no_grad():
        adapted.adapted_model[3].weight.add_(1.0)  # another initial head: another fingerprint
    assert tensors_fingerprint(_pretrained_state(adapted, adapted)) != tensors_fingerprint(plain)

"""The Whisper recipe end to end on a tiny random Whisper folder (hub layout, no download)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from recipe_runs import epoch_losses, run, run_failing

from recipes.whisper.random_init import save_random_whisper

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "recipes" / "whisper" / "train.py"
# Two-second windows and a handful of utterances: seconds, not minutes.
TINY = [
    "--corpus_size=tiny",
    "--real_speech=False",
    "--train_utterances=8",
    "--valid_utterances=4",
    "--test_utterances=4",
    "--batch_size=4",
    "--num_workers=0",
    "--train_window_s=2.0",
    "--eval_window_s=2.0",
    "--lr=0.01",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny random Whisper folder, adapted with LoRA and fine-tuned in full."""
    tmp = tmp_path_factory.mktemp("whisper")
    source = save_random_whisper(tmp / "tiny-whisper")
    common = [
        f"--data_folder={tmp / 'corpus'}",
        f"--whisper_source={source}",
        f"--hub_cache={tmp / 'hub'}",
        f"--before_cache={tmp / 'before.json'}",
        *TINY,
    ]
    run(
        str(TRAIN),
        "hparams/lora_whisper.yaml",
        *common,
        "--rank=4",
        f"--output_folder={tmp / 'lora'}",
    )
    run(str(TRAIN), "hparams/full_whisper.yaml", *common, f"--output_folder={tmp / 'full'}")
    return {"tmp": tmp, "source": source, "common": common}


def test_lora_run_writes_summary_and_adapter_only_checkpoint(runs):
    out = runs["tmp"] / "lora"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "lora"
    assert 0 < summary["trainable_pct"] < 20
    for when in ("before", "after"):
        assert set(summary[when]) == {"target", "source"}
        assert summary[when]["target"]["n"] == 4
    from safetensors import safe_open

    with safe_open(str(out / "adapter.safetensors"), "pt") as handle:
        keys = list(handle.keys())
    assert keys and all(".lora_" in k for k in keys)
    assert any("self_attn.q_proj" in k for k in keys) and any(".fc2." in k for k in keys)
    assert any("encoder_attn.k_proj" in k for k in keys)  # cross-attention of the decoder
    assert (
        summary["adapter_file_bytes"]
        < 0.2 * (Path(runs["source"]) / "model.safetensors").stat().st_size
    )


def test_full_run_trains_everything_and_shares_the_before_figures(runs):
    full = json.loads((runs["tmp"] / "full" / "summary.json").read_text())
    lora = json.loads((runs["tmp"] / "lora" / "summary.json").read_text())
    assert full["trainable_pct"] > 95
    assert full["before"] == lora["before"]  # computed once, by the first run
    assert "Error rates before training: reusing" in (runs["tmp"] / "full" / "log.txt").read_text()
    cache = json.loads((runs["tmp"] / "before.json").read_text())
    assert cache["results"] == lora["before"]


def _load(runs, overrides: dict):
    with open(ROOT / "hparams" / "lora_whisper.yaml") as handle:
        return load_hyperpyyaml(handle, overrides)


def test_saved_adapter_reloads_and_reproduces_the_trained_outputs(runs):
    """A fresh model + adapter.safetensors == the Checkpointer's best model, and != the base."""
    tmp = runs["tmp"]
    overrides = {
        "whisper_source": runs["source"],
        "hub_cache": str(tmp / "hub"),
        "rank": 4,
        "train_window_s": 2.0,
        "eval_window_s": 2.0,
        "output_folder": str(tmp / "reload"),
    }
    torch.manual_seed(0)
    wav = torch.randn(2, 16000) * 0.1
    hparams = _load(runs, overrides)
    whisper, adapted = hparams["whisper"], hparams["adapted_model"]
    adapted.insert_adapters()
    tokens = torch.tensor([[whisper.bos, whisper.no_timestamps]] * 2)
    whisper.eval()
    with torch.no_grad():
        base_logits = whisper(wav, tokens)[1]
    adapted.load_adapter(str(tmp / "lora" / "adapter.safetensors"))
    with torch.no_grad():
        reloaded = whisper(wav, tokens)[1]

    # The same model restored through the recipe's Checkpointer (adapter-only recoverable).
    second = _load(runs, overrides)
    second["adapted_model"].insert_adapters()
    checkpointer = second["checkpointer"]
    checkpointer.checkpoints_dir = tmp / "lora" / "save"
    assert checkpointer.recover_if_possible(min_key="WER") is not None
    second["whisper"].eval()
    with torch.no_grad():
        recovered = second["whisper"](wav, tokens)[1]
    assert torch.equal(reloaded, recovered)
    assert (reloaded - base_logits).abs().max() > 1e-4  # training changed the outputs


def test_missing_source_folder_fails_clearly(tmp_path):
    command = [
        sys.executable,
        str(TRAIN),
        "hparams/lora_whisper.yaml",
        f"--whisper_source={tmp_path / 'nowhere'}",
        f"--output_folder={tmp_path / 'out'}",
        f"--data_folder={tmp_path / 'corpus'}",
        *TINY,
    ]
    output = run_failing(*command[1:])
    assert f"Whisper source folder {tmp_path / 'nowhere'} does not exist" in output
    assert not (tmp_path / "corpus").exists()  # refused before any work


@pytest.mark.parametrize("method", ["poollora", "dora", "houlsby", "peft"])
def test_every_adapter_yaml_adapts_whisper(runs, method):
    """Each adapter of the library trains Whisper through its YAML and saves only itself."""
    out = runs["tmp"] / method
    run(str(TRAIN), f"hparams/{method}_whisper.yaml", *runs["common"], f"--output_folder={out}")
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method
    assert 0 < summary["trainable_pct"] < 20
    assert set(summary["after"]) == {"target", "source"}
    size = (out / "adapter.safetensors").stat().st_size
    assert size == summary["adapter_file_bytes"] > 0


def test_lora_learns_a_set_it_can_overfit(runs, tmp_path):
    """Trained and tested on the same 8 utterances: the loss falls and the WER too."""
    corpus = runs["tmp"] / "corpus"
    common = [
        a
        for a in runs["common"]
        if not a.startswith(("--lr=", "--test_utterances=", "--before_cache="))
    ]
    out = tmp_path / "overfit"
    run(
        str(TRAIN), "hparams/lora_whisper.yaml", *common, "--lr=0.02", "--number_of_epochs=10",
        "--test_utterances=8", f"--test_sets={{target: {corpus / 'noisy_train.csv'}}}",
        f"--before_cache={tmp_path / 'before.json'}", f"--output_folder={out}",
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    losses = epoch_losses(out / "train_log.txt")
    assert len(losses) == 10 and losses[-1] < losses[0] - 0.2
    assert summary["after"]["target"]["WER"] < summary["before"]["target"]["WER"] - 20


def test_kill_9_mid_training_then_rerun_ends_with_the_same_figures(runs, tmp_path):
    args = [str(TRAIN), "hparams/lora_whisper.yaml", *runs["common"], "--number_of_epochs=2"]
    run(*args, f"--output_folder={tmp_path / 'reference'}")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "SPEECH_ADAPTERS_FAULT": "train_batch:3"}
    killed = subprocess.run(
        [sys.executable, *args, f"--output_folder={tmp_path / 'killed'}"],
        env=env, cwd=ROOT, capture_output=True, timeout=600, check=False,
    )  # fmt: skip
    assert killed.returncode == -9
    run(*args, f"--output_folder={tmp_path / 'killed'}")
    figures = [
        json.loads((tmp_path / n / "summary.json").read_text()) for n in ("reference", "killed")
    ]
    for summary in figures:
        summary.pop("train_time_s")
    assert figures[0] == figures[1]
    adapters = [
        (tmp_path / n / "adapter.safetensors").read_bytes() for n in ("reference", "killed")
    ]
    assert adapters[0] == adapters[1]

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
from recipe_runs import (
    epoch_losses,
    killed_at,
    run,
    run_failing,
    run_two_processes,
    written_once,
)

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
#: The fixture's LoRA run gives its encoder twice the rank of the rest: every use of that
#: run (reload, inference folder, transcribe, export) rebuilds it from what it saved.
BY_LAYER = {"*.encoder.*": {"rank": 8}}  # not the decoder's encoder_attn


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
        f"--adapter_kwargs_by_layer={json.dumps(BY_LAYER)}",
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
    with safe_open(str(out / "adapter.safetensors"), "pt") as handle:
        ranks = {k: handle.get_slice(k).get_shape()[0] for k in keys if k.endswith("lora_A")}
    encoder = {k: r for k, r in ranks.items() if ".encoder." in k}
    assert encoder and set(encoder.values()) == {8}  # adapter_kwargs_by_layer
    assert set(ranks.values()) - set(encoder.values()) == {4} and len(ranks) > len(encoder)
    assert (
        summary["adapter_file_bytes"]
        < 0.2 * (Path(runs["source"]) / "model.safetensors").stat().st_size
    )


def test_full_run_trains_everything_and_shares_the_before_figures(runs):
    full = json.loads((runs["tmp"] / "full" / "summary.json").read_text())
    lora = json.loads((runs["tmp"] / "lora" / "summary.json").read_text())
    assert full["trainable_pct"] > 95
    assert full["before"] == lora["before"]  # computed once, by the first run
    assert "Figures before training: reusing" in (runs["tmp"] / "full" / "log.txt").read_text()
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
        "adapter_kwargs_by_layer": BY_LAYER,
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


def test_loraplus_ratio_reaches_the_optimizer_and_is_checkpointed(runs, tmp_path):
    """--loraplus_lr_ratio 16: B's group trains at 16x the rate of A's, through the Noam
    schedule, and the checkpointed optimizer says so (a resume keeps it)."""
    out = tmp_path / "loraplus"
    run(str(TRAIN), "hparams/lora_whisper.yaml", *runs["common"], "--loraplus_lr_ratio=16",
        f"--output_folder={out}")  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["loraplus_lr_ratio"] == 16
    (checkpoint,) = (out / "save").glob("CKPT*/optimizer.ckpt")
    groups = torch.load(checkpoint, weights_only=True)["param_groups"]
    assert [g.get("lr_scale") for g in groups] == [None, 16.0]
    assert groups[1]["lr"] == pytest.approx(16 * groups[0]["lr"]) and groups[0]["lr"] > 0
    # every adapted layer's B is in the fast group, every A in the other
    layers = int(summary["adapters"].split(" on ")[1].split()[0])
    assert len(groups[1]["params"]) == len(groups[0]["params"]) == layers


def test_eva_init_sets_a_from_the_training_inputs_and_survives_a_kill(runs, tmp_path):
    """--lora_init=eva with LoRA-FA: every adapted layer's A is set from the training
    batches (orthogonal rows, the inputs' top directions) and, frozen, is what the
    adapter file holds; killed in its second epoch, the rerun resumes from the checkpoint
    and ends with the same summary (the data_init report included) and adapter."""
    from safetensors.torch import load_file

    args = [str(TRAIN), "hparams/lora_whisper.yaml", *runs["common"], "--lora_init=eva",
            "--freeze_a=True", "--data_init_batches=1", "--number_of_epochs=2"]  # fmt: skip
    run(*args, f"--output_folder={tmp_path / 'reference'}")
    summary = json.loads((tmp_path / "reference" / "summary.json").read_text())
    layers = int(summary["adapters"].split(" on ")[1].split()[0])
    report = summary["data_init"]
    assert report["layers"] == layers and report["batches"] == 1
    assert 0 < report["energy_share_min"] <= report["energy_share_mean"] <= 1
    saved = load_file(tmp_path / "reference" / "adapter.safetensors")
    a_matrices = [t for k, t in saved.items() if k.endswith("lora_A")]
    assert len(a_matrices) == layers
    for a in a_matrices:  # frozen at the data's directions: orthogonal rows of equal norm
        gram = a @ a.t()
        torch.testing.assert_close(gram, gram[0, 0] * torch.eye(a.shape[0]), atol=1e-6, rtol=1e-4)

    assert killed_at("train_batch:3", *args, f"--output_folder={tmp_path / 'killed'}") == -9
    run(*args, f"--output_folder={tmp_path / 'killed'}")
    resumed = json.loads((tmp_path / "killed" / "summary.json").read_text())
    for figures in (summary, resumed):
        figures.pop("train_time_s")
    assert resumed == summary
    assert (tmp_path / "killed" / "adapter.safetensors").read_bytes() == (
        tmp_path / "reference" / "adapter.safetensors"
    ).read_bytes()


def test_pissa_run_keeps_the_base_and_exports_what_it_computes(runs, tmp_path):
    """--lora_init=pissa: the adapter file holds B0, A0 beside B, A and the same base
    fingerprint as a plain LoRA run's (W itself never changes); the merged export
    computes what the inference folder computes."""
    from safetensors import safe_open
    from speechbrain.inference.ASR import WhisperASR

    from adapters import read_adapter_metadata
    from recipes.audio import load_audio
    from recipes.export import export

    out = tmp_path / "pissa"
    run(str(TRAIN), "hparams/lora_whisper.yaml", *runs["common"], "--lora_init=pissa",
        f"--output_folder={out}")  # fmt: skip
    with safe_open(str(out / "adapter.safetensors"), "pt") as handle:
        keys = set(handle.keys())
    starts = {k for k in keys if k.endswith(("lora_A0", "lora_B0"))}
    assert starts and len(starts) == len(keys) / 2
    plain = read_adapter_metadata(runs["tmp"] / "lora" / "adapter.safetensors")
    assert read_adapter_metadata(out / "adapter.safetensors")["base"] == plain["base"]
    wav = load_audio(_test_wavs(runs, 1)[0], 16000)[None]
    encoded = []
    for folder in (out / "inference", export(out, "speechbrain", tmp_path / "merged")):
        with torch.no_grad():
            asr = WhisperASR.from_hparams(source=str(folder))
            encoded.append(asr.encode_batch(wav, torch.ones(1)))
    torch.testing.assert_close(encoded[0], encoded[1], atol=1e-4, rtol=1e-4)


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
        "--test_utterances=8", f"--test_sets={{target: {corpus / 'noisy_train.csv'}, source: null}}",
        f"--before_cache={tmp_path / 'before.json'}", f"--output_folder={out}",
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    losses = epoch_losses(out / "train_log.txt")
    assert len(losses) == 10 and losses[-1] < losses[0] - 0.2
    assert set(summary["after"]) == {"target"}  # the source set was left out (null)
    assert summary["after"]["target"]["WER"] < summary["before"]["target"]["WER"] - 20


def test_kill_9_mid_training_then_rerun_ends_with_the_same_figures(runs, tmp_path):
    args = [str(TRAIN), "hparams/lora_whisper.yaml", *runs["common"], "--number_of_epochs=2"]
    run(*args, f"--output_folder={tmp_path / 'reference'}")
    assert killed_at("train_batch:3", *args, f"--output_folder={tmp_path / 'killed'}") == -9
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


# ----------------------------------------------------------------- using what a run trained
FROM_HPARAMS = """
import json, sys, torch
from speechbrain.inference.ASR import WhisperASR
from recipes.audio import load_audio
asr = WhisperASR.from_hparams(source=sys.argv[1])
wav = load_audio(sys.argv[2], 16000)[None]
with torch.no_grad():
    enc = asr.encode_batch(wav, torch.ones(1))
    text = asr.transcribe_batch(wav, torch.ones(1))[0][0]
    file_text = asr.transcribe_file(sys.argv[2])[0].words
    asr.mods.whisper.disable_adapters() if hasattr(asr.mods.whisper, "disable_adapters") else None
    base = asr.encode_batch(wav, torch.ones(1))
print("RESULT", json.dumps({"text": text, "file_text": file_text, "diff": float((enc - base).abs().max())}))
"""


def _test_wavs(runs, count: int) -> list[str]:
    corpus = runs["tmp"] / "corpus"
    lines = (corpus / "noisy_test.csv").read_text().splitlines()[1 : count + 1]
    return [line.split(",")[2].replace("$data_root", str(corpus)) for line in lines]


def _transcribe(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "recipes.transcribe", *args], cwd=cwd, capture_output=True,
        text=True, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert (result.returncode == 0) == ok, result.stdout + result.stderr[-3000:]
    return result


def _texts(result: subprocess.CompletedProcess) -> dict[str, str]:
    return dict(line.split("\t", 1) for line in result.stdout.splitlines() if "\t" in line)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_inference_folder_works_from_anywhere_after_a_move(runs, tmp_path, method):
    """WhisperASR.from_hparams on <run>/inference, copied elsewhere, run from another
    directory: it transcribes with the trained weights (the adapter switches off)."""
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(runs["tmp"] / method, moved)
    wav = _test_wavs(runs, 1)[0]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = run("-c", FROM_HPARAMS, str(moved / "inference"), wav, cwd=elsewhere)
    line = next(x for x in out.splitlines() if x.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    assert result["text"] == result["file_text"]
    assert result["diff"] > 1e-4 if method == "lora" else result["diff"] == 0.0
    assert list(elsewhere.iterdir()) == []  # nothing written where it ran
    if method == "lora":
        command = _transcribe(str(moved), wav, cwd=elsewhere)
        assert list(_texts(command).values()) == [result["text"]]


def test_transcribe_mixed_adapters_and_errors_per_file(runs, tmp_path):
    """A manifest choosing an adapter per file runs as mixed batches, each transcript
    equal to the one-adapter run's; an adapter file with its base folder transcribes as
    the run folder does; unreadable audio, an unknown adapter name and an adapter of
    another base get one line each while the other files are transcribed."""
    from adapters import AdaptedModel, LoRA
    from recipes.whisper.model import WindowedWhisper

    lora = runs["tmp"] / "lora"
    wavs = _test_wavs(runs, 4)
    stems = [Path(w).stem for w in wavs]
    adapted = _texts(_transcribe(str(lora), *wavs, cwd=tmp_path))
    base = _texts(_transcribe(str(lora), *wavs, "--adapter", "none", cwd=tmp_path))
    assert list(adapted) == list(base) == stems

    (tmp_path / "broken.wav").write_text("not audio")
    rows = [("a", wavs[0], "default"), ("b", wavs[1], "none"), ("c", wavs[2], "copy"),
            ("d", wavs[3], "none"), ("e", str(tmp_path / "broken.wav"), ""),
            ("f", wavs[0], "telephone")]  # fmt: skip
    manifest = tmp_path / "calls.csv"
    manifest.write_text("ID,wav,adapter\n" + "".join(f"{i},{w},{a}\n" for i, w, a in rows))
    mixed = _transcribe(
        str(lora), str(manifest), "--adapter", f"copy={lora / 'adapter.safetensors'}",
        "--output", str(tmp_path / "out.jsonl"), cwd=tmp_path, ok=False,
    )  # fmt: skip
    texts = _texts(mixed)
    assert set(texts) == {"a", "b", "c", "d"}
    assert texts["a"] == adapted[stems[0]] and texts["c"] == adapted[stems[2]]
    assert texts["b"] == base[stems[1]] and texts["d"] == base[stems[3]]
    assert "error: e (" in mixed.stderr and "unreadable audio" in mixed.stderr
    assert "error: f (" in mixed.stderr and "'telephone' is not loaded" in mixed.stderr
    written = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["ID"] for r in written] == list("abcdef") and written[4]["error"]

    other = WindowedWhisper(save_random_whisper(tmp_path / "other", seed=7), str(tmp_path / "c"))
    AdaptedModel(other, LoRA, all_linear=True, adapter_kwargs={"rank": 4}).save_adapter(
        str(tmp_path / "other.safetensors")
    )
    own = _transcribe(
        str(lora / "adapter.safetensors"), wavs[0], "--base", runs["source"], "--window_s", "2",
        "--adapter", f"x={tmp_path / 'other.safetensors'}", cwd=tmp_path, ok=False,
    )  # fmt: skip
    assert "error: --adapter x=" in own.stderr and "other weights" in own.stderr
    assert _texts(own) == {stems[0]: adapted[stems[0]]}  # still transcribed, with the adapter


def test_export_command_writes_each_format_of_a_whisper_run(runs, tmp_path):
    """--to speechbrain: a merged folder with the adapted outputs and no adapters;
    --to transformers, --to peft and --to ctranslate2: their files; a full run has no PEFT
    adapter."""
    from speechbrain.inference.ASR import WhisperASR

    from adapters import AdaptedModel
    from recipes.audio import load_audio
    from recipes.export import export

    lora = runs["tmp"] / "lora"
    wav = load_audio(_test_wavs(runs, 1)[0], 16000)[None]
    encoded = {}
    for name, folder in (
        ("adapted", lora / "inference"),
        ("merged", export(lora, "speechbrain", tmp_path / "sb")),
    ):
        asr = WhisperASR.from_hparams(source=str(folder))
        with torch.no_grad():
            encoded[name] = asr.encode_batch(wav, torch.ones(1))
    assert not any(isinstance(m, AdaptedModel) for m in asr.mods.modules())
    assert torch.allclose(encoded["merged"], encoded["adapted"], atol=1e-4)
    hf = export(lora, "transformers", tmp_path / "hf")
    assert {"config.json", "generation_config.json", "tokenizer.json"} <= {
        p.name for p in hf.iterdir()
    }
    peft = export(lora, "peft", tmp_path / "peft")
    config = json.loads((peft / "adapter_config.json").read_text())
    assert config["r"] == 4 and set(config["rank_pattern"].values()) == {8}
    assert all("encoder" in pattern for pattern in config["rank_pattern"])
    ct2 = export(lora, "ctranslate2", tmp_path / "ct2", quantization="int8")
    assert {"model.bin", "tokenizer.json", "preprocessor_config.json"} <= {
        p.name for p in ct2.iterdir()
    }
    with pytest.raises(ValueError, match="full fine-tuning run"):
        export(runs["tmp"] / "full", "peft", tmp_path / "no")


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_export_never_destroys_a_folder(runs, tmp_path, capsys):
    """A folder with a user's files, the run folder itself, or a folder inside it: refused
    with a clear error (exit 2) and left as it was; ``--overwrite`` replaces a user's folder;
    an earlier export is replaced without it."""
    from recipes.export import main

    lora = runs["tmp"] / "lora"
    mine = tmp_path / "mine"
    (mine / "other_model").mkdir(parents=True)
    (mine / "notes.txt").write_text("my notes")
    (mine / "other_model" / "model.ckpt").write_bytes(b"another model")
    run_before, mine_before = _files(lora), _files(mine)
    for to in ("speechbrain", "transformers", "peft"):
        assert main([str(lora), "--to", to, str(mine)]) == 2
        assert "--overwrite" in capsys.readouterr().err
    for target in (lora, lora / "inference", lora / "exported", runs["source"]):
        assert main([str(lora), "--to", "speechbrain", str(target), "--overwrite"]) == 2
        assert "the folder it is made from" in capsys.readouterr().err
    assert main([str(lora / "inference"), "--to", "speechbrain", str(lora)]) == 2
    assert _files(lora) == run_before and _files(mine) == mine_before

    assert main([str(lora), "--to", "speechbrain", str(mine), "--overwrite"]) == 0
    assert not (mine / "notes.txt").exists() and (mine / "model.ckpt").is_file()
    assert main([str(lora), "--to", "speechbrain", str(mine)]) == 0  # its own export: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary left


def test_export_of_an_unfinished_run_says_to_finish_it(runs, tmp_path, capsys):
    from recipes.export import main

    unfinished = tmp_path / "run"
    (unfinished / "save").mkdir(parents=True)
    assert main([str(unfinished), "--to", "speechbrain", str(tmp_path / "out")]) == 2
    assert "has not finished" in capsys.readouterr().err


def test_two_process_torchrun(runs, tmp_path):
    """Two gloo processes: one summary, one adapter, one inference folder, from rank 0;
    with A set from the data (init: eva, broadcast from rank 0) and frozen."""
    out = tmp_path / "ddp"
    run_two_processes(
        str(TRAIN), "hparams/lora_whisper.yaml", *runs["common"], "--rank=4",
        "--number_of_epochs=1", "--lora_init=eva", "--freeze_a=True", f"--output_folder={out}",
    )  # fmt: skip
    summary = written_once(out)
    assert summary["method"] == "lora" and "after" in summary
    assert summary["data_init"]["batches"] >= 1

"""End to end: tiny corpus -> pretrain -> LoRA / full fine-tuning, also under torchrun."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from conftest import ASR_TINY
from recipe_runs import epoch_losses, run
from recipe_runs import run_failing as run_failing_command
from safetensors import safe_open

from adapters import read_adapter_metadata

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "recipes" / "asr" / "train.py"
# A small model and one epoch on the tiny corpus: seconds, not minutes.
TINY = [*ASR_TINY, "--number_of_epochs=1"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def runs(asr_base, tmp_path_factory):
    """The session's pretrained base, adapted with LoRA (rank 4) and fine-tuned in full."""
    tmp = tmp_path_factory.mktemp("asr")
    base = asr_base["base"]
    base_hash = sha256(base)
    common = [f"--data_folder={asr_base['corpus']}", *TINY, f"--base_checkpoint={base}"]
    run(str(TRAIN), "hparams/lora_asr.yaml", *common, "--rank=4", f"--output_folder={tmp / 'lora'}")
    run(str(TRAIN), "hparams/full_asr.yaml", *common, f"--output_folder={tmp / 'full'}")
    return {
        "tmp": tmp,
        "base": base,
        "base_hash": base_hash,
        "corpus": asr_base["corpus"],
        "pre": asr_base["pre"],
    }


def test_pretraining_exports_a_base_and_a_summary(runs):
    summary = json.loads((runs["pre"] / "summary.json").read_text())
    assert summary["method"] == "pretrain" and summary["trainable_pct"] == 100.0
    losses = epoch_losses(runs["pre"] / "train_log.txt")
    assert len(losses) == 30 and losses[-1] < 0.6 * losses[0]  # it learns
    assert 0.0 <= summary["after"]["source"]["CER"] <= 100.0
    state = torch.load(runs["base"], weights_only=True)
    assert any(key.startswith("encoder.") for key in state)


def test_lora_summary_has_before_and_after_on_target_and_source(runs):
    summary = json.loads((runs["tmp"] / "lora" / "summary.json").read_text())
    assert summary["method"] == "lora"
    assert 0 < summary["trainable_pct"] < 15
    for when in ("before", "after"):
        for domain in ("target", "source"):
            assert set(summary[when][domain]) == {"WER", "CER", "n"}
    # the tiny corpus has 6 target and 8 source test utterances
    assert summary["after"]["target"]["n"] == 6 and summary["after"]["source"]["n"] == 8
    assert summary["train_time_s"] > 0
    # per-utterance reports of both test sets, with their own utterances
    target = (runs["tmp"] / "lora" / "details" / "target_after.txt").read_text()
    source = (runs["tmp"] / "lora" / "details" / "source_after.txt").read_text()
    assert "noisy-test-" in target and "source-test-" in source
    # before and after kept apart: the evaluation before training has its own file
    before = (runs["tmp"] / "lora" / "details" / "target_before.txt").read_text()
    assert "noisy-test-" in before and before != target


def test_lora_checkpoint_holds_only_what_was_trained(runs):
    lora = runs["tmp"] / "lora"
    adapter = lora / "adapter.safetensors"
    with safe_open(str(adapter), framework="pt") as handle:
        keys = set(handle.keys())
        shapes = {key: handle.get_slice(key).get_shape() for key in keys}
    assert keys and all(".lora_" in k or k.startswith("head.") for k in keys), sorted(keys)
    assert {shape[0] for key, shape in shapes.items() if key.endswith("lora_A")} == {4}
    assert read_adapter_metadata(adapter)["adapter_kwargs"]["rank"] == 4
    assert adapter.stat().st_size < 0.15 * runs["base"].stat().st_size
    # the Checkpointer's recoverable is the same adapter-only file
    (ckpt,) = lora.glob("save/CKPT+*/model.ckpt")
    assert ckpt.stat().st_size == adapter.stat().st_size
    # the pretrained base on disk is untouched
    assert sha256(runs["base"]) == runs["base_hash"]


def test_full_finetuning_trains_everything(runs):
    summary = json.loads((runs["tmp"] / "full" / "summary.json").read_text())
    lora = json.loads((runs["tmp"] / "lora" / "summary.json").read_text())
    assert summary["trainable_pct"] == 100.0
    assert summary["before"] == lora["before"]  # same base, same test sets


def run_failing(*args: str) -> str:
    """Run the recipe with arguments that must make it fail; return what it printed."""
    return run_failing_command(str(TRAIN), *args)


def test_missing_base_checkpoint_says_what_to_run(runs, tmp_path):
    out = run_failing(
        "hparams/lora_asr.yaml", *TINY, f"--data_folder={runs['corpus']}",
        f"--output_folder={tmp_path / 'x'}", f"--base_checkpoint={tmp_path / 'nope.ckpt'}",
    )  # fmt: skip
    assert "hparams/pretrain_asr.yaml" in out


def test_missing_manifest_is_reported(runs, tmp_path):
    out = run_failing(
        "hparams/lora_asr.yaml", *TINY, "--prepare_corpus=False", f"--data_folder={tmp_path}",
        f"--output_folder={tmp_path / 'x'}", f"--base_checkpoint={runs['base']}",
    )  # fmt: skip
    assert "noisy_train.csv does not exist" in out


def test_two_process_torchrun(runs):
    torchrun = Path(sys.executable).with_name("torchrun")
    out = runs["tmp"] / "ddp"
    run(
        "--standalone", "--nproc_per_node=2", str(TRAIN), "hparams/lora_asr.yaml",
        f"--data_folder={runs['corpus']}", *TINY, f"--base_checkpoint={runs['base']}",
        "--distributed_backend=gloo", f"--output_folder={out}",
        launcher=(str(torchrun),),
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == "lora" and "after" in summary
    assert (out / "adapter.safetensors").is_file()


ADAPTER_YAMLS = {
    "poollora": ("PoolLoRA", ".lora_"),
    "dora": ("DoRA", ".magnitude"),
    "houlsby": ("Houlsby", ".up."),
    "peft": ("peft_adapter", ".lora_A.default"),
    "lora_attention": ("LoRA", "mha_layer.param_adapters.in_proj_weight"),
}


@pytest.mark.parametrize("method", ADAPTER_YAMLS)
def test_every_adapter_recipe_trains_and_saves_its_adapter(runs, method):
    if method == "peft":
        pytest.importorskip("peft")
    out = runs["tmp"] / method
    run(
        str(TRAIN), f"hparams/{method}_asr.yaml", f"--data_folder={runs['corpus']}",
        *TINY, "--evaluate_before=False", f"--base_checkpoint={runs['base']}",
        f"--output_folder={out}",
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["method"] == method and 0 < summary["trainable_pct"] < 20
    adapter_class, key_part = ADAPTER_YAMLS[method]
    path = out / "adapter.safetensors"
    assert read_adapter_metadata(path)["adapter_class"] == adapter_class
    with safe_open(str(path), framework="pt") as handle:
        keys = list(handle.keys())
    assert any(key_part in k for k in keys), keys[:5]
    assert not any(".base_layer." in k for k in keys)
    # Its inference folder rebuilds the same adapters and loads exactly these tensors.
    from speechbrain.inference.ASR import EncoderASR

    from recipes.transcribe import adapted_model_of

    asr = EncoderASR.from_hparams(source=str(out / "inference"))
    loaded = adapted_model_of(asr).adapter_state_dict()
    with safe_open(str(path), framework="pt") as handle:
        assert sorted(loaded) == sorted(keys)
        assert all(torch.equal(loaded[k], handle.get_tensor(k)) for k in keys)


def test_bring_your_own_manifests(runs, tmp_path):
    """Any manifest with ID, duration, wav, wrd works; wav may be an absolute path."""
    corpus = runs["corpus"]
    for split in ("train", "valid", "test"):
        text = (corpus / f"voices_{split}.csv").read_text().replace("$data_root", str(corpus))
        (tmp_path / f"mine_{split}.csv").write_text(text)
    out = tmp_path / "out"
    run(
        str(TRAIN), "hparams/lora_asr.yaml", *TINY, "--prepare_corpus=False",
        f"--data_folder={tmp_path / 'unused'}", f"--train_csv={tmp_path / 'mine_train.csv'}",
        f"--valid_csv={tmp_path / 'mine_valid.csv'}",
        f"--test_sets={{target: {tmp_path / 'mine_test.csv'}, source: {tmp_path / 'mine_valid.csv'}}}",
        f"--base_checkpoint={runs['base']}", f"--output_folder={out}",
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["after"]) == {"target", "source"}
    assert "voices-test-" in (out / "details" / "target_after.txt").read_text()
    assert "voices-valid-" in (out / "details" / "source_after.txt").read_text()


def test_only_adapter_parameters_changed(runs):
    """The trained run's frozen weights equal the base checkpoint, bit for bit.

    The adapter file fingerprints the frozen weights it was trained on; loading it onto the
    base checkpoint succeeds only if those weights are exactly the base's.
    """
    from hyperpyyaml import load_hyperpyyaml

    overrides = "\n".join(arg[2:].replace("=", ": ", 1) for arg in TINY)
    with open(ROOT / "hparams" / "lora_asr.yaml") as handle:
        hparams = load_hyperpyyaml(handle, f"{overrides}\nrank: 4\nprepare_corpus: False")
    base = torch.load(runs["base"], weights_only=True)
    hparams["model"].load_state_dict(base)
    buffers = {name for name, _ in hparams["model"].named_buffers()}
    adapted = hparams["adapted_model"]
    adapted.insert_adapters()
    adapted.load_adapter(str(runs["tmp"] / "lora" / "adapter.safetensors"))
    frozen = adapted.base_state()
    assert frozen and all(torch.equal(frozen[k], base[k]) for k in frozen)
    # every base parameter is compared, except the trained head
    assert set(base) - set(frozen) - buffers == {k for k in base if k.startswith("head.")}


def test_inference_folders_and_the_merged_export_agree(runs, tmp_path):
    """EncoderASR.from_hparams on each run's inference folder: the LoRA model with its
    adapter switched off is the pretrained base; the merged SpeechBrain export (no
    adapters) gives the adapted model's outputs; the full run's folder loads too."""
    from speechbrain.inference.ASR import EncoderASR

    from adapters import AdaptedModel
    from recipes.audio import load_audio
    from recipes.export import export

    corpus = runs["corpus"]
    line = (corpus / "noisy_test.csv").read_text().splitlines()[1]
    wav = load_audio(line.split(",")[2].replace("$data_root", str(corpus)), 16000)[None]
    ones = torch.ones(1)

    def encode(folder):
        asr = EncoderASR.from_hparams(source=str(folder))
        with torch.no_grad():
            return asr, asr.encode_batch(wav, ones)

    lora_asr, adapted = encode(runs["tmp"] / "lora" / "inference")
    merged_asr, merged = encode(export(runs["tmp"] / "lora", "speechbrain", tmp_path / "sb"))
    _, base = encode(runs["pre"] / "inference")
    _, full = encode(runs["tmp"] / "full" / "inference")
    assert not any(isinstance(m, AdaptedModel) for m in merged_asr.mods.modules())
    assert torch.allclose(merged, adapted, atol=1e-4)
    assert (adapted - base).abs().max() > 1e-3 and (full - base).abs().max() > 1e-3
    lora_asr.mods.encoder.model.disable_adapters()
    with torch.no_grad():
        assert torch.allclose(lora_asr.encode_batch(wav, ones), base, atol=1e-5)
    text = lora_asr.transcribe_file(line.split(",")[2].replace("$data_root", str(corpus)))
    assert isinstance(text, str)

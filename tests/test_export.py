"""Exports of a Whisper run: merged transformers folders and PEFT LoRA folders, both ways."""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

from adapters import AdaptedModel, DoRA, Houlsby, LoRA, PoolLoRA, peft_adapter
from adapters.peft_format import PeftFormatError, load_peft, save_peft
from recipes.io import TargetError
from recipes.whisper import pretrained
from recipes.whisper.export import ExportError, export_transformers
from recipes.whisper.generation import greedy_suppress_tokens, whisper_generation_config
from recipes.whisper.model import WindowedWhisper
from recipes.whisper.random_init import save_random_whisper

TEXT = "the quick brown fox jumps over the lazy dog"
# 30 decoding steps on a 30 s window (max_decode_ratio x 1500 frames): a random model
# never ends on its own, and the pipeline spends most of its time per step.
STEPS, RATIO = 30, 0.02


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: spinning OpenMP threads slow everything down on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random Whisper folder, SpeechBrain's Whisper on it, and a spoken utterance."""
    from recipes.corpus.tts import ESpeak

    tmp = tmp_path_factory.mktemp("export")
    folder = save_random_whisper(tmp / "tiny")
    whisper = WindowedWhisper(folder, str(tmp / "hub"), train_window_s=2.0).eval()
    wav = torch.as_tensor(ESpeak().synthesize(TEXT), dtype=torch.float32).unsqueeze(0)
    return {"tmp": tmp, "folder": folder, "whisper": whisper, "wav": wav}


def greedy(whisper, wav: torch.Tensor, ratio: float = RATIO) -> list[int]:
    """Our transcript: the recipe's greedy searcher on the 30 s evaluation window."""
    from speechbrain.decoders.seq2seq import S2SWhisperGreedySearcher

    searcher = S2SWhisperGreedySearcher(whisper, min_decode_ratio=0.0, max_decode_ratio=ratio)
    whisper.eval()
    with torch.no_grad():
        enc, _, _ = whisper(wav, torch.tensor([[whisper.bos]]))
        hyps, _, _, _ = searcher(enc, torch.ones(1))
    return hyps[0]


def transcribe(folder, wav: torch.Tensor) -> str:
    from transformers import pipeline

    asr = pipeline("automatic-speech-recognition", model=str(folder))
    return asr({"raw": wav[0].numpy(), "sampling_rate": 16000})["text"]


def randomize(adapted: AdaptedModel, seed: int, std: float = 0.5) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for lora in adapted.adapters().values():
            lora.lora_B.normal_(0.0, std, generator=generator)


def features(folder, wav: torch.Tensor) -> torch.Tensor:
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor.from_pretrained(folder)
    return extractor(wav[0].numpy(), sampling_rate=16000, return_tensors="pt").input_features


def our_logits(whisper, wav: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    whisper.eval()
    with torch.no_grad():
        return whisper(wav, tokens)[1]


def prompt(whisper) -> torch.Tensor:
    """A teacher-forced decoder input: the prompt and a few text tokens."""
    text = whisper.tokenizer.encode(" " + TEXT, add_special_tokens=False)
    return torch.tensor([[whisper.bos, whisper.no_timestamps, *text]])


# ------------------------------------------------------------------ transformers folder
def test_exported_folder_transcribes_in_the_pipeline_as_our_greedy_search(tiny):
    from transformers import WhisperForConditionalGeneration

    whisper = copy.deepcopy(tiny["whisper"])
    torch.manual_seed(0)
    adapted = AdaptedModel(whisper, LoRA, all_linear=True, adapter_kwargs={"rank": 4})
    base_ids = greedy(whisper, tiny["wav"])  # lora_B is zero: the base model
    base = export_transformers(whisper, adapted, tiny["folder"], tiny["tmp"] / "base", STEPS)
    randomize(adapted, seed=1)
    ours = greedy(whisper, tiny["wav"])
    out = export_transformers(whisper, adapted, tiny["folder"], tiny["tmp"] / "merged", STEPS)

    decode = whisper.tokenizer.decode
    texts = {
        name: transcribe(folder, tiny["wav"]) for name, folder in (("base", base), ("merged", out))
    }
    assert texts["base"] == decode(base_ids, skip_special_tokens=True)
    assert texts["merged"] == decode(ours, skip_special_tokens=True)
    assert texts["merged"] != texts["base"] and ours != base_ids
    assert "<|" not in texts["base"] + texts["merged"]  # the control tokens are skipped

    model = WhisperForConditionalGeneration.from_pretrained(out).eval()
    with torch.no_grad():
        generated = model.generate(features(out, tiny["wav"]))
    assert generated[0].tolist() == ours  # token for token
    assert model.proj_out.weight.data_ptr() == model.model.decoder.embed_tokens.weight.data_ptr()
    assert not any("lora" in key for key in model.state_dict())
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["num_beams"] == 1 and gen["max_new_tokens"] == STEPS
    assert gen["no_timestamps_token_id"] == whisper.no_timestamps
    assert gen["decoder_start_token_id"] == whisper.bos and gen["is_multilingual"] is False
    assert gen["begin_suppress_tokens"] == [220, whisper.eos]
    from speechbrain.decoders.seq2seq import S2SWhisperGreedySearcher

    searcher = S2SWhisperGreedySearcher(whisper, min_decode_ratio=0.0, max_decode_ratio=RATIO)
    assert gen["suppress_tokens"] == list(searcher.get_tokens_to_suppress)
    assert greedy_suppress_tokens(whisper.tokenizer) == gen["suppress_tokens"]


def test_generation_config_of_a_multilingual_model_sets_language_and_task(tiny):
    from transformers import WhisperConfig

    tokenizer = tiny["whisper"].tokenizer
    gen = whisper_generation_config(tokenizer, WhisperConfig(vocab_size=51865), language="en")
    assert gen.is_multilingual is True and (gen.language, gen.task) == ("en", "transcribe")
    assert gen.lang_to_id["<|en|>"] == tokenizer.convert_tokens_to_ids("<|en|>")
    assert set(gen.task_to_id) == {"transcribe", "translate"}


def test_export_refuses_a_whisper_with_adapters_but_no_adapted_model(tiny, tmp_path):
    whisper = copy.deepcopy(tiny["whisper"])
    adapted = AdaptedModel(whisper, LoRA, target_layers=["*.fc1"], adapter_kwargs={"rank": 2})
    with pytest.raises(ExportError, match="pass the AdaptedModel"):
        export_transformers(whisper, None, tiny["folder"], tmp_path / "out")
    with pytest.raises(ExportError, match="does not wrap this whisper"):
        export_transformers(tiny["whisper"], adapted, tiny["folder"], tmp_path / "out")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(TargetError, match="overwrite=True"):
        export_transformers(whisper, adapted, tiny["folder"], tmp_path / "full")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["x"]  # nothing lost
    with pytest.raises(TargetError, match="made from"):  # into the base model's folder
        export_transformers(whisper, adapted, tiny["folder"], Path(tiny["folder"]) / "merged")


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    return pretrained.convert_packaged_whisper(tmp_path_factory.mktemp("packaged") / "tiny.en")


def test_converted_packaged_model_gives_clean_pipeline_text(packaged, tmp_path):
    from recipes.corpus.tts import ESpeak

    wav = torch.as_tensor(ESpeak().synthesize(TEXT, voice="en-gb+f2"), dtype=torch.float32)
    wav = wav.unsqueeze(0)
    whisper = WindowedWhisper(str(packaged), str(tmp_path))
    ours = whisper.tokenizer.decode(greedy(whisper, wav, ratio=0.1), skip_special_tokens=True)
    text = transcribe(packaged, wav)
    assert text == ours
    assert not text.lstrip().startswith("<|") and "fox" in text.lower()


def test_an_older_conversion_is_converted_again(packaged, tmp_path, monkeypatch):
    folder = tmp_path / "tiny.en"
    shutil.copytree(packaged, folder)

    def reconverting(*args):
        raise RuntimeError("converting again")

    monkeypatch.setattr(pretrained, "read_ct2_model", reconverting)
    assert pretrained.convert_packaged_whisper(folder) == folder  # current: reused
    stamp = folder / "converted_from.json"
    recorded = json.loads(stamp.read_text())
    assert recorded["version"] == pretrained.CONVERSION_VERSION
    stamp.write_text(json.dumps({k: v for k, v in recorded.items() if k != "version"}))
    with pytest.raises(RuntimeError, match="converting again"):
        pretrained.convert_packaged_whisper(folder)


# ------------------------------------------------------------------ PEFT, ours -> PEFT
def sized_lora(layer: nn.Module, rank: int = 4, alpha: float = 8.0) -> LoRA:
    """LoRA with rank 2 and alpha 3 on the feed-forward layers: per-layer patterns."""
    wide = max(layer.weight.shape) > 64
    return LoRA(layer, rank=2 if wide else rank, alpha=3.0 if wide else alpha)


sized_lora.mergeable = True


def test_save_peft_loads_in_peft_with_the_same_outputs(tiny, tmp_path):
    from peft import PeftModel
    from transformers import WhisperForConditionalGeneration

    whisper = copy.deepcopy(tiny["whisper"])
    torch.manual_seed(0)
    adapted = AdaptedModel(
        whisper, sized_lora, all_linear=True, unfrozen_layers=["model.decoder.layer_norm"]
    )
    randomize(adapted, seed=2)
    with torch.no_grad():
        whisper.model.decoder.layer_norm.weight.mul_(1.5)
    tokens = prompt(whisper)
    ours = our_logits(whisper, tiny["wav"], tokens)
    folder = save_peft(adapted, tmp_path / "peft", base_model_name_or_path=tiny["folder"])

    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["peft_type"]) == (4, 8, "LORA")
    assert set(config["rank_pattern"].values()) == {2} and len(config["rank_pattern"]) == 8
    assert set(config["alpha_pattern"].values()) == {3}
    assert config["modules_to_save"] == ["model.decoder.layer_norm"]
    base = WhisperForConditionalGeneration.from_pretrained(tiny["folder"]).eval()
    feats = features(tiny["folder"], tiny["wav"])
    with torch.no_grad():
        plain = base(input_features=feats, decoder_input_ids=tokens).logits
        peft_model = PeftModel.from_pretrained(base, folder).eval()
        theirs = peft_model(input_features=feats, decoder_input_ids=tokens).logits
    assert (theirs - ours).abs().max() < 1e-4
    assert (plain - ours).abs().max() > 0.1  # the adapters matter


def test_save_peft_refuses_what_peft_cannot_represent(tmp_path):
    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))

    cases = [
        (AdaptedModel(net(), PoolLoRA, all_linear=True, adapter_kwargs={"rank": 2, "stride": 2}),
         "no input pooling"),
        (AdaptedModel(net(), DoRA, all_linear=True, adapter_kwargs={"rank": 2}),
         "DoRA is not exported by this function"),
        (AdaptedModel(net(), Houlsby, all_linear=True, adapter_kwargs={"projection_size": 2}),
         "no bottleneck adapter"),
        (AdaptedModel(net(), peft_adapter, all_linear=True, adapter_kwargs={"r": 2}),
         "foreign adapter"),
        (AdaptedModel(nn.Sequential(nn.Conv1d(2, 4, 3)), LoRA, all_conv=True,
                      adapter_kwargs={"rank": 2}), "nn.Linear"),
    ]  # fmt: skip
    for i, (adapted, reason) in enumerate(cases):
        with pytest.raises(PeftFormatError, match=reason) as err:
            save_peft(adapted, tmp_path / str(i))
        assert "and 1 more" in str(err.value) or i == 4
        assert not (tmp_path / str(i)).exists()


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mha(x, x, x)[0])


def test_save_peft_refuses_torch_multihead_attention(tmp_path):
    adapted = AdaptedModel(Attention(), LoRA, all_linear=True, adapter_kwargs={"rank": 2})
    assert "mha.out_proj" in adapted.adapted_layers
    with pytest.raises(
        PeftFormatError, match=r"nn.MultiheadAttention applies the out_proj update twice"
    ):
        save_peft(adapted, tmp_path / "mha")
    assert not (tmp_path / "mha").exists()
    # Leaving the attention out makes the rest exportable.
    head = AdaptedModel(Attention(), LoRA, target_layers=["head"], adapter_kwargs={"rank": 2})
    assert (save_peft(head, tmp_path / "head") / "adapter_model.safetensors").is_file()


# ------------------------------------------------------------------ PEFT -> ours
@pytest.fixture(scope="module")
def peft_trained(tiny):
    """A LoRA trained (here: randomised) with PEFT on transformers' Whisper, and its logits."""
    from peft import LoraConfig, get_peft_model
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(3)
    base = WhisperForConditionalGeneration.from_pretrained(tiny["folder"]).eval()
    config = LoraConfig(
        r=4, lora_alpha=16, use_rslora=True, target_modules=["q_proj", "v_proj", "fc1"]
    )
    model = get_peft_model(base, config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.3)
    inputs = {
        "input_features": features(tiny["folder"], tiny["wav"]),
        "decoder_input_ids": prompt(tiny["whisper"]),
    }
    with torch.no_grad():
        logits = model(**inputs).logits
        with model.disable_adapter():
            plain = model(**inputs).logits
    folder = tiny["tmp"] / "peft_trained"
    model.save_pretrained(folder)
    return {
        "folder": folder,
        "logits": logits,
        "plain": plain,
        "tokens": inputs["decoder_input_ids"],
    }


def adapt_like_peft(tiny, **kwargs) -> AdaptedModel:
    options = {"rank": 4, "alpha": 16, "use_rslora": True}
    targets = kwargs.pop("targets", ["*.q_proj", "*.v_proj", "*.fc1"])
    whisper = copy.deepcopy(tiny["whisper"])
    return AdaptedModel(whisper, LoRA, target_layers=targets, adapter_kwargs={**options, **kwargs})


def test_load_peft_reproduces_a_peft_trained_lora(tiny, peft_trained, tmp_path):
    adapted = adapt_like_peft(tiny)
    # q, v and fc1 of 2 encoder and 2 decoder layers, and the decoder's cross-attention q, v
    assert len(adapted.adapted_layers) == 2 * 3 + 2 * 5
    load_peft(adapted, peft_trained["folder"])
    ours = our_logits(adapted.adapted_model, tiny["wav"], peft_trained["tokens"])
    assert (ours - peft_trained["logits"]).abs().max() < 1e-4
    assert (peft_trained["plain"] - peft_trained["logits"]).abs().max() > 0.1  # it matters
    # and back: our folder holds PEFT's tensors
    again = save_peft(adapted, tmp_path / "again")
    from safetensors.torch import load_file

    theirs = load_file(peft_trained["folder"] / "adapter_model.safetensors")
    mine = load_file(again / "adapter_model.safetensors")
    assert theirs.keys() == mine.keys() and all(torch.equal(theirs[k], mine[k]) for k in mine)


@pytest.mark.parametrize(
    ("kwargs", "edit", "reason"),
    [
        ({"rank": 2}, {}, "has rank 4 .* in PEFT, rank 2 "),
        ({"alpha": 8}, {}, "scaled by 8 in PEFT"),
        ({"use_rslora": False}, {}, "use_rslora=True"),
        ({"targets": ["*.q_proj", "*.fc1"]}, {}, "PEFT adapts .*v_proj .*does not adapt"),
        ({"targets": ["*.q_proj", "*.v_proj", "*.fc1", "*.fc2"]}, {}, "has no weights for"),
        ({}, {"use_dora": True}, "use_dora=True"),
        ({}, {"bias": "all"}, "bias='all'"),
        ({}, {"peft_type": "LOHA"}, "holds a LOHA adapter"),
    ],
)
def test_load_peft_refuses_a_mismatched_folder(tiny, peft_trained, tmp_path, kwargs, edit, reason):
    folder = tmp_path / "peft"
    shutil.copytree(peft_trained["folder"], folder)
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **edit}))
    adapted = adapt_like_peft(tiny, **kwargs)
    before = {n: a.lora_A.clone() for n, a in adapted.adapters().items()}
    with pytest.raises(PeftFormatError, match=reason):
        load_peft(adapted, folder)
    assert all(torch.equal(a.lora_A, before[n]) for n, a in adapted.adapters().items())


def test_load_peft_names_a_missing_folder(tmp_path):
    adapted = AdaptedModel(
        nn.Sequential(nn.Linear(4, 4)), LoRA, all_linear=True, adapter_kwargs={"rank": 2}
    )
    with pytest.raises(FileNotFoundError, match="not a PEFT adapter folder"):
        load_peft(adapted, Path(tmp_path))

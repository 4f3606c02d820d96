"""The CTranslate2 export of a Whisper run, served by faster-whisper.

On the suite's tiny random Whisper: faster-whisper's greedy decoding of the export gives,
token for token, what our greedy search gives (float32), with and without a LoRA; the
int8 export loads and runs; Houlsby is refused with the reason. On the packaged tiny.en:
the export of the unadapted model transcribes a spoken sentence with our words.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_export import RATIO, STEPS, TEXT, greedy, randomize

from adapters import AdaptedModel, Houlsby, LoRA
from recipes.whisper.ctranslate2_export import (
    check_mergeable,
    export_ctranslate2,
    faster_whisper_max_new_tokens,
)
from recipes.whisper.export import ExportError
from recipes.whisper.generation import greedy_suppress_tokens
from recipes.whisper.model import WindowedWhisper
from recipes.whisper.random_init import save_random_whisper

pytest.importorskip("faster_whisper")

SAMPLES_30S = 30 * 16000
#: faster-whisper's cap for our greedy search's STEPS tokens (CTranslate2 halves it).
CAP = faster_whisper_max_new_tokens(STEPS)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: spinning OpenMP threads slow everything down on a busy 2-core box."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def window(wav: torch.Tensor) -> np.ndarray:
    """The clip padded with silence to Whisper's 30 s window, as our model and transformers
    see it (faster-whisper fills the rest of the window with zero features instead)."""
    audio = np.zeros(SAMPLES_30S, dtype=np.float32)
    audio[: wav.shape[-1]] = wav[0].numpy()
    return audio


def faster_whisper_tokens(
    folder: Path, audio: np.ndarray, compute_type: str = "float32", cap: int | None = CAP
) -> list[int]:
    """faster-whisper's greedy transcript of ``audio`` (one 30 s window) as token ids:
    beam 1, no temperature fallback, no VAD, no timestamps, no previous text; ``cap`` is
    its ``max_new_tokens`` (None: its default, 224 tokens per window)."""
    from faster_whisper import WhisperModel

    model = WhisperModel(str(folder), device="cpu", compute_type=compute_type, cpu_threads=1)
    segments, _ = model.transcribe(
        audio,
        language="en",
        task="transcribe",
        beam_size=1,
        temperature=0.0,
        vad_filter=False,
        without_timestamps=True,
        condition_on_previous_text=False,
        compression_ratio_threshold=None,
        log_prob_threshold=None,
        no_speech_threshold=None,
        max_new_tokens=cap,
    )
    return [token for segment in segments for token in segment.tokens]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny random Whisper with a LoRA: our greedy tokens before (B = 0) and after B is
    randomised, and CTranslate2 exports of both (float32) and of the adapted one (int8)."""
    from recipes.corpus.tts import ESpeak

    tmp = tmp_path_factory.mktemp("ctranslate2")
    folder = Path(save_random_whisper(tmp / "tiny"))
    whisper = WindowedWhisper(str(folder), str(tmp / "hub"), train_window_s=2.0).eval()
    wav = torch.as_tensor(ESpeak().synthesize(TEXT), dtype=torch.float32).unsqueeze(0)
    plain = copy.deepcopy(whisper)
    torch.manual_seed(0)
    adapted = AdaptedModel(whisper, LoRA, all_linear=True, adapter_kwargs={"rank": 4})
    base_ids = greedy(whisper, wav)  # lora_B is zero: the base model
    base = export_ctranslate2(whisper, adapted, folder, tmp / "base")
    randomize(adapted, seed=1)
    ours = greedy(whisper, wav)
    merged = export_ctranslate2(whisper, adapted, folder, tmp / "merged")
    int8 = export_ctranslate2(whisper, adapted, folder, tmp / "int8", quantization="int8")
    return {
        "tmp": tmp,
        "folder": folder,
        "whisper": whisper,
        "plain": plain,
        "adapted": adapted,
        "wav": wav,
        "base_ids": base_ids,
        "ours": ours,
        "base": base,
        "merged": merged,
        "int8": int8,
    }


def test_faster_whisper_decodes_the_export_as_our_greedy_search(exported):
    audio = window(exported["wav"])
    base = faster_whisper_tokens(exported["base"], audio)
    merged = faster_whisper_tokens(exported["merged"], audio)
    assert len(exported["ours"]) == STEPS == RATIO * 1500  # a random model never stops
    assert base == exported["base_ids"]  # token for token
    assert merged == exported["ours"]
    assert merged != base  # the adapter changes the output, and the export carries it
    files = {p.name for p in exported["merged"].iterdir()}
    assert {"model.bin", "config.json", "tokenizer.json", "preprocessor_config.json"} <= files
    assert not list(exported["tmp"].glob(".*.tmp"))  # no temporary folder left
    config = json.loads((exported["merged"] / "config.json").read_text())
    assert config["suppress_ids"] == greedy_suppress_tokens(exported["whisper"].tokenizer)
    assert config["suppress_ids_begin"] == [220, exported["whisper"].eos]


def test_max_new_tokens_is_halved_by_ctranslate2(exported):
    """faster-whisper's ``max_new_tokens=n`` yields (prompt + n) // 2 tokens."""
    audio = window(exported["wav"])
    halved = faster_whisper_tokens(exported["merged"], audio, cap=STEPS)
    tokens = faster_whisper_tokens(exported["merged"], audio, cap=None)
    assert halved == exported["ours"][: (2 + STEPS) // 2]
    assert len(tokens) == 448 // 2  # the default cap: 224 tokens per window
    assert tokens[:STEPS] == exported["ours"]


def test_int8_export_loads_and_runs(exported):
    size = {k: (exported[k] / "model.bin").stat().st_size for k in ("merged", "int8")}
    assert size["int8"] < 0.5 * size["merged"]
    tokens = faster_whisper_tokens(exported["int8"], window(exported["wav"]), "int8")
    assert len(tokens) == STEPS and all(0 <= t < 51864 for t in tokens)


def test_a_houlsby_run_is_refused_with_the_reason(exported, tmp_path):
    whisper = copy.deepcopy(exported["plain"])
    adapted = AdaptedModel(
        whisper, Houlsby, target_layers=["*.fc1"], adapter_kwargs={"projection_size": 4}
    )
    with pytest.raises(
        ExportError, match=r"Houlsby adapters \(at .* and 3 more\) cannot be merged"
    ):
        export_ctranslate2(whisper, adapted, exported["folder"], tmp_path / "out")
    with pytest.raises(ExportError, match="nonlinearity"):
        check_mergeable(adapted)
    check_mergeable(exported["adapted"])  # LoRA merges
    check_mergeable(None)  # a model trained in full
    with pytest.raises(ValueError, match="choose one of int8"):
        export_ctranslate2(whisper, None, exported["folder"], tmp_path / "out", "int4")
    assert not (tmp_path / "out").exists()


def fake_run(tmp: Path) -> Path:
    """A run folder with an inference folder (its loading is replaced by the test)."""
    run = tmp / "run"
    (run / "inference").mkdir(parents=True)
    (run / "inference" / "hyperparams.yaml").write_text("interface: WhisperASR\n")
    return run


def test_export_command_writes_a_ctranslate2_folder_and_refuses_houlsby(
    exported, tmp_path, monkeypatch, capsys
):
    import recipes.export as command

    loaded = {}
    monkeypatch.setattr(command, "interface_class", lambda folder: type("WhisperASR", (), {}))
    monkeypatch.setattr(command, "load_inference", lambda folder: loaded["asr"])

    def load(whisper, adapted) -> None:
        mods = torch.nn.ModuleList([adapted or whisper])
        hparams = SimpleNamespace(whisper=whisper, base_source=exported["folder"])
        loaded["asr"] = SimpleNamespace(mods=mods, hparams=hparams)

    run = fake_run(tmp_path)
    load(exported["whisper"], exported["adapted"])
    out = tmp_path / "ct2"
    assert command.main([str(run), "--to", "ctranslate2", str(out), "--quantization", "int8"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert (out / "model.bin").read_bytes() == (exported["int8"] / "model.bin").read_bytes()
    assert config["suppress_ids_begin"] == [220, exported["whisper"].eos]
    peft = [str(run), "--to", "peft", str(tmp_path / "peft"), "--quantization", "int8"]
    assert command.main(peft) == 2
    assert "--quantization applies to --to ctranslate2" in capsys.readouterr().err

    whisper = copy.deepcopy(exported["plain"])
    houlsby = AdaptedModel(
        whisper, Houlsby, target_layers=["*.fc1"], adapter_kwargs={"projection_size": 4}
    )
    load(whisper, houlsby)
    for to in ("ctranslate2", "transformers", "speechbrain"):
        assert command.main([str(run), "--to", to, str(tmp_path / to), "--overwrite"]) == 2
        err = capsys.readouterr().err
        assert f"Cannot export to {to}: the run's Houlsby adapters" in err
        assert "recipes.transcribe" in err and not (tmp_path / to).exists()


# ------------------------------------------------------------------ the packaged tiny.en
def test_export_of_the_packaged_tiny_en_transcribes_with_our_words(tmp_path):
    """The real model, unadapted: converted to transformers, exported back through
    CTranslate2's converter. On the padded window faster-whisper gives our greedy search's
    tokens; called as users call it, it gives what it gives on the packaged CTranslate2 model
    itself (its own padding of a short clip may change a word: docs/deploy.md)."""
    from recipes.corpus.tts import ESpeak
    from recipes.whisper.pretrained import convert_packaged_whisper, packaged_model_dir

    packaged = convert_packaged_whisper(tmp_path / "tiny.en")
    audio = ESpeak().synthesize(TEXT, voice="en-gb+f2")
    wav = torch.as_tensor(audio, dtype=torch.float32).unsqueeze(0)
    whisper = WindowedWhisper(str(packaged), str(tmp_path / "hub")).eval()
    ours = [t for t in greedy(whisper, wav, ratio=0.1) if t != whisper.eos]
    out = export_ctranslate2(whisper, None, packaged, tmp_path / "ct2")
    assert "fox" in whisper.tokenizer.decode(ours).lower()
    assert faster_whisper_tokens(out, window(wav), cap=None) == ours  # token for token
    as_called = faster_whisper_tokens(out, wav[0].numpy(), cap=None)
    assert as_called == faster_whisper_tokens(packaged_model_dir(), wav[0].numpy(), cap=None)

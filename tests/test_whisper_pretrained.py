"""The CTranslate2 -> transformers converter, on synthetic files and on the packaged tiny.en."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from recipes.whisper import pretrained
from recipes.whisper.pretrained import (
    ConversionError,
    convert_ct2_whisper,
    convert_packaged_whisper,
    ct2_to_transformers_state,
    packaged_model_dir,
    read_ct2_model,
    resolve_source,
    whisper_config_kwargs,
)


def _string(text: str) -> bytes:
    data = text.encode() + b"\0"
    return struct.pack("<H", len(data)) + data


def write_ct2(path: Path, variables: dict[str, np.ndarray], aliases=()) -> None:
    """Write variables in CTranslate2's model.bin layout (version 6)."""
    codes = {np.dtype(np.float32): 0, np.dtype(np.int8): 1, np.dtype(np.float16): 4}
    out = struct.pack("<I", 6) + _string("WhisperSpec") + struct.pack("<II", 3, len(variables))
    for name, array in variables.items():
        out += _string(name) + struct.pack("<B", array.ndim)
        out += struct.pack("<" + "I" * array.ndim, *array.shape)
        out += struct.pack("<BI", codes[array.dtype], array.nbytes) + array.tobytes()
    out += struct.pack("<I", len(aliases))
    for alias, target in aliases:
        out += _string(alias) + _string(target)
    path.write_bytes(out)


def test_reader_round_trips_names_shapes_dtypes_and_aliases(tmp_path):
    rng = np.random.default_rng(0)
    variables = {
        "a/weight": rng.standard_normal((3, 4)).astype(np.float16),
        "b/bias": rng.standard_normal(5).astype(np.float32),
        "heads": np.array(6, dtype=np.int8),
    }
    write_ct2(tmp_path / "model.bin", variables, aliases=[("c/weight", "a/weight")])
    spec, read = read_ct2_model(tmp_path / "model.bin")
    assert spec == "WhisperSpec"
    assert set(read) == {"a/weight", "b/bias", "heads", "c/weight"}
    for name, array in variables.items():
        assert read[name].dtype == array.dtype and np.array_equal(read[name], array)
    assert np.array_equal(read["c/weight"], variables["a/weight"])


def test_truncated_file_is_refused(tmp_path):
    write_ct2(tmp_path / "model.bin", {"a/weight": np.ones((64, 64), dtype=np.float32)})
    data = (tmp_path / "model.bin").read_bytes()
    (tmp_path / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(ConversionError, match="truncated"):
        read_ct2_model(tmp_path / "model.bin")


def test_wrong_checksum_is_refused_before_anything_is_written(tmp_path):
    ct2 = tmp_path / "ct2"
    ct2.mkdir()
    (ct2 / "model.bin").write_bytes(b"not a model")
    (ct2 / "tokenizer.json").write_text("{}")
    with pytest.raises(ConversionError, match="SHA-256") as err:
        convert_ct2_whisper(ct2, tmp_path / "out", expected_sha256=pretrained.PACKAGED_SHA256)
    assert "reinstall" in str(err.value)
    assert not (tmp_path / "out").exists()


def test_missing_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="model.bin"):
        convert_ct2_whisper(tmp_path, tmp_path / "out")


@pytest.fixture(scope="module")
def packaged(tmp_path_factory):
    """The packaged tiny.en, read once and converted once."""
    model_bin = packaged_model_dir() / "model.bin"
    _, variables = read_ct2_model(model_bin)
    folder = convert_packaged_whisper(tmp_path_factory.mktemp("whisper") / "tiny.en")
    return {"variables": variables, "folder": folder}


def test_packaged_file_has_the_published_checksum():
    assert pretrained.sha256_of(packaged_model_dir() / "model.bin") == pretrained.PACKAGED_SHA256


def test_conversion_covers_every_key_exactly(packaged):
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    variables = packaged["variables"]
    sizes = whisper_config_kwargs(variables)
    assert (sizes["d_model"], sizes["encoder_layers"], sizes["decoder_layers"]) == (384, 4, 4)
    assert sizes["vocab_size"] == 51864  # English-only vocabulary
    state = ct2_to_transformers_state(variables)
    expected = set(WhisperForConditionalGeneration(WhisperConfig(**sizes)).state_dict())
    assert set(state) == expected - {"proj_out.weight"}  # tied to the token embedding
    # Values are the float16 originals, exactly; fused projections are split by rows.
    fused = variables["encoder/layer_2/self_attention/linear_0/weight"]
    d = sizes["d_model"]
    assert torch.equal(
        state["model.encoder.layers.2.self_attn.v_proj.weight"],
        torch.from_numpy(fused[2 * d :].astype(np.float32)),
    )
    cross = variables["decoder/layer_1/attention/linear_1/bias"]
    assert torch.equal(
        state["model.decoder.layers.1.encoder_attn.v_proj.bias"],
        torch.from_numpy(cross[d:].astype(np.float32)),
    )


def test_converted_folder_loads_and_is_cached(packaged):
    from transformers import WhisperForConditionalGeneration

    folder = Path(packaged["folder"])
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= names
    assert "preprocessor_config.json" in names
    stamp = json.loads((folder / "converted_from.json").read_text())
    assert stamp["sha256"] == pretrained.PACKAGED_SHA256
    model = WhisperForConditionalGeneration.from_pretrained(folder)
    embed = model.model.decoder.embed_tokens.weight
    assert model.proj_out.weight.data_ptr() == embed.data_ptr()
    mtime = (folder / "model.safetensors").stat().st_mtime_ns
    assert resolve_source("packaged", folder) == str(folder)  # no second conversion
    assert (folder / "model.safetensors").stat().st_mtime_ns == mtime


def test_converted_model_transcribes_a_generated_utterance(packaged, tmp_path):
    from speechbrain.decoders.seq2seq import S2SWhisperGreedySearcher
    from speechbrain.utils.edit_distance import wer_details_for_batch

    from recipes.corpus.tts import ESpeak
    from recipes.text_normalization import normalized_words
    from recipes.whisper.model import WindowedWhisper

    text = "the weather was warm and the children played in the garden"
    audio = ESpeak().synthesize(text, voice="en-gb+f2", rate=160, pitch=50)
    whisper = WindowedWhisper(str(packaged["folder"]), str(tmp_path)).eval()
    searcher = S2SWhisperGreedySearcher(whisper, min_decode_ratio=0.0, max_decode_ratio=0.1)
    wav = torch.as_tensor(audio, dtype=torch.float32).unsqueeze(0)
    with torch.no_grad():
        enc, _, _ = whisper(wav, torch.tensor([[whisper.bos]]))
        hyps, _, _, _ = searcher(enc, torch.ones(1))
    hyp = normalized_words(whisper.tokenizer.decode(hyps[0], skip_special_tokens=True))
    details = wer_details_for_batch(["u"], [text.split()], [hyp])[0]
    # A wrong mapping (say, Q and K swapped) gives no usable words at all.
    assert details["WER"] <= 20.0, hyp


def test_a_damaged_converted_folder_is_converted_again(packaged, tmp_path):
    import shutil

    folder = tmp_path / "tiny.en"
    shutil.copytree(packaged["folder"], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # a copy cut short
    assert pretrained.safetensors_problem(weights) is not None
    assert resolve_source("packaged", folder) == str(folder)
    assert pretrained.safetensors_problem(weights) is None
    assert weights.read_bytes() == (Path(packaged["folder"]) / "model.safetensors").read_bytes()
    # a damaged folder of the user's own is named, not converted over
    weights.write_bytes(weights.read_bytes()[:-1000])
    with pytest.raises(ValueError, match=r"is damaged: .*model.safetensors is truncated"):
        resolve_source(str(folder), "unused")


def test_weights_edited_after_conversion_are_noticed_when_used(packaged, tmp_path):
    """Same size, so still a readable safetensors file: only the recorded hash tells."""
    import shutil

    folder = tmp_path / "tiny.en"
    shutil.copytree(packaged["folder"], folder)
    weights = folder / "model.safetensors"
    edited = bytearray(weights.read_bytes())
    edited[-1] ^= 0xFF
    weights.write_bytes(bytes(edited))
    assert pretrained.safetensors_problem(weights) is None
    with pytest.raises(ValueError, match=r"changed since it was converted: model.safetensors"):
        resolve_source(str(folder), "unused")  # given as a folder: named, not converted over
    assert resolve_source("packaged", folder) == str(folder)  # the converter's own: redone
    assert weights.read_bytes() == (Path(packaged["folder"]) / "model.safetensors").read_bytes()
    assert resolve_source(str(folder), "unused") == str(folder)


def test_a_conversion_killed_while_writing_leaves_the_old_folder_and_reruns_identically(
    packaged, tmp_path, monkeypatch
):
    """A kill (an exception the converter cannot catch) while the tokenizer is written,
    after the weights: the old conversion stays whole, and the rerun writes the same bytes."""
    import shutil

    from transformers import PreTrainedTokenizerFast

    folder = tmp_path / "tiny.en"
    shutil.copytree(packaged["folder"], folder)
    expected = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    (folder / "converted_from.json").unlink()  # the stamp is gone: it converts again

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(PreTrainedTokenizerFast, "save_pretrained", killed)
        with pytest.raises(KeyboardInterrupt):
            resolve_source("packaged", folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.en", "tiny.en.lock"]  # no temporary
    assert (folder / "model.safetensors").read_bytes() == expected["model.safetensors"]
    resolve_source("packaged", folder)
    again = {p.name: p.read_bytes() for p in folder.iterdir() if p.is_file()}
    assert again.keys() == expected.keys()
    assert all(again[name] == expected[name] for name in expected if name != "converted_from.json")


def test_a_mistyped_local_folder_is_not_sent_to_the_hub(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pretrained").mkdir()
    with pytest.raises(FileNotFoundError, match="pretrained/whisper-tiny.ne does not exist"):
        resolve_source("pretrained/whisper-tiny.ne", "unused")
    assert resolve_source("openai/whisper-small.en", "unused") == "openai/whisper-small.en"


def test_the_pipeline_decodes_a_clip_longer_than_30_s(packaged):
    """Long-form decoding (timestamps between windows) is left to transformers: a clip over
    30 s is transcribed, not refused ("more than 3000 mel input features")."""
    from transformers import pipeline

    from recipes.corpus.tts import ESpeak

    first, last = "please leave a message after the tone", "we walked along the river"
    clips = [
        np.asarray(ESpeak().synthesize(t, voice="en-us", rate=150), np.float32)
        for t in (first, last)
    ]
    audio = np.concatenate([clips[0], np.zeros(27 * 16000, np.float32), clips[1]])
    assert len(audio) > 30 * 16000
    text = pipeline("automatic-speech-recognition", model=str(packaged["folder"]))(audio)["text"]
    assert "<|" not in text and "message" in text.lower() and "river" in text.lower(), text

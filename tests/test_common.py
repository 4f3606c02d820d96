"""Input checks shared by the recipes: manifests, audio, base checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile
import torch

from recipes.audio import AudioError, ShortAudioError, load_audio
from recipes.common import load_manifest, read_manifest, strict_transfer


def write(path, text, encoding="utf-8"):
    path.write_text(text, encoding=encoding)
    return str(path)


def tone(path, seconds, rate, channels=1):
    t = np.arange(int(seconds * rate)) / rate
    wave = 0.5 * np.sin(2 * np.pi * 440 * t)
    soundfile.write(path, np.stack([wave] * channels, axis=1), rate)
    return str(path)


def test_manifest_checks_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist. Run the corpus"):
        read_manifest(str(tmp_path / "nope.csv"), hint="Run the corpus preparation.")
    header_only = write(tmp_path / "empty.csv", "ID,duration,wav,wrd\n")
    with pytest.raises(ValueError, match="is empty"):
        read_manifest(header_only)
    no_text = write(tmp_path / "cols.csv", "ID,duration,wav\na,1.0,x.wav\n")
    with pytest.raises(ValueError, match=r"lacks the columns \['wrd'\]"):
        read_manifest(no_text)
    twice = write(tmp_path / "twice.csv", "ID,duration,wav,wrd\na,1,x,A\na,1,y,B\n")
    with pytest.raises(ValueError, match="line 3: duplicate ID 'a'"):
        read_manifest(twice)
    bad_duration = write(tmp_path / "dur.csv", "ID,duration,wav,wrd\na,1s,x,A\n")
    with pytest.raises(ValueError, match="line 2: duration '1s' is not a number"):
        read_manifest(bad_duration)
    missing_audio = write(tmp_path / "m.csv", "ID,duration,wav,wrd\na,1.0,$data_root/a.wav,HI\n")
    with pytest.raises(FileNotFoundError, match="1 audio files listed"):
        load_manifest(missing_audio, data_root=str(tmp_path))


def test_a_manifest_with_byte_order_mark_and_crlf_reads_like_a_plain_one(tmp_path):
    tone(tmp_path / "a.wav", 0.5, 16000)
    text = "ID,duration,wav,wrd\r\na,0.5,$data_root/a.wav,HELLO THERE\r\n"
    plain = load_manifest(write(tmp_path / "plain.csv", text.replace("\r\n", "\n")), str(tmp_path))
    bom = load_manifest(write(tmp_path / "bom.csv", text, encoding="utf-8-sig"), str(tmp_path))
    assert (
        bom.data
        == plain.data
        == {"a": {"duration": 0.5, "wav": f"{tmp_path}/a.wav", "wrd": "HELLO THERE"}}
    )


def test_empty_and_short_audio_is_left_out_of_training_and_refused_in_tests(tmp_path, caplog):
    tone(tmp_path / "ok.wav", 1.0, 16000)
    tone(tmp_path / "short.wav", 0.02, 16000)
    soundfile.write(tmp_path / "empty.wav", np.zeros((0, 1)), 16000)
    (tmp_path / "broken.wav").write_bytes(b"RIFF....not audio")
    rows = "".join(f"{n},1.0,$data_root/{n}.wav,A\n" for n in ("ok", "short", "empty"))
    path = write(tmp_path / "train.csv", "ID,duration,wav,wrd\n" + rows)
    train = load_manifest(path, str(tmp_path), min_seconds=0.1, skip_short=True)
    assert sorted(train.data) == ["ok"]
    assert "2 of 3 audio files" in caplog.text and "short.wav" in caplog.text
    with pytest.raises(ShortAudioError, match=r"short.wav holds 0.020 s.*ID short"):
        load_manifest(path, str(tmp_path), min_seconds=0.1)
    broken = write(tmp_path / "b.csv", "ID,duration,wav,wrd\nb,1.0,$data_root/broken.wav,A\n")
    with pytest.raises(AudioError, match="Cannot read audio file .*broken.wav"):
        load_manifest(broken, str(tmp_path), skip_short=True)  # unreadable is never skipped


def test_audio_is_resampled_and_downmixed_for_the_model(tmp_path):
    """8 kHz stereo telephone audio becomes 16 kHz mono of the same duration and pitch."""
    path = tone(tmp_path / "phone.wav", 1.0, 8000, channels=2)
    signal = load_audio(path, 16000)
    assert signal.shape == (16000,) and signal.dtype == torch.float32
    spectrum = torch.fft.rfft(signal).abs()
    assert abs(int(spectrum.argmax()) - 440) <= 1  # 1 Hz bins: the tone stays at 440 Hz
    assert torch.allclose(
        signal, load_audio(tone(tmp_path / "mono.wav", 1.0, 8000), 16000), atol=1e-4
    )


def test_strict_transfer_refuses_a_checkpoint_of_another_model(tmp_path):
    torch.save(torch.nn.Linear(4, 3).state_dict(), tmp_path / "base.ckpt")
    model = torch.nn.Linear(4, 3)
    strict_transfer(model, str(tmp_path / "base.ckpt"))
    with pytest.raises(RuntimeError, match="does not fit the model defined in the YAML"):
        strict_transfer(torch.nn.Linear(4, 5), str(tmp_path / "base.ckpt"))


def test_a_truncated_base_checkpoint_is_named_without_unsafe_advice(tmp_path):
    torch.save(torch.nn.Linear(64, 64).state_dict(), tmp_path / "base.ckpt")
    data = (tmp_path / "base.ckpt").read_bytes()
    (tmp_path / "base.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match=r"Cannot read the base checkpoint .*base.ckpt") as err:
        strict_transfer(torch.nn.Linear(64, 64), str(tmp_path / "base.ckpt"))
    assert "weights_only=False" not in str(err.value)

"""The transcribe command's parts that need no model: inputs, chunks, batches, arguments."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile

from recipes.transcribe import Item, _batches, _load_audio, collect_items, parse_args


def _wav(path, seconds: float, rate: int = 16000, channels: int = 1) -> str:
    tone = np.sin(np.arange(int(seconds * rate)) / rate * 2 * np.pi * 220).astype("float32")
    soundfile.write(path, np.stack([tone] * channels, axis=1), rate)
    return str(path)


def test_files_folders_and_manifests_are_collected_in_order(tmp_path, monkeypatch):
    (tmp_path / "dir" / "sub").mkdir(parents=True)
    one = _wav(tmp_path / "one.wav", 0.5)
    _wav(tmp_path / "dir" / "b.wav", 0.5)
    _wav(tmp_path / "dir" / "sub" / "a.flac", 0.5)
    (tmp_path / "dir" / "notes.txt").write_text("not audio")
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "ID,wav,adapter,wrd\nx,$data_root/one.wav,voices,HELLO\ny,one.wav,,\n", encoding="utf-8-sig"
    )
    items = collect_items([one, str(tmp_path / "dir"), str(manifest)], "adapter")
    assert [(i.id, i.adapter) for i in items] == [
        ("one", None), ("b", None), ("sub/a", None), ("x", "voices"), ("y", None),
    ]  # fmt: skip
    assert items[3].wav == items[4].wav == str(tmp_path / "one.wav")
    assert items[3].reference == "HELLO"
    # a manifest named by a relative path ($data_root as the corpus writes it), from its parent
    monkeypatch.chdir(tmp_path.parent)
    relative = Path(tmp_path.name) / "m.csv"
    assert [i.wav for i in collect_items([str(relative)], "adapter")] == [
        str(tmp_path / "one.wav")
    ] * 2
    bad = tmp_path / "bad.csv"
    bad.write_text("ID,path\nx,a.wav\n")
    with pytest.raises(ValueError, match="no 'wav' column"):
        collect_items([str(bad)], "adapter")


def test_long_recordings_are_cut_into_windows_and_any_rate_is_resampled(tmp_path):
    item = Item("long", _wav(tmp_path / "long.wav", 5.0, rate=8000, channels=2))
    _load_audio(item, 16000, chunk_s=2.0)
    assert [c.numel() for c in item.chunks] == [32000, 32000, 16000]
    assert item.seconds == pytest.approx(5.0)


def test_without_mixing_each_batch_holds_one_adapter():
    items = [Item(str(i), "w", adapter) for i, adapter in enumerate("abab")]
    chunks = [(item, 0) for item in items]
    mixed = _batches(chunks, 3, mixable=True)
    assert [[c[0].adapter for c in b] for b in mixed] == [["a", "b", "a"], ["b"]]
    grouped = _batches(chunks, 3, mixable=False)
    assert [[c[0].adapter for c in b] for b in grouped] == [["a", "a"], ["b", "b"]]


def test_output_must_be_csv_or_jsonl(capsys):
    with pytest.raises(SystemExit):
        parse_args(["run", "a.wav", "--output", "out.txt"])
    assert "--output must end in .csv or .jsonl" in capsys.readouterr().err
    args = parse_args(["run", "a.wav", "--adapter", "x=y.safetensors", "--adapter", "none"])
    assert args.adapter == ["x=y.safetensors", "none"] and args.precision == "fp32"

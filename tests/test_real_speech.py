"""Manifests of real recorded speech: Asterisk prompts and pocketsphinx's LibriVox clips."""

from __future__ import annotations

import csv
import gzip
import io
import logging
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile

from recipes import packages
from recipes.corpus import real_speech
from recipes.corpus.real_speech import (
    SourceUnavailableError,
    asterisk_utterances,
    evenly_spaced,
    extract_librivox,
    is_speakable,
    librivox_ids,
    prepare_real_speech,
    read_asterisk_transcripts,
)

GOOD_PROMPTS = {
    "agent-pass": "Please enter your password followed by the pound key.",
    "all-circuits-busy-now": "All circuits are busy now.",
    "auth-thankyou": "Thank you.",
    "digits/1": "one",
    "digits/2": "two",
    "vm-goodbye": 'Say "goodbye" - then hang up; we\'ll call back!',
}
PROMPT_LIST = """; Core Asterisk Sounds in English

agent-pass:   Please enter your password followed by the pound key.  
all-circuits-busy-now: All circuits are busy now.
auth-thankyou: Thank you.
beep: [this is a simple beep tone]
silence/1: (1 second of silence)
digits/1: one
digits/2: two
dictate/both_help: press * to toggle pause, press # to enter a new dictation filename
letters/at: at [@]
pls-try-call-later: Please try your call later.
vm-goodbye: Say "goodbye" - then hang up;   we'll call back!
"""
LIBRIVOX_TEXTS = {
    "book_01-0010": "and mister john dashwood had then leisure\n",
    "book_01-0020": " he was not an ill disposed young man\n",
}


def write_wav(path: Path, seconds: float, rate: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = np.random.default_rng(0).uniform(-0.1, 0.1, int(seconds * rate))
    soundfile.write(str(path), samples, rate, subtype="PCM_16")


@pytest.fixture
def asterisk(tmp_path: Path) -> tuple[Path, Path]:
    """A fake Asterisk install: every prompt but ``pls-try-call-later`` has a wav."""
    sounds = tmp_path / "sounds"
    for index, name in enumerate([*GOOD_PROMPTS, "beep", "silence/1", "dictate/both_help"]):
        write_wav(sounds / f"{name}.wav", 0.25 * (index + 1), 8000)
    write_wav(sounds / "no-transcript.wav", 0.5, 8000)
    transcripts = tmp_path / "core-sounds-en.txt.gz"
    with gzip.open(transcripts, "wt") as handle:
        handle.write(PROMPT_LIST)
    return sounds, transcripts


def add_file(archive: tarfile.TarFile, name: str, data: bytes, kind: bytes = tarfile.REGTYPE):
    info = tarfile.TarInfo(name)
    info.type = kind
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    else:
        info.linkname = data.decode()
        archive.addfile(info)


@pytest.fixture
def sdist(tmp_path: Path) -> Path:
    """A fake pocketsphinx sdist with two clips, an incomplete one and hostile members."""
    folder = "pocketsphinx-5.1.1/test/data/librivox"
    wavs = {}
    for index, uid in enumerate(LIBRIVOX_TEXTS):
        buffer = io.BytesIO()
        soundfile.write(buffer, np.zeros(16000 * (index + 1)), 16000, "PCM_16", format="WAV")
        wavs[uid] = buffer.getvalue()
    path = tmp_path / "pocketsphinx-5.1.1.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        ids = [*LIBRIVOX_TEXTS, "book_01-0030", "../../escape"]
        add_file(archive, f"{folder}/fileids", ("\n".join(ids) + "\n").encode())
        for uid, text in LIBRIVOX_TEXTS.items():
            add_file(archive, f"{folder}/{uid}.wav", wavs[uid])
            add_file(archive, f"{folder}/{uid}.txt", text.encode())
            add_file(archive, f"{folder}/{uid}.json", b"{}")
        add_file(archive, f"{folder}/book_01-0030.txt", b"no audio for this one")
        add_file(archive, f"{folder}/../../../../escape.txt", b"outside")
        add_file(archive, "pocketsphinx-5.1.1/other/book_01-0040.wav", wavs["book_01-0010"])
        add_file(archive, f"{folder}/link.wav", b"/etc/passwd", tarfile.SYMTYPE)
    return path


def read_rows(path: str | Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_is_speakable_accepts_words_and_plain_punctuation_only():
    assert is_speakable("Please press 1, or hang up.")
    assert is_speakable('Say "goodbye" - then hang up; we\'ll call back!')
    for text in ("press * to pause", "press # to exit", "at [@]", "[ascending tones]", "", "..."):
        assert not is_speakable(text), text
    assert not is_speakable("café")


def test_read_asterisk_transcripts_skips_comments_and_collapses_whitespace(asterisk):
    transcripts = read_asterisk_transcripts(asterisk[1])
    assert len(transcripts) == 11
    assert transcripts["agent-pass"] == GOOD_PROMPTS["agent-pass"]
    assert transcripts["vm-goodbye"] == GOOD_PROMPTS["vm-goodbye"]
    assert transcripts["beep"] == "[this is a simple beep tone]"
    assert not any(name.startswith(";") for name in transcripts)


def test_asterisk_utterances_drop_unusable_prompts(asterisk):
    utterances, dropped = asterisk_utterances(*asterisk)
    assert [u.text for u in utterances] == [GOOD_PROMPTS[name] for name in sorted(GOOD_PROMPTS)]
    assert dropped == {"non-speech": 2, "symbols": 2, "missing-wav": 1}
    longer, dropped = asterisk_utterances(*asterisk, min_words=3)
    assert [u.uid for u in longer] == [
        "asterisk-agent-pass", "asterisk-all-circuits-busy-now", "asterisk-vm-goodbye",
    ]  # fmt: skip
    assert dropped["too-short"] == 3


def test_evenly_spaced_subset():
    assert evenly_spaced(list(range(10)), 4) == [0, 2, 5, 7]
    assert evenly_spaced(list(range(10)), 1) == [0]
    assert evenly_spaced(list(range(3)), None) == [0, 1, 2]
    assert evenly_spaced(list(range(3)), 0) == []


def test_asterisk_manifest(asterisk, tmp_path):
    sounds, transcripts = asterisk
    manifests = prepare_real_speech(
        tmp_path / "data",
        ["asterisk"],
        asterisk_sounds=sounds,
        asterisk_transcripts=transcripts,
    )
    assert manifests == {"asterisk": str(tmp_path / "data" / "real_asterisk.csv")}
    rows = read_rows(manifests["asterisk"])
    assert list(rows[0]) == ["ID", "duration", "wav", "spk_id", "wrd"]
    by_id = {row["ID"]: row for row in rows}
    assert sorted(by_id) == sorted(f"asterisk-{n.replace('/', '-')}" for n in GOOD_PROMPTS)
    assert by_id["asterisk-digits-1"]["wav"] == str(sounds / "digits" / "1.wav")
    assert by_id["asterisk-digits-1"]["wrd"] == "one"
    assert by_id["asterisk-vm-goodbye"]["wrd"] == GOOD_PROMPTS["vm-goodbye"]
    assert {row["spk_id"] for row in rows} == {"allison"}
    # The fixture's wavs last 0.25 s times their position in GOOD_PROMPTS.
    for index, name in enumerate(GOOD_PROMPTS):
        uid = f"asterisk-{name.replace('/', '-')}"
        assert float(by_id[uid]["duration"]) == pytest.approx(0.25 * (index + 1), abs=1e-3)
    stamp = real_speech._read_stamp(tmp_path / "data" / "real" / "asterisk.json")
    assert stamp["summary"]["utterances"] == 6
    assert stamp["summary"]["hours"] == pytest.approx(0.25 * 21 / 3600, abs=1e-4)
    assert not list((tmp_path / "data").rglob("*.tmp"))


def test_max_asterisk_is_deterministic(asterisk, tmp_path):
    sounds, transcripts = asterisk
    ids = []
    for name in ("a", "b"):
        manifest = prepare_real_speech(
            tmp_path / name,
            ["asterisk"],
            max_asterisk=3,
            asterisk_sounds=sounds,
            asterisk_transcripts=transcripts,
        )["asterisk"]
        ids.append([row["ID"] for row in read_rows(manifest)])
    # The six usable prompts sorted by name, positions 0, 2 and 4.
    assert (
        ids[0] == ids[1] == ["asterisk-agent-pass", "asterisk-auth-thankyou", "asterisk-digits-2"]
    )


def test_second_call_does_no_work(asterisk, tmp_path, monkeypatch):
    sounds, transcripts = asterisk
    kwargs = {"asterisk_sounds": sounds, "asterisk_transcripts": transcripts}
    manifest = Path(prepare_real_speech(tmp_path / "d", ["asterisk"], **kwargs)["asterisk"])
    written = manifest.stat().st_mtime_ns
    calls = []
    original_info = soundfile.info
    monkeypatch.setattr(soundfile, "info", lambda path: calls.append(path) or original_info(path))

    again = prepare_real_speech(tmp_path / "d", ["asterisk"], **kwargs)
    assert again == {"asterisk": str(manifest)}
    assert calls == []
    assert manifest.stat().st_mtime_ns == written

    (sounds / "digits" / "2.wav").unlink()  # a listed wav vanished: redo
    prepare_real_speech(tmp_path / "d", ["asterisk"], **kwargs)
    assert len(calls) == 5
    assert "asterisk-digits-2" not in {row["ID"] for row in read_rows(manifest)}

    prepare_real_speech(tmp_path / "d", ["asterisk"], max_asterisk=2, **kwargs)  # new config
    assert len(calls) == 7
    assert len(read_rows(manifest)) == 2


def test_missing_sources_are_skipped_unless_required(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(real_speech, "ASTERISK_SOUNDS", str(tmp_path / "no-sounds"))
    with caplog.at_level(logging.WARNING, logger=real_speech.__name__):
        assert prepare_real_speech(tmp_path / "d", download=False) == {}
    assert "'asterisk' is not available" in caplog.text
    assert "'librivox' is not available" in caplog.text
    assert not (tmp_path / "d" / "real_asterisk.csv").exists()
    with pytest.raises(SourceUnavailableError, match="no-sounds not found"):
        prepare_real_speech(tmp_path / "d", ["asterisk"], required=True)
    with pytest.raises(SourceUnavailableError, match="download=False"):
        prepare_real_speech(tmp_path / "d", ["librivox"], download=False, required=True)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        prepare_real_speech(tmp_path / "d", ["librivox"], sdist=tmp_path / "missing.tar.gz")
    with pytest.raises(ValueError, match="Unknown real speech sources"):
        prepare_real_speech(tmp_path / "d", ["voxpopuli"])


def test_extract_librivox_only_writes_the_clips(sdist, tmp_path):
    target = tmp_path / "out" / "librivox"
    assert extract_librivox(sdist, target) == list(LIBRIVOX_TEXTS)
    expected = {"fileids"} | {f"{uid}{ext}" for uid in LIBRIVOX_TEXTS for ext in (".wav", ".txt")}
    assert {path.name for path in target.iterdir()} == expected
    assert not list(tmp_path.rglob("escape*"))
    assert librivox_ids(target) == list(LIBRIVOX_TEXTS)
    (target / "book_01-0020.wav").unlink()
    assert librivox_ids(target) is None


def test_librivox_manifest_from_a_local_sdist(sdist, tmp_path):
    data = tmp_path / "data"
    manifests = prepare_real_speech(data, ["librivox"], download=False, sdist=sdist)
    assert manifests == {"librivox": str(data / "real_librivox.csv")}
    rows = read_rows(manifests["librivox"])
    assert [row["ID"] for row in rows] == [f"librivox-{uid}" for uid in LIBRIVOX_TEXTS]
    assert rows[0]["wav"] == "$data_root/real/librivox/book_01-0010.wav"
    assert rows[1]["wrd"] == "he was not an ill disposed young man"
    assert [float(row["duration"]) for row in rows] == [1.0, 2.0]
    assert {row["spk_id"] for row in rows} == {"book_01"}
    for row in rows:
        assert Path(row["wav"].replace("$data_root", str(data))).is_file()

    # The extracted folder is enough later on, without the sdist or a download.
    (data / "real" / "librivox.json").unlink()
    sdist.unlink()
    again = prepare_real_speech(data, ["librivox"], download=False)
    assert read_rows(again["librivox"]) == rows


def test_librivox_download_runs_pip_and_extracts(sdist, tmp_path, monkeypatch):
    commands = []

    def fake_run(command, **kwargs):
        commands.append(command)
        download_dir = Path(command[command.index("-d") + 1])
        (download_dir / sdist.name).write_bytes(sdist.read_bytes())
        return subprocess.CompletedProcess(command, 0)

    monkeypatch.setattr(packages.subprocess, "run", fake_run)
    data = tmp_path / "data"
    manifests = prepare_real_speech(data, ["librivox"])
    assert len(read_rows(manifests["librivox"])) == 2
    [command] = commands
    assert command[1:5] == ["-m", "pip", "download", "pocketsphinx==5.1.1"]
    assert command[command.index("--no-binary") + 1] == "pocketsphinx"
    assert "--no-deps" in command
    assert sorted(path.name for path in data.iterdir()) == ["real", "real_librivox.csv"]


def test_failed_download_is_a_warning(tmp_path, monkeypatch, caplog):
    def failing_run(command, **kwargs):
        raise subprocess.CalledProcessError(1, command, stderr="No matching distribution")

    monkeypatch.setattr(packages.subprocess, "run", failing_run)
    with caplog.at_level(logging.WARNING, logger=real_speech.__name__):
        assert prepare_real_speech(tmp_path / "d", ["librivox"]) == {}
    assert "No matching distribution" in caplog.text
    assert "'librivox' is not available" in caplog.text


def test_cli_prints_counts_and_hours(asterisk, sdist, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(real_speech, "ASTERISK_SOUNDS", str(asterisk[0]))
    monkeypatch.setattr(real_speech, "ASTERISK_TRANSCRIPTS", str(asterisk[1]))
    argv = ["--data-folder", str(tmp_path / "d"), "--max-asterisk", "4", "--no-download"]
    real_speech.main([*argv, "--sdist", str(sdist)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("asterisk: 4 utterances, 0.0008 h -> ")  # 3 s
    assert out[1].startswith("librivox: 2 utterances, 0.0008 h -> ")  # 3 s


@pytest.mark.skipif(
    not (
        Path(real_speech.ASTERISK_SOUNDS).is_dir()
        and Path(real_speech.ASTERISK_TRANSCRIPTS).is_file()
    ),
    reason="Debian packages asterisk-core-sounds-en(-wav) not installed",
)
def test_real_asterisk_prompts(tmp_path):
    manifest = prepare_real_speech(tmp_path, ["asterisk"], required=True)["asterisk"]
    rows = read_rows(manifest)
    assert len(rows) > 400
    by_id = {row["ID"]: row for row in rows}
    assert by_id["asterisk-agent-pass"]["wrd"] == (
        "Please enter your password followed by the pound key."
    )
    assert by_id["asterisk-digits-1"]["wrd"] == "one"
    assert "asterisk-beep" not in by_id and "asterisk-dictate-both_help" not in by_id
    assert all(is_speakable(row["wrd"]) for row in rows)

"""The transcribe command: inputs and their IDs, windows, batches, arguments, one bad file
among good ones, and transcripts that do not depend on the batch (tiny random Whisper)."""

from __future__ import annotations

import csv
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile
import torch

from recipes.audio import AudioError
from recipes.transcribe import Item, _batches, _load_audio, collect_items, main, parse_args


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
    lengths = [c.numel() for c in item.chunks]
    assert len(lengths) == 3 and sum(lengths) == 80000
    assert all(8000 <= n <= 32000 for n in lengths)
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


def test_an_existing_output_is_kept_unless_overwrite_is_given(tmp_path, capsys):
    out = tmp_path / "out.csv"
    out.write_text("earlier results")
    with pytest.raises(SystemExit):
        parse_args(["run", "a.wav", "--output", str(out)])
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "earlier results"
    assert parse_args(["run", "a.wav", "--output", str(out), "--overwrite"]).overwrite
    args = parse_args(["run", "a.wav", "--adapter", "x=y.safetensors", "--adapter", "none"])
    assert args.adapter == ["x=y.safetensors", "none"] and args.precision == "fp32"


# ------------------------------------------------------------------ windows
RATE = 16000


def _bursts(seconds: float, word_s: float, pause_s: float, start_s: float = 0.0) -> np.ndarray:
    """A recording of tone bursts ("words") separated by silent pauses."""
    audio = np.zeros(int(seconds * RATE), dtype="float32")
    t = start_s
    while t < seconds:
        a, b = int(t * RATE), min(int((t + word_s) * RATE), audio.size)
        audio[a:b] = 0.5 * np.sin(np.arange(b - a) / RATE * 2 * np.pi * 300)
        t += word_s + pause_s
    return audio


def _window_lengths(tmp_path, audio: np.ndarray, window_s: float) -> list[int]:
    path = tmp_path / "a.wav"
    soundfile.write(path, audio, RATE, subtype="FLOAT")
    item = Item("a", str(path))
    _load_audio(item, RATE, chunk_s=window_s)
    return [chunk.numel() for chunk in item.chunks]


@pytest.mark.parametrize("seconds", [29.9, 30.0, 30.28, 45.0, 59.99, 60.0, 61.0, 125.3])
def test_no_short_tail_every_window_between_a_quarter_and_the_whole_window(seconds, tmp_path):
    """30.28 s used to be cut into 30 s + 0.28 s, and Whisper invented "You." for the tail."""
    lengths = _window_lengths(tmp_path, np.full(round(seconds * RATE), 0.1, "float32"), 30.0)
    assert sum(lengths) == round(seconds * RATE)
    assert max(lengths) <= 30 * RATE
    if seconds > 30:
        assert min(lengths) >= 30 * RATE / 4, lengths
    assert len(lengths) == {29.9: 1, 30.0: 1, 30.28: 2, 45.0: 2}.get(seconds, len(lengths))
    if seconds == 30.28:
        assert lengths == [round(15.14 * RATE)] * 2


def test_cuts_of_a_two_minute_recording_fall_in_pauses_not_in_words(tmp_path):
    """Words of 0.75 s, pauses of 0.2 s: 30, 60 and 90 s fall inside words."""
    audio = _bursts(120.0, word_s=0.75, pause_s=0.2, start_s=0.1)
    for mark in (30, 60, 90):
        assert audio[mark * RATE - 80 : mark * RATE + 80].any()  # a hard cut splits a word
    lengths = _window_lengths(tmp_path, audio, 30.0)
    cuts = np.cumsum(lengths)[:-1]
    assert len(lengths) == 5 and max(lengths) <= 30 * RATE
    for cut in cuts:  # the whole 0.1 s around the cut is silent
        assert not audio[cut - RATE // 20 : cut + RATE // 20].any(), cut / RATE


def test_a_recording_too_short_to_hold_a_word_is_reported_not_decoded(tmp_path):
    path = tmp_path / "click.wav"
    soundfile.write(path, np.full(40, 0.3, "float32"), RATE)
    with pytest.raises(AudioError, match=r"0\.003 s of audio, less than the 0\.1 s"):
        _load_audio(Item("click", str(path)), RATE, chunk_s=30.0)


# ------------------------------------------------------------------ IDs
def test_ids_stay_unique_and_stable_when_names_collide(tmp_path):
    """``congrats.mp3`` and ``congrats.flac`` used to both be ``congrats``."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "d" / "x").mkdir(parents=True)
    for name in ("congrats.mp3", "congrats.flac", "a/take.wav", "b/take.wav", "solo.wav",
                 "d/x/t.wav", "d/x/t.flac", "d/y.wav"):  # fmt: skip
        _wav(tmp_path / name, 0.2)
    manifest = tmp_path / "m.csv"
    manifest.write_text("ID,wav\nsolo,solo.wav\nrow,solo.wav\nrow,solo.wav\n")
    inputs = [
        str(tmp_path / n)
        for n in ("congrats.mp3", "congrats.flac", "a/take.wav", "b/take.wav", "solo.wav")
    ]
    inputs += [str(tmp_path / "d"), str(manifest), str(tmp_path / "solo.wav")]
    ids = [item.id for item in collect_items(inputs, "adapter")]
    assert ids[:2] == ["congrats.mp3", "congrats.flac"]
    assert ids[2:4] == [str(tmp_path / "a/take.wav"), str(tmp_path / "b/take.wav")]
    assert ids[5:8] == ["x/t.flac", "x/t.wav", "y"]  # a folder's files: relative paths
    assert ids[8:11] == ["solo", "row", "row#2"]  # a manifest's IDs are kept while unique
    assert ids[4] == ids[11].removesuffix("#2") and ids[4] != ids[11]  # solo.wav, twice
    assert len(set(ids)) == len(ids)
    assert [item.id for item in collect_items(inputs, "adapter")] == ids  # stable


# ------------------------------------------------------------------ one bad file
class _SmallModel:
    """What ``transcribe`` uses of a SpeechBrain interface, with the Conformer's front: an
    Fbank, then a convolution with reflect padding, which fails on a few samples
    (``Padding size should be less than the corresponding input dimension``). It fails
    on audio louder than 4 too (a file the model cannot process). Text: the samples seen."""

    device_type = "cpu"

    def __init__(self) -> None:
        from speechbrain.lobes.features import Fbank

        self.hparams = SimpleNamespace(sample_rate=RATE)
        self.mods = torch.nn.ModuleDict()
        self.fbank = Fbank(n_mels=8)
        self.seen: list[int] = []

    def transcribe_batch(self, wavs: torch.Tensor, lengths: torch.Tensor):
        if wavs.abs().max() > 4:
            raise RuntimeError("value out of range\n(second line of the message)")
        feats = self.fbank(wavs).transpose(1, 2)
        torch.nn.functional.pad(feats, (1, 1), mode="reflect")
        sizes = [round(float(r) * wavs.shape[1]) for r in lengths]
        self.seen += sizes
        return [f"{n} samples" for n in sizes], None


def test_a_file_that_cannot_be_processed_never_stops_the_others(tmp_path, monkeypatch, capsys):
    """A last chunk of 5 samples used to kill the run with a torch traceback, --output unwritten."""
    model = _SmallModel()
    monkeypatch.setattr("recipes.transcribe.load_model", lambda *args: (model, None))
    good = _wav(tmp_path / "good.wav", 1.0)
    tail = _wav(tmp_path / "tail.wav", 2.0 + 5 / RATE)  # 2 s windows: 2 s + 5 samples before
    click = tmp_path / "click.wav"
    soundfile.write(click, np.full(5, 0.1, "float32"), RATE)
    loud = tmp_path / "loud.wav"
    soundfile.write(loud, np.full(RATE, 8.0, "float32"), RATE, subtype="FLOAT")
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF not audio")
    last = _wav(tmp_path / "last.wav", 0.5)
    out = tmp_path / "out.csv"
    files = [good, tail, str(click), str(loud), str(broken), last]
    for batch_size in ("1", "4"):
        code = main(["run", *files, "--chunk_s", "2", "--batch_size", batch_size,
                     "--output", str(out), "--overwrite"])  # fmt: skip
        stdout, stderr = capsys.readouterr()
        assert code == 1
        errors = stderr.strip().splitlines()
        assert [line.split(" ")[1] for line in errors] == ["click", "loud", "broken"], stderr
        assert "0.000 s of audio" in errors[0] and "value out of range;" in errors[1]
        assert all(line.startswith("error: ") for line in errors)
        texts = dict(line.split("\t") for line in stdout.strip().splitlines())
        assert list(texts) == ["good", "tail", "last"]
        assert (texts["good"], texts["last"]) == (f"{RATE} samples", f"{RATE // 2} samples")
        windows = [int(n) for n in texts["tail"].split()[::2]]  # "a samples b samples"
        assert len(windows) == 2 and sum(windows) == 2 * RATE + 5
        with open(out, newline="") as handle:
            rows = {row["ID"]: row for row in csv.DictReader(handle)}
        assert list(rows) == ["good", "tail", "click", "loud", "broken", "last"]
        assert rows["tail"]["text"] == texts["tail"] and rows["loud"]["error"]
    assert min(model.seen) >= RATE // 2


# ------------------------------------------------------------------ tiny random Whisper
ADAPTERS = {
    "lora": ("LoRA", {"rank": 2}),
    "poollora": ("PoolLoRA", {"rank": 2, "stride": 2}),
    "dora": ("DoRA", {"rank": 2}),
    "houlsby": ("Houlsby", {}),
    "peft-lora": ("peft_adapter", {"method": "lora", "r": 2}),
}


@pytest.fixture(scope="module")
def whisper_base(tmp_path_factory) -> str:
    from recipes.whisper.random_init import save_random_whisper

    return save_random_whisper(tmp_path_factory.mktemp("tiny-whisper") / "base")


def _whisper_asr(base: str, kind: str, tmp_path):
    """The command's model for an adapter file of ``kind`` (nonzero weights) on ``base``,
    on a 2 s window, as ``transcribe ADAPTER --base BASE --window_s 2`` loads it."""
    import adapters
    from recipes.transcribe import load_model
    from recipes.whisper.model import WindowedWhisper

    name, kwargs = ADAPTERS[kind]
    torch.manual_seed(0)
    whisper = WindowedWhisper(base, str(tmp_path / "hub"), 2.0, 2.0)
    model = adapters.AdaptedModel(
        whisper, getattr(adapters, name), all_linear=True, adapter_kwargs=dict(kwargs)
    )
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn(param.shape, generator=generator))
    model.save_adapter(str(tmp_path / "adapter.safetensors"))
    workdir = tmp_path / "work"
    workdir.mkdir()
    asr, _ = load_model(str(tmp_path / "adapter.safetensors"), base, "cpu", str(workdir), 2.0)
    return asr


def _noise(seconds: float, level: float, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return level * torch.randn(int(seconds * RATE), generator=generator)


def _greedy(asr, wavs: list[torch.Tensor], names: list[str | None], batch_size: int):
    """``transcribe`` on ``wavs`` with adapters ``names``; the texts, and the greedy
    tokens and per-step scores of the first recording (from the searcher itself)."""
    from recipes.transcribe import transcribe

    items = [Item(str(i), f"{i}.wav", name) for i, name in enumerate(names)]
    calls = []
    hook = asr.mods.decoder.register_forward_hook(lambda _m, _i, out: calls.append(out))
    load = {f"{i}.wav": wav for i, wav in enumerate(wavs)}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("recipes.transcribe.load_audio", lambda path, rate: load[path])
        transcribe(asr, items, batch_size, "fp32", chunk_s=2.0)
    hook.remove()
    assert not any(item.error for item in items), [item.error for item in items]
    hyps, _, scores, _ = calls[0]
    return [item.text for item in items], hyps[0], scores[0].view(-1)[: len(hyps[0]) + 1]


@pytest.mark.parametrize("kind", ["base", *ADAPTERS])
def test_a_transcript_is_the_same_alone_and_in_a_padded_batch(kind, whisper_base, tmp_path):
    """A quiet recording alone, then first in a batch of four with a loud one, longer and
    shorter ones, padded, half of them on another adapter (a mixed batch): the same greedy
    tokens and scores. The batch used to change the quiet one's features (SpeechBrain
    floors Whisper's log-mel at the batch's maximum), and LoRA took another path in a batch
    than alone (chosen by the batch's token count)."""
    asr = _whisper_asr(whisper_base, "lora" if kind == "base" else kind, tmp_path)
    own, other = (None, "default") if kind == "base" else ("default", None)
    quiet = _noise(1.2, 0.002, seed=1)
    mates = [_noise(2.0, 1.0, seed=2), _noise(0.5, 0.1, seed=3), _noise(1.7, 0.05, seed=4)]
    text, tokens, scores = _greedy(asr, [quiet], [own], batch_size=1)
    names = [own, other, own, other]
    texts, batched_tokens, batched_scores = _greedy(asr, [quiet, *mates], names, batch_size=4)
    assert texts[0] == text[0]
    assert batched_tokens == tokens
    # float noise only (1e-6 here); the batch's maximum used to move them by 1e-4 to 5e-2
    assert torch.allclose(batched_scores, scores, atol=1e-5), (batched_scores - scores).abs().max()
    # and with the same adapter for all: one batch, no mixing
    _, same_tokens, same_scores = _greedy(asr, [quiet, *mates], [own] * 4, batch_size=4)
    assert same_tokens == tokens and torch.allclose(same_scores, scores, atol=1e-5)


@pytest.mark.parametrize("kind", ["LoRA", "PoolLoRA"])
def test_lora_inference_computes_every_batch_the_same_way(kind):
    """In a batch whose token count crosses the few-token threshold, LoRA used to take the
    fused path (one matmul by W + sBA) and alone the low-rank branch: another rounding, so
    a sample's output changed with its batchmates (in the tiny Whisper's decoder, where
    the base's does not). Without gradients it is now base + branch for any batch."""
    import adapters

    torch.manual_seed(0)
    kwargs = {"rank": 2, "stride": 2} if kind == "PoolLoRA" else {"rank": 2}
    layer = getattr(adapters, kind)(torch.nn.Linear(64, 64), **kwargs).eval()
    torch.nn.init.normal_(layer.lora_B, std=0.5)
    x = torch.randn(16, 3, 64)  # 48 tokens batched (fused before), 3 alone (branch)
    with torch.no_grad():
        for batch in (x, x[:1]):
            expected = layer.base_layer(batch) + layer.lowrank_branch(batch)
            assert torch.equal(layer(batch), expected), batch.shape


def test_whisper_never_decodes_a_short_tail(whisper_base, tmp_path, monkeypatch):
    """2.05 s on a 2 s window used to be decoded as 2 s + 0.05 s."""
    asr = _whisper_asr(whisper_base, "lora", tmp_path)
    seen: list[int] = []
    decode = asr.transcribe_batch

    def spy(wavs, lengths):
        seen.extend(round(float(r) * wavs.shape[1]) for r in lengths)
        return decode(wavs, lengths)

    monkeypatch.setattr(asr, "transcribe_batch", spy)
    texts, _, _ = _greedy(asr, [_noise(2.05, 0.1, seed=5), _noise(0.3, 0.1, seed=6)],
                          ["default", "default"], batch_size=2)  # fmt: skip
    short, *windows = sorted(seen)
    assert short == int(0.3 * RATE)  # a short file is a short file
    assert len(windows) == 2 and sum(windows) == int(2.05 * RATE)
    assert min(windows) >= RATE // 2  # a quarter of the window at least
    assert all(texts)

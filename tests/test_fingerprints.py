"""What a figure depends on is fingerprinted: every column a task reads, every file it reads,
every setting that changes a figure. A change of any is seen: the "before" figures are
computed again, a continued run is refused. Scoring reads what the pipeline normalised.
VAD labels are checked segment by segment."""

from __future__ import annotations

import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from conftest import ASR_TINY
from safetensors.torch import save_file
from speechbrain.dataio.dataset import DynamicItemDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_runs import run, run_failing
from test_speaker_recipe import speaker_data  # noqa: F401  (the fixture)

from recipes.bookkeeping import changed_inputs, data_fingerprint, describe_setting

ROOT = Path(__file__).resolve().parents[1]


def train_py(task: str) -> str:
    return str(ROOT / "recipes" / task / "train.py")


def read_rows(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def write_rows(path: Path, rows: list[dict]) -> Path:
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def summary(folder: Path) -> dict:
    return json.loads((folder / "summary.json").read_text())


def recomputed(folder: Path) -> bool:
    """Whether the run in ``folder`` computed its "before" figures instead of reusing them."""
    log = (folder / "log.txt").read_text()
    return "computed from other inputs; recomputing" in log and "reusing" not in log


# ------------------------------------------------------------------------------ units
def test_data_fingerprint_covers_every_column_and_the_bytes_of_file_columns(tmp_path):
    """Labels, speaker IDs and references change the fingerprint; a moved corpus does not."""
    (tmp_path / "a").mkdir()
    for name in ("noisy", "clean"):
        soundfile.write(tmp_path / "a" / f"{name}.wav", np.full(800, 0.1), 16000)

    def fingerprint(folder: Path, **changed) -> str:
        row = {"wav": str(folder / "noisy.wav"), "clean_wav": str(folder / "clean.wav"),
               "duration": 0.05, "speech": "0.0-0.02", "spk_id": "s1", **changed}  # fmt: skip
        return data_fingerprint(DynamicItemDataset({"u1": row}), ("wav", "clean_wav"))

    first = fingerprint(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert fingerprint(tmp_path / "b") == first  # the same contents elsewhere
    assert fingerprint(tmp_path / "a", speech="0.0-0.04") != first
    assert fingerprint(tmp_path / "a", spk_id="s2") != first
    soundfile.write(tmp_path / "a" / "clean.wav", np.full(800, 0.2), 16000)  # same path
    assert fingerprint(tmp_path / "a") != first


class Search:
    """A decoder as the YAML builds one: settings from its constructor, state it gathers."""

    def __init__(self, beam_size: int, max_decode_ratio: float = 1.0) -> None:
        self.beam_size, self.max_decode_ratio = beam_size, max_decode_ratio
        self.cache = None


def test_objects_are_described_by_their_settings_and_changes_are_named():
    described = describe_setting(Search(4, 0.1))
    assert described == {"class": f"{__name__}.Search", "beam_size": 4, "max_decode_ratio": 0.1}
    assert describe_setting(Search(4, 0.2)) != described
    searcher = Search(4, 0.1)
    searcher.cache = 3  # state gathered while decoding is not a setting
    assert describe_setting(searcher) == described
    recorded = {"base": "b", "data": {}, "settings": {}, "evaluation": {"test_search": "1"}}
    current = {**recorded, "evaluation": {"test_search": "2"}}
    assert changed_inputs(recorded, current) == ["the evaluation input test_search"]


# ------------------------------------------------------------------------------ VAD
def vad_manifest(tmp_path: Path, speech: list[str]) -> Path:
    """Two-second recordings with the given ``speech`` column."""
    rows = []
    for i, segments in enumerate(speech):
        path = tmp_path / f"u{i}.wav"
        soundfile.write(path, np.random.default_rng(i).standard_normal(32000) * 0.1, 16000)
        rows.append({"ID": f"u{i}", "duration": "2.0", "wav": str(path), "speech": segments})
    return write_rows(tmp_path / "vad.csv", rows)


def vad_datasets(tmp_path: Path, manifest: Path):
    from recipes.vad.train import dataio_prepare

    hparams = {"data_folder": str(tmp_path), "min_audio_s": 0.3, "train_csv": str(manifest),
               "valid_csv": str(manifest), "test_sets": None, "sample_rate": 16000}  # fmt: skip
    return dataio_prepare(hparams, {})


@pytest.mark.parametrize(
    ("speech", "expected"),
    [
        (["0.1-0.3", "2.5-2.8 0.2-0.4"], "'2.5-2.8' ends at 2.8 s, after the recording"),
        (["0.1-0.3", "nan-1.9"], "'nan-1.9' holds a value that is not a finite number"),
        (["0.1-0.3", "0.6-0.4"], "'0.6-0.4' is not a time span"),
        (["", ""], "labels no speech in any of its 2 recordings"),
    ],
)
def test_vad_labels_are_checked_segment_by_segment(tmp_path, speech, expected):
    """A segment past the end listed first, a NaN, a reversed span: refused naming the
    file, the ID and the value; a training set without any speech is refused."""
    manifest = vad_manifest(tmp_path, speech)
    with pytest.raises(ValueError) as error:
        vad_datasets(tmp_path, manifest)
    message = str(error.value)
    assert expected in message and str(manifest) in message
    if any(speech):
        assert "ID u1" in message


def test_vad_labels_that_fit_are_read_as_listed(tmp_path):
    train, _, _ = vad_datasets(tmp_path, vad_manifest(tmp_path, ["0.0-0.064", "0.5-0.6 0.1-0.2"]))
    labels = {item["id"]: item["labels"] for item in train}
    assert labels["u0"][:3].tolist() == [1.0, 1.0, 0.0] and labels["u0"].shape == (63,)
    assert labels["u1"].sum() > 0


@pytest.fixture(scope="module")
def vad_run(tmp_path_factory):
    """A one-epoch LoRA run of a random Silero VAD on the tiny scenes, sharing a before cache."""
    from recipes.vad.model import SileroVAD

    tmp = tmp_path_factory.mktemp("vad_fingerprints")
    torch.manual_seed(0)
    state = {k: v.contiguous() for k, v in SileroVAD().state_dict().items()}
    state["stft_basis"] = torch.randn(258, 1, 256) * 0.05
    save_file(state, tmp / "random.safetensors")
    common = [
        "--corpus_size=tiny", f"--data_folder={tmp / 'corpus'}", "--real_speech=False",
        f"--base_checkpoint={tmp / 'random.safetensors'}", "--num_workers=0", "--batch_size=2",
        "--n_warmup_steps=1", "--rank=2", "--alpha=4", "--lr=0.02",
        f"--before_cache={tmp / 'before.json'}",
    ]  # fmt: skip
    run(train_py("vad"), "hparams/lora_vad.yaml", *common, "--number_of_epochs=1",
        f"--output_folder={tmp / 'first'}")  # fmt: skip
    return {"tmp": tmp, "corpus": tmp / "corpus", "common": common}


def test_vad_before_figures_follow_the_test_labels(vad_run, tmp_path):
    """The test set's speech segments change (audio and IDs the same): the "before" figures
    are computed again, not taken from the cache the first run filled."""
    corpus = vad_run["corpus"]
    rows = read_rows(corpus / "noisy_vad_test.csv")
    for row in rows:
        row["speech"] = row["speech"].split()[0]  # only the first utterance is speech now
    relabelled = write_rows(tmp_path / "relabelled.csv", rows)
    out = tmp_path / "relabelled_run"
    run(
        train_py("vad"), "hparams/lora_vad.yaml", *vad_run["common"], "--number_of_epochs=1",
        f"--test_sets={{target: {relabelled}, source: {corpus / 'source_vad_test.csv'}}}",
        f"--output_folder={out}",
    )  # fmt: skip
    first = summary(vad_run["tmp"] / "first")["before"]
    assert recomputed(out)
    assert summary(out)["before"]["target"] != first["target"]
    assert summary(out)["before"]["source"] == first["source"]  # the same inputs, same figures


def test_vad_run_continued_after_its_labels_changed_is_refused(vad_run, tmp_path):
    """Continuing a finished one-epoch run for a second epoch with other training labels
    (one recording's, or all of them removed) stops with a message naming what changed."""
    out = tmp_path / "continued"
    shutil.copytree(vad_run["tmp"] / "first", out)
    (out / ".lock").unlink(missing_ok=True)
    rows = read_rows(vad_run["corpus"] / "noisy_vad_train.csv")
    rows[0]["speech"] = rows[0]["speech"].split()[0]
    one = write_rows(tmp_path / "one_changed.csv", rows)
    args = [train_py("vad"), "hparams/lora_vad.yaml", *vad_run["common"],
            "--number_of_epochs=2", f"--output_folder={out}"]  # fmt: skip
    message = run_failing(*args, f"--train_csv={one}")
    assert "changed: the data of train" in message and "--fresh_start True" in message
    for row in rows:
        row["speech"] = ""
    none = write_rows(tmp_path / "no_labels.csv", rows)
    message = run_failing(*args, f"--train_csv={none}")
    assert f"The training set {none} labels no speech" in message
    assert summary(out) == summary(vad_run["tmp"] / "first")  # nothing was trained on


# ------------------------------------------------------------------------------ enhancement
def test_enhancement_before_figures_follow_the_clean_references(tmp_path):
    """The test set's clean references are rewritten in place (same paths, same lengths,
    other audio): the "before" SI-SNR is computed again, not taken from the cache."""
    from recipes.enhancement.model import NSNet2

    torch.manual_seed(0)
    net = NSNet2(hidden_size=16, fc_size=16)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp_path / "base.st")
    corpus = tmp_path / "corpus"
    common = [
        "--corpus_size=tiny", f"--data_folder={corpus}", f"--base_checkpoint={tmp_path / 'base.st'}",
        "--hidden_size=16", "--fc_size=16", "--num_workers=0", "--batch_size=4", "--rank=2",
        "--alpha=4", "--lr=0.03", "--n_warmup_steps=1", "--number_of_epochs=1",
        "--train_crop_s=1.0", "--plot_examples=[]", f"--before_cache={tmp_path / 'before.json'}",
    ]  # fmt: skip
    run(train_py("enhancement"), "hparams/lora_enhancement.yaml", *common,
        f"--output_folder={tmp_path / 'first'}")  # fmt: skip
    for row in read_rows(corpus / "noisy_clean_test.csv"):
        path = row["wav"].replace("$data_root", str(corpus))
        audio, rate = soundfile.read(path)
        soundfile.write(path, audio[::-1], rate)  # time-reversed: not this recording's speech
    out = tmp_path / "second"
    run(train_py("enhancement"), "hparams/lora_enhancement.yaml", *common,
        f"--output_folder={out}")  # fmt: skip
    assert recomputed(out)
    before, first = summary(out)["before"]["target"], summary(tmp_path / "first")["before"]
    assert before["SI-SNR"] < first["target"]["SI-SNR"] - 10  # against the wrong speech


# ------------------------------------------------------------------------------ speaker
def test_speaker_before_figures_follow_the_trial_list(speaker_data, tmp_path):  # noqa: F811
    """The target set's trials are given with their labels flipped: the "before" EER is
    computed again (and mirrors the first), not taken from the cache."""
    from test_speaker_recipe import TINY, _data_args

    from recipes.corpus.trials import read_trials

    common = [train_py("speaker"), "hparams/lora_speaker.yaml", *TINY, *_data_args(speaker_data),
              "--number_of_epochs=1", f"--before_cache={tmp_path / 'before.json'}"]  # fmt: skip
    run(*common, f"--output_folder={tmp_path / 'first'}")
    trials = read_trials(tmp_path / "first" / "trials" / "target.txt")
    flipped = tmp_path / "flipped.txt"
    flipped.write_text("".join(f"{1 - label} {a} {b}\n" for label, a, b in trials))
    out = tmp_path / "second"
    run(*common, f"--trial_lists={{target: {flipped}}}", f"--output_folder={out}")
    assert recomputed(out)
    first = summary(tmp_path / "first")["before"]
    assert summary(out)["before"]["target"]["EER"] != first["target"]["EER"]
    assert summary(out)["before"]["source"] == first["source"]


# ------------------------------------------------------------------------------ ASR scoring
def cased_and_normalised(manifest: Path, folder: Path, normalise) -> dict[str, Path]:
    """The manifest with cased, punctuated transcripts, and with the same text normalised."""
    rows = read_rows(manifest)
    cased = []
    for row in rows:
        words = row["wrd"].lower().split()
        words[0] = words[0].capitalize() + ","
        cased.append({**row, "wrd": " ".join(words) + "."})
    plain = [{**row, "wrd": normalise(row["wrd"])} for row in cased]
    assert any("," in row["wrd"] for row in cased) and not any("," in r["wrd"] for r in plain)
    return {"cased": write_rows(folder / "cased.csv", cased),
            "normalised": write_rows(folder / "normalised.csv", plain)}  # fmt: skip


def test_conformer_scores_what_the_pipeline_normalised(asr_base, tmp_path):
    """The same audio with cased, punctuated references and with normalised ones: equal
    WER and CER (the raw column no longer shadows the normalised text)."""
    from recipes.text_normalization import inventory_text

    corpus = asr_base["corpus"]
    tokens = " 'ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    sets = cased_and_normalised(
        corpus / "noisy_test.csv", tmp_path, lambda text: inventory_text(text, tokens)[0]
    )
    out = tmp_path / "run"
    run(
        train_py("asr"), "hparams/lora_asr.yaml", *ASR_TINY, f"--data_folder={corpus}",
        f"--base_checkpoint={asr_base['base']}", "--evaluate_only=True",
        f"--test_sets={{cased: {sets['cased']}, normalised: {sets['normalised']}}}",
        f"--output_folder={out}",
    )  # fmt: skip
    after = summary(out)["after"]
    assert after["cased"] == after["normalised"] and after["cased"]["n"] == 6


def test_conformer_before_figures_follow_the_architecture_settings(asr_base, tmp_path):
    """The audio read at 12 kHz instead of 16 kHz by the same weights (same shapes, other
    figures): the "before" WER is computed again, not taken from the cache."""
    hparams = tmp_path / "lora_asr.yaml"  # the Conformer YAMLs share no cache: one added
    cache = f"\nbefore_cache: {tmp_path / 'before.json'}\n"
    hparams.write_text((ROOT / "hparams" / "lora_asr.yaml").read_text() + cache)
    common = [train_py("asr"), str(hparams), *ASR_TINY, "--number_of_epochs=1",
              f"--data_folder={asr_base['corpus']}", f"--base_checkpoint={asr_base['base']}"]  # fmt: skip
    run(*common, f"--output_folder={tmp_path / 'first'}")
    out = tmp_path / "second"
    run(*common, "--sample_rate=12000", f"--output_folder={out}")
    assert recomputed(out)
    assert summary(out)["before"] != summary(tmp_path / "first")["before"]


# ------------------------------------------------------------------------------ Whisper
@pytest.fixture(scope="module")
def whisper_run(tmp_path_factory):
    """A tiny random Whisper adapted for one epoch, filling a before cache."""
    from test_whisper_recipe import TINY

    from recipes.whisper.random_init import save_random_whisper

    tmp = tmp_path_factory.mktemp("whisper_fingerprints")
    source = save_random_whisper(tmp / "tiny-whisper")
    common = [f"--data_folder={tmp / 'corpus'}", f"--whisper_source={source}",
              f"--hub_cache={tmp / 'hub'}", f"--before_cache={tmp / 'before.json'}", *TINY]  # fmt: skip
    run(
        train_py("whisper"),
        "hparams/lora_whisper.yaml",
        *common,
        f"--output_folder={tmp / 'first'}",
    )
    return {"tmp": tmp, "common": common}


def test_whisper_before_figures_follow_the_decoding_settings(whisper_run, tmp_path):
    """The YAML's max_decode_ratio changes: the "before" WER is computed again, and a run
    continued with it is refused naming the searcher."""
    text = (ROOT / "hparams" / "lora_whisper.yaml").read_text()
    assert "    max_decode_ratio: 0.1\n" in text
    hparams = tmp_path / "lora_whisper.yaml"
    hparams.write_text(text.replace("    max_decode_ratio: 0.1\n", "    max_decode_ratio: 0.02\n"))
    out = tmp_path / "run"
    run(train_py("whisper"), str(hparams), *whisper_run["common"], f"--output_folder={out}")
    assert recomputed(out)
    assert summary(out)["before"] != summary(whisper_run["tmp"] / "first")["before"]
    continued = tmp_path / "continued"
    shutil.copytree(whisper_run["tmp"] / "first", continued)
    (continued / ".lock").unlink(missing_ok=True)
    message = run_failing(
        train_py("whisper"), str(hparams), *whisper_run["common"], "--number_of_epochs=2",
        f"--output_folder={continued}",
    )  # fmt: skip
    assert "the evaluation input test_search" in message
    assert "the evaluation input valid_search" in message


def test_whisper_scores_what_the_pipeline_normalised(whisper_run, tmp_path):
    from recipes.text_normalization import normalize_text

    corpus = whisper_run["tmp"] / "corpus"
    sets = cased_and_normalised(corpus / "noisy_test.csv", tmp_path, normalize_text)
    out = tmp_path / "run"
    run(
        train_py("whisper"), "hparams/lora_whisper.yaml", *whisper_run["common"],
        "--evaluate_only=True", f"--output_folder={out}",
        f"--test_sets={{cased: {sets['cased']}, normalised: {sets['normalised']}}}",
    )  # fmt: skip
    after = summary(out)["after"]
    assert after["cased"] == after["normalised"] and after["cased"]["n"] == 4

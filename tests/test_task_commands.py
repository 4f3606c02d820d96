"""The speaker, VAD and enhancement commands: an adapter file with ``--base`` computes what
the run folder computes, several adapter sets serve one batch, and an unknown set is one
file's error."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import test_enhancement_recipe as enhancement_tests
import test_speaker_recipe as speaker_tests
import test_vad_recipe as vad_tests
from recipe_runs import run

from recipes.audio import load_audio

ROOT = Path(__file__).resolve().parents[1]
#: The recipe tests' module fixtures (their corpus and tiny bases), built once for this module.
speaker_data = speaker_tests.speaker_data
random_base = vad_tests.random_base
tiny_base = enhancement_tests.tiny_base
TOL = 1e-5
LSB = 1.5 / 32768  # written files are 16-bit: one rounding step apart at most


@pytest.fixture(scope="module")
def speaker_run(speaker_data, tmp_path_factory):
    """A tiny LoRA run on the encoder's Linear only (adapters that mix in one batch)."""
    out = tmp_path_factory.mktemp("speaker_run") / "lora"
    run(
        "recipes/speaker/train.py", "hparams/lora_speaker.yaml", *speaker_tests.TINY,
        *speaker_tests._data_args(speaker_data), "--all_linear=False", "--target_layers=[linear]",
        "--rank=2", "--alpha=4", "--lr=0.05", "--n_warmup_steps=1", "--number_of_epochs=2",
        f"--output_folder={out}", f"--before_cache={out.parent / 'before.json'}",
    )  # fmt: skip
    return out


@pytest.fixture(scope="module")
def vad_run(random_base, tmp_path_factory):
    """A tiny LoRA run on the encoder's convolutions only (adapters that mix in one batch)."""
    tmp = tmp_path_factory.mktemp("vad_run")
    run(
        "recipes/vad/train.py", "hparams/lora_vad.yaml", "--corpus_size=tiny",
        f"--data_folder={tmp / 'corpus'}", f"--base_checkpoint={random_base}",
        "--real_speech=False", "--num_workers=0", "--batch_size=2", "--n_warmup_steps=1",
        "--number_of_epochs=2", "--all_linear=False", "--rank=2", "--alpha=4", "--lr=0.05",
        f"--output_folder={tmp / 'lora'}", f"--before_cache={tmp / 'before.json'}",
    )  # fmt: skip
    return tmp / "lora", tmp / "corpus"


@pytest.fixture(scope="module")
def enhancement_run(tiny_base, tmp_path_factory):
    """A tiny LoRA run on the Linear layers only (adapters that mix in one batch)."""
    tmp = tmp_path_factory.mktemp("enhancement_run")
    run(
        "recipes/enhancement/train.py", "hparams/lora_enhancement.yaml", *enhancement_tests.TINY,
        f"--data_folder={tmp / 'corpus'}", f"--base_checkpoint={tiny_base / 'tiny.safetensors'}",
        "--all_linear=False", "--target_layers=[mask_net.fc_in, mask_net.fc_out.0, mask_net.fc_out.2, mask_net.fc_out.4]",
        "--rank=2", "--alpha=4", "--lr=0.05", "--number_of_epochs=2",
        f"--output_folder={tmp / 'lora'}", f"--before_cache={tmp / 'before.json'}",
    )  # fmt: skip
    return tmp / "lora", tmp / "corpus"


def _errors(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error: ")]


def _manifest(path: Path, rows: list[tuple[Path, str]]) -> Path:
    """A manifest with an adapter column."""
    lines = ["ID,wav,adapter"] + [f"r{i},{wav},{name}" for i, (wav, name) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _interface(source: Path, base: Path | None, name: str, recipe: str, workdir: Path):
    """The command's model for SOURCE (and ``--base``), its own adapter loaded."""
    from recipes.adapter_sets import adapted_model_of, load_adapter_sets, load_task_source

    model, own = load_task_source(source, base, name, recipe, workdir)
    load_adapter_sets(adapted_model_of(model), [], own)
    return model


def _padded(wavs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([len(w) for w in wavs], dtype=torch.float)
    return torch.nn.utils.rnn.pad_sequence(wavs, batch_first=True), lengths / lengths.max()


# ---------------------------------------------------------------- speaker verification


def _trials(run_folder: Path, tmp: Path, count: int = 6) -> Path:
    from recipes.corpus.trials import read_trials

    trials = read_trials(run_folder / "trials" / "target.txt")[:count]
    listed = tmp / "trials.txt"
    listed.write_text("".join(f"{k} {e} {t}\n" for k, e, t in trials))
    return listed


def _scores(path: Path) -> list[float]:
    return [float(row["score"]) for row in csv.DictReader(path.open())]


def test_verify_an_adapter_file_on_its_base_scores_as_the_run(speaker_data, speaker_run, tmp_path):
    from recipes.verify import main

    folder, listed = speaker_data["folder"], _trials(speaker_run, tmp_path)
    common = ["--trials", str(listed), "--audio-root", str(folder), "--batch_size", "4"]
    adapter = str(speaker_run / "adapter.safetensors")
    outputs = {}
    for label, source in {
        "run": [str(speaker_run)],
        "checkpoint": [adapter, "--base", str(folder / "tiny.safetensors")],
        "run_base": [adapter, "--base", str(speaker_run / "inference")],
        "base": [str(speaker_run), "--adapter", "none"],
    }.items():
        outputs[label] = tmp_path / f"{label}.csv"
        assert main([*source, *common, "--output", str(outputs[label])]) == 0
    run_scores = _scores(outputs["run"])
    assert len(run_scores) == 6
    for label in ("checkpoint", "run_base"):
        assert np.allclose(_scores(outputs[label]), run_scores, atol=TOL)
    assert np.abs(np.subtract(_scores(outputs["base"]), run_scores)).max() > 1e-3


def test_speaker_embeddings_of_two_adapters_in_one_mixed_batch_are_each_alone(
    speaker_data, speaker_run, tmp_path
):
    from recipes.adapter_sets import adapted_model_of

    verifier = _interface(
        speaker_run, None, "SpeakerVerifier", "recipes/speaker/train.py", tmp_path
    )
    assert adapted_model_of(verifier).can_mix() is None  # LoRA on the Linear only: it mixes
    files = sorted(speaker_data["folder"].glob("*.wav"))[:4]
    wavs, lens = _padded([verifier.load_audio(f) for f in files])
    names = ["default", None, None, "default"]
    mixed = verifier.encode_batch(wavs, lens, adapters=names)[:, 0]
    for name in ("default", None):
        alone = verifier.encode_batch(wavs, lens, adapters=[name] * 4)[:, 0]
        rows = [i for i, n in enumerate(names) if n == name]
        assert torch.allclose(mixed[rows], alone[rows], atol=TOL)
        for row in rows:  # and each file on its own, unpadded
            single = verifier.encode_batch(verifier.load_audio(files[row])[None], adapters=[name])
            assert torch.allclose(mixed[row], single[0, 0], atol=TOL)
    other = [i for i, n in enumerate(names) if n is None]
    assert (mixed[other] - verifier.encode_batch(wavs, lens)[other, 0]).abs().max() > 1e-3


def test_verify_reports_an_unknown_adapter_and_a_set_that_does_not_load(
    speaker_data, speaker_run, tmp_path, capsys
):
    from recipes.verify import main

    folder, listed = speaker_data["folder"], _trials(speaker_run, tmp_path)
    common = [str(speaker_run), "--trials", str(listed), "--audio-root", str(folder)]
    assert main([*common, "--adapter", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert len(_errors(err)) == 1 and "'nosuch' is not loaded" in err
    output = tmp_path / "scores.csv"
    bad = ["--adapter", f"bad={tmp_path / 'missing.safetensors'}", "--output", str(output)]
    assert main([*common, *bad]) == 1
    err = capsys.readouterr().err
    assert len(_errors(err)) == 1 and "--adapter bad=" in err
    assert len(_scores(output)) == 6  # every trial scored with the run's adapter


# ---------------------------------------------------------------- voice activity detection


def _vad_wavs(corpus: Path, count: int = 2) -> list[Path]:
    rows = list(csv.DictReader((corpus / "noisy_vad_test.csv").open()))[:count]
    return [Path(r["wav"].replace("$data_root", str(corpus))) for r in rows]


def _segments(path: Path) -> dict[str, list[tuple[float, float]]]:
    found: dict[str, list[tuple[float, float]]] = {}
    for row in csv.DictReader(path.open()):
        found.setdefault(row["ID"], []).append((float(row["start"]), float(row["end"])))
    return found


def test_segment_an_adapter_file_on_its_base_finds_what_the_run_finds(
    vad_run,
    random_base,
    tmp_path,
):
    from recipes.segment import main

    run_folder, corpus = vad_run
    wavs = [str(w) for w in _vad_wavs(corpus)]
    adapter = str(run_folder / "adapter.safetensors")
    out_run, out_file = tmp_path / "run.csv", tmp_path / "file.csv"
    assert main([str(run_folder), *wavs, "--output", str(out_run)]) == 0
    assert main([adapter, *wavs, "--base", str(random_base), "--output", str(out_file)]) == 0
    assert _segments(out_file) == _segments(out_run) and _segments(out_run)
    recipe = "recipes/vad/train.py"
    ours = _interface(Path(adapter), random_base, "SpeechDetector", recipe, tmp_path / "a")
    theirs = _interface(run_folder, None, "SpeechDetector", recipe, tmp_path / "b")
    for wav in wavs:
        assert torch.allclose(
            ours.get_speech_prob_file(wav), theirs.get_speech_prob_file(wav), atol=TOL
        )


def test_segment_mixes_two_adapters_in_one_batch_as_each_alone(vad_run, tmp_path):
    from recipes.adapter_sets import adapted_model_of
    from recipes.segment import main

    run_folder, corpus = vad_run
    wavs = _vad_wavs(corpus)
    detector = _interface(run_folder, None, "SpeechDetector", "recipes/vad/train.py", tmp_path)
    assert adapted_model_of(detector).can_mix() is None  # LoRA on the convolutions: it mixes
    signals = [load_audio(str(w), detector.hparams.sample_rate) for w in wavs]
    padded, _ = _padded(signals)
    names = ["default", None]
    mixed = detector.get_speech_prob_chunk(padded, adapters=names)[:, :, 0]
    for row, (wav, name) in enumerate(zip(signals, names)):
        alone = detector.get_speech_prob_chunk(wav[None], adapters=[name])[0, :, 0]
        assert torch.allclose(mixed[row, : len(alone)], alone, atol=TOL)
        other = detector.get_speech_prob_chunk(wav[None], adapters=[names[1 - row]])[0, :, 0]
        assert (alone - other).abs().max() > 1e-3  # the two adapters differ
    # the command: one manifest, both files with both adapters, one batch of four
    rows = [(wavs[0], "default"), (wavs[0], "none"), (wavs[1], "none"), (wavs[1], "default")]
    manifest = _manifest(tmp_path / "mixed.csv", rows)
    out = tmp_path / "mixed_segments.csv"
    assert main([str(run_folder), str(manifest), "--output", str(out), "--batch_size", "4"]) == 0
    stems = [w.stem for w in wavs]
    ids = {"default": [stems[0], f"{stems[1]}-2"], "none": [f"{stems[0]}-2", stems[1]]}
    found = _segments(out)
    for name, (first, second) in ids.items():
        alone = tmp_path / f"{name}.csv"
        args = [str(run_folder), *map(str, wavs), "--adapter", name, "--output", str(alone)]
        assert main(args) == 0
        expected = _segments(alone)
        assert found.get(first, []) == expected.get(stems[0], [])
        assert found.get(second, []) == expected.get(stems[1], [])


def test_segment_reports_an_unknown_adapter_and_segments_the_others(vad_run, tmp_path, capsys):
    from recipes.segment import main

    run_folder, corpus = vad_run
    wavs = _vad_wavs(corpus)
    manifest = _manifest(tmp_path / "m.csv", [(wavs[0], "nosuch"), (wavs[1], "none")])
    manifest_out = tmp_path / "speech.csv"
    assert main([str(run_folder), str(manifest), "--manifest", str(manifest_out)]) == 1
    err = capsys.readouterr().err
    assert len(_errors(err)) == 1 and wavs[0].name in err and "'nosuch' is not loaded" in err
    assert [row["ID"] for row in csv.DictReader(manifest_out.open())] == [wavs[1].stem]


# ---------------------------------------------------------------- enhancement


def _noisy(corpus: Path, count: int = 2) -> list[Path]:
    rows = list(csv.DictReader((corpus / "noisy_test.csv").open()))[:count]
    return [Path(r["wav"].replace("$data_root", str(corpus))) for r in rows]


def _read(path: Path) -> np.ndarray:
    return soundfile.read(path, dtype="float32")[0]


def test_enhance_an_adapter_file_on_its_base_writes_what_the_run_writes(
    enhancement_run,
    tiny_base,
    tmp_path,
):
    from recipes.enhance import main

    run_folder, corpus = enhancement_run
    noisy = [str(n) for n in _noisy(corpus)]
    adapter, base = run_folder / "adapter.safetensors", tiny_base / "tiny.safetensors"
    assert main([str(run_folder), *noisy, "--output-dir", str(tmp_path / "run")]) == 0
    args = [str(adapter), *noisy, "--base", str(base), "--output-dir", str(tmp_path / "file")]
    assert main(args) == 0
    for wav in map(Path, noisy):
        a, b = (
            _read(tmp_path / "run" / f"{wav.stem}.wav"),
            _read(tmp_path / "file" / f"{wav.stem}.wav"),
        )
        assert a.shape == b.shape and np.abs(a - b).max() <= LSB
    recipe = "recipes/enhancement/train.py"
    ours = _interface(adapter, base, "SpeechEnhancer", recipe, tmp_path / "a")
    theirs = _interface(run_folder, None, "SpeechEnhancer", recipe, tmp_path / "b")
    for wav in noisy:
        assert torch.allclose(ours.enhance_file(wav), theirs.enhance_file(wav), atol=TOL)


def test_enhance_mixes_two_adapters_in_one_batch_as_each_alone(enhancement_run, tmp_path):
    from recipes.adapter_sets import adapted_model_of
    from recipes.enhance import main

    run_folder, corpus = enhancement_run
    noisy = _noisy(corpus)
    recipe = "recipes/enhancement/train.py"
    enhancer = _interface(run_folder, None, "SpeechEnhancer", recipe, tmp_path)
    assert adapted_model_of(enhancer).can_mix() is None  # LoRA on the Linears: it mixes
    signals = [enhancer.load_audio(n) for n in noisy]
    padded, lens = _padded(signals)
    names = [None, "default"]
    mixed = enhancer.enhance_batch(padded, lens, adapters=names)
    for row, (wav, name) in enumerate(zip(signals, names)):
        alone = enhancer.enhance_batch(wav[None], adapters=[name])[0]
        assert torch.allclose(mixed[row, : len(wav)], alone, atol=TOL)
        other = enhancer.enhance_batch(wav[None], adapters=[names[1 - row]])[0]
        assert (alone - other).abs().max() > 1e-3  # the two adapters differ
    # the command: one manifest, both files with both adapters, one batch of four
    rows = [(noisy[0], "default"), (noisy[0], "none"), (noisy[1], "none"), (noisy[1], "default")]
    manifest = _manifest(tmp_path / "mixed.csv", rows)
    mixed_dir = tmp_path / "mixed"
    assert (
        main([str(run_folder), str(manifest), "--output-dir", str(mixed_dir), "--batch_size", "4"])
        == 0
    )
    stems = [n.stem for n in noisy]
    written = {"default": [stems[0], f"{stems[1]}-2"], "none": [f"{stems[0]}-2", stems[1]]}
    for name, targets in written.items():
        alone = tmp_path / name
        assert (
            main([str(run_folder), *map(str, noisy), "--adapter", name, "--output-dir", str(alone)])
            == 0
        )
        for stem, target in zip(stems, targets):
            a, b = _read(mixed_dir / f"{target}.wav"), _read(alone / f"{stem}.wav")
            assert a.shape == b.shape and np.abs(a - b).max() <= LSB


def test_enhance_reports_an_unknown_adapter_and_writes_the_others(
    enhancement_run, tmp_path, capsys
):
    from recipes.enhance import main

    run_folder, corpus = enhancement_run
    noisy = _noisy(corpus)
    manifest = _manifest(tmp_path / "m.csv", [(noisy[0], "nosuch"), (noisy[1], "")])
    target = tmp_path / "out"
    assert main([str(run_folder), str(manifest), "--output-dir", str(target)]) == 1
    err = capsys.readouterr().err
    assert len(_errors(err)) == 1 and noisy[0].name in err and "'nosuch' is not loaded" in err
    assert sorted(p.name for p in target.iterdir()) == [f"{noisy[1].stem}.wav"]

"""Speech enhancement recipe: the ONNX port's semantics, clean references, a tiny run end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
import yaml
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_runs import epoch_losses, run, run_two_processes, written_once

from recipes.audio import load_audio
from recipes.common import read_manifest
from recipes.enhancement.model import NSNet2, NSNet2Enhancer, enhance_waveforms, si_snr
from recipes.enhancement.pretrained import nsnet2_state

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "recipes" / "enhancement" / "train.py"
HIDDEN, FC = 6, 5


def _sigmoid(x):
    return 1 / (1 + np.exp(-x))


def _onnx_reference(init: dict[str, np.ndarray], features: np.ndarray) -> np.ndarray:
    """NSNet2's ONNX graph evaluated by hand with ONNX's operator definitions (GRU gates
    z, r, h; linear_before_reset=1)."""
    x = np.maximum(features @ init["172"] + init["fc_in.0.bias"], 0)
    for w, r, b in (("192", "193", "194"), ("212", "213", "214")):
        W, R, B = init[w][0], init[r][0], init[b][0]
        Wz, Wr, Wh = np.split(W, 3)
        Rz, Rr, Rh = np.split(R, 3)
        Wbz, Wbr, Wbh, Rbz, Rbr, Rbh = np.split(B, 6)
        h = np.zeros(HIDDEN)
        out = []
        for frame in x:
            z = _sigmoid(frame @ Wz.T + h @ Rz.T + Wbz + Rbz)
            rr = _sigmoid(frame @ Wr.T + h @ Rr.T + Wbr + Rbr)
            candidate = np.tanh(frame @ Wh.T + rr * (h @ Rh.T + Rbh) + Wbh)
            h = (1 - z) * candidate + z * h
            out.append(h)
        x = np.stack(out)
    x = np.maximum(x @ init["215"] + init["fc_out.0.bias"], 0)
    x = np.maximum(x @ init["216"] + init["fc_out.2.bias"], 0)
    return _sigmoid(x @ init["217"] + init["fc_out.4.bias"])


def test_converted_onnx_weights_compute_what_the_onnx_graph_computes():
    rng = np.random.default_rng(0)
    shapes = {
        "172": (161, HIDDEN), "fc_in.0.bias": (HIDDEN,),
        "192": (1, 3 * HIDDEN, HIDDEN), "193": (1, 3 * HIDDEN, HIDDEN), "194": (1, 6 * HIDDEN),
        "212": (1, 3 * HIDDEN, HIDDEN), "213": (1, 3 * HIDDEN, HIDDEN), "214": (1, 6 * HIDDEN),
        "215": (HIDDEN, FC), "fc_out.0.bias": (FC,), "216": (FC, FC), "fc_out.2.bias": (FC,),
        "217": (FC, 161), "fc_out.4.bias": (161,),
    }  # fmt: skip
    init = {k: rng.standard_normal(v).astype(np.float32) * 0.5 for k, v in shapes.items()}
    net = NSNet2(hidden_size=HIDDEN, fc_size=FC)
    net.load_state_dict(nsnet2_state(init), strict=True)
    features = rng.standard_normal((7, 161)).astype(np.float32)
    with torch.no_grad():
        ours = net(torch.from_numpy(features)[None])[0].numpy()
    assert np.abs(ours - _onnx_reference(init, features)).max() < 1e-5


def test_si_snr_ignores_padding_and_scale():
    torch.manual_seed(0)
    clean = torch.randn(1, 800)
    noisy = clean + 0.3 * torch.randn(1, 800)
    expected = si_snr(noisy, clean, torch.tensor([800]))
    padded = torch.nn.functional.pad(torch.cat([noisy, 3 * clean]), (0, 200))
    padded[:, 800:] = 5.0  # garbage past the lengths
    reference = torch.nn.functional.pad(torch.cat([clean, clean]), (0, 200))
    scores = si_snr(padded, reference, torch.tensor([800, 800]))
    assert torch.allclose(scores[0], expected[0], atol=1e-4) and scores[1] > 60


def test_enhancer_with_unit_gains_gives_back_its_input():
    """Analysis and synthesis windows reconstruct the signal where frames overlap fully."""

    class Ones(torch.nn.Module):
        def forward(self, features):
            return torch.ones_like(features)

    wav = torch.randn(1, 4000)
    out = NSNet2Enhancer(Ones())(wav)
    # symmetric sqrt-Hann windows at 50% overlap: within 1% of the input inside the signal
    inner = slice(320, 3680)
    assert torch.allclose(out[:, inner], wav[:, inner], atol=0.01 * float(wav.abs().max()))


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("enhancement")
    torch.manual_seed(0)
    net = NSNet2(hidden_size=16, fc_size=16)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, tmp / "tiny.safetensors")
    return tmp


TINY = ("--corpus_size=tiny", "--hidden_size=16", "--fc_size=16", "--num_workers=0",
        "--batch_size=4", "--n_warmup_steps=1", "--train_crop_s=1.0")  # fmt: skip


@pytest.fixture(scope="module")
def lora_run(tiny_base, tmp_path_factory):
    """A tiny LoRA run (3 epochs) and its corpus, shared by the tests that read what it wrote."""
    tmp = tmp_path_factory.mktemp("enhancement_lora")
    out, data = tmp / "lora", tmp / "corpus"
    run(
        str(TRAIN), "hparams/lora_enhancement.yaml", *TINY, f"--data_folder={data}",
        f"--base_checkpoint={tiny_base / 'tiny.safetensors'}", "--rank=2", "--alpha=4",
        "--lr=0.03", "--number_of_epochs=3", f"--output_folder={out}",
        f"--before_cache={tmp / 'before.json'}",
    )  # fmt: skip
    return out, data


def test_lora_run_pairs_references_trains_and_reports_si_snr(lora_run):
    out, data = lora_run
    # only the target domain was generated, with its clean references, paired by ID
    assert sorted(p.name for p in data.glob("*_test.csv")) == [
        "noisy_clean_test.csv",
        "noisy_test.csv",
    ]
    noisy = (data / "noisy_test.csv").read_text().splitlines()
    clean = (data / "noisy_clean_test.csv").read_text().splitlines()
    assert [row.split(",")[0] for row in noisy] == [row.split(",")[0] for row in clean]
    # the noise is the difference: each pair's SI-SNR lies near the planned 5-15 dB
    for n_row, c_row in zip(noisy[1:], clean[1:]):
        n_wav, _ = soundfile.read(n_row.split(",")[2].replace("$data_root", str(data)))
        c_wav, _ = soundfile.read(c_row.split(",")[2].replace("$data_root", str(data)))
        score = si_snr(
            torch.tensor(n_wav)[None], torch.tensor(c_wav)[None], torch.tensor([len(n_wav)])
        )
        assert 3.0 < float(score) < 17.0

    summary = json.loads((out / "summary.json").read_text())
    assert summary["metric"] == "SI-SNRi"
    before, after = summary["before"]["target"], summary["after"]["target"]
    assert before["n"] == after["n"] == 6
    # LoRA r2 on fc_in, 3 fc_out Linears and the 4 GRU weights (3 gates x 16)
    lora = (161 + 16) + (16 + 16) + (16 + 16) + (16 + 161) + 4 * (48 + 16)
    assert summary["trainable_params"] == 2 * lora
    assert len(epoch_losses(out / "train_log.txt")) == 3
    assert after["SI-SNRi"] > before["SI-SNRi"] + 0.3  # it learnt (the crops differ each epoch)
    scores = (out / "details" / "target_after.txt").read_text().splitlines()
    assert len(scores) == 6
    mean_gain = np.mean([float(line.split()[1]) for line in scores])
    assert mean_gain == pytest.approx(after["SI-SNRi"], abs=0.01)
    stoi = [float(line.split()[2]) for line in scores]
    assert all(0 < x <= 1 for x in stoi) and np.mean(stoi) == pytest.approx(after["STOI"], abs=1e-3)
    for tag in ("before", "after"):
        for uid in ("noisy-test-00000", "noisy-test-00001"):
            assert (
                out / "details" / "spectrograms" / f"{uid}_target_{tag}.png"
            ).stat().st_size > 1000


def _test_pairs(data: Path) -> list[tuple[str, str]]:
    """(noisy, clean) paths of the tiny corpus's test set, paired by ID."""
    noisy = read_manifest(str(data / "noisy_test.csv"), str(data))
    clean = read_manifest(str(data / "noisy_clean_test.csv"), str(data))
    return [(row["wav"], clean[uid]["wav"]) for uid, row in noisy.items()]


def _scores(enhancer, pairs: list[tuple[str, str]]) -> list[float]:
    """SI-SNR (dB) of each noisy file enhanced by ``enhancer`` to its clean reference."""
    scores = []
    for noisy, clean in pairs:
        enhanced = enhancer.enhance_file(noisy)
        reference = load_audio(clean, 16000)
        scores.append(
            float(si_snr(enhanced[None], reference[None], torch.tensor([len(reference)])))
        )
    return scores


def test_the_inference_folder_enhances_from_anywhere_as_the_recipe_scored(
    tiny_base, lora_run, tmp_path, monkeypatch
):
    """``SpeechEnhancer.from_hparams`` from another directory gives, file by file, the SI-SNR
    the recipe reported for its test set after training (``details/target_after.txt``)."""
    from recipes.enhancement.interface import SpeechEnhancer

    out, data = lora_run
    monkeypatch.chdir(tmp_path)
    enhancer = SpeechEnhancer.from_hparams(source=str(out / "inference"))
    assert {p.name for p in (out / "inference").iterdir()} >= {"hyperparams.yaml", "adapter.ckpt"}
    ours = sorted(_scores(enhancer, _test_pairs(data)))
    lines = (out / "details" / "target_after.txt").read_text().splitlines()
    reported = sorted(float(line.split()[0]) for line in lines)
    assert len(ours) == len(reported) == 6
    assert np.allclose(ours, reported, atol=2e-3), (ours, reported)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["inference_folder"] == "inference"
    assert np.mean(ours) == pytest.approx(summary["after"]["target"]["SI-SNR"], abs=2e-3)
    # waveform for waveform: the recipe's model (base + adapter file) on a padded batch
    recipe_model = _adapted_enhancer(out / "adapter.safetensors", tiny_base / "tiny.safetensors")
    noisy = [load_audio(n, 16000) for n, _ in _test_pairs(data)]
    batch = torch.nn.utils.rnn.pad_sequence(noisy, batch_first=True)
    lens = torch.tensor([len(x) / batch.shape[1] for x in noisy])
    with torch.no_grad():
        expected = enhance_waveforms(recipe_model.eval(), batch, lens)
    for row, wav in enumerate(noisy):
        found = enhancer.enhance_file(_test_pairs(data)[row][0])
        assert torch.allclose(found, expected[row, : len(wav)], atol=1e-5)


def _adapted_enhancer(adapter: Path, base: Path) -> torch.nn.Module:
    """The LoRA run's enhancer rebuilt by hand: the tiny base and the run's adapter file."""
    from safetensors.torch import load_file

    from adapters import AdaptedModel, LoRA

    model = NSNet2Enhancer(NSNet2(hidden_size=16, fc_size=16))
    model.mask_net.load_state_dict(load_file(base))
    adapted = AdaptedModel(
        model, LoRA, all_linear=True, adapter_kwargs={"rank": 2, "alpha": 4},
        manual_adapter_insertion=True,
    )  # fmt: skip
    adapted.insert_adapters()
    adapted.load_adapter(str(adapter))
    return adapted


def test_enhance_command_writes_16khz_files_and_reports_a_bad_one(lora_run, tmp_path, capsys):
    from recipes.enhance import main
    from recipes.enhancement.interface import SpeechEnhancer

    out, data = lora_run
    noisy = [Path(n) for n, _ in _test_pairs(data)]
    other = tmp_path / "other"
    other.mkdir()
    audio, rate = soundfile.read(noisy[0])
    soundfile.write(other / noisy[0].name, audio[::2], rate // 2)  # same name, at 8 kHz
    (other / "broken.wav").write_bytes(b"not audio")
    target = tmp_path / "enhanced"
    args = [str(out), str(data / "noisy_test.csv"), str(other), "--output-dir", str(target)]
    assert main(args) == 1
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "broken.wav" in errors[0]
    names = sorted(p.name for p in target.iterdir())
    assert names == sorted([f"{p.stem}.wav" for p in noisy] + [f"{noisy[0].stem}-2.wav"])
    enhancer = SpeechEnhancer.from_hparams(source=str(out / "inference"))
    written, rate = soundfile.read(target / f"{noisy[1].stem}.wav", dtype="float32")
    assert rate == 16000
    expected = enhancer.enhance_file(noisy[1]).numpy()
    assert written.shape == expected.shape and np.abs(written - expected).max() < 1e-4
    resampled, rate = soundfile.read(target / f"{noisy[0].stem}-2.wav")
    assert rate == 16000 and len(resampled) == 2 * len(audio[::2])
    # an existing output is refused before any work, naming it; --overwrite replaces
    before = (target / f"{noisy[1].stem}.wav").read_bytes()
    (target / f"{noisy[1].stem}.wav").write_bytes(b"mine")
    assert main(args) == 2
    assert f"{noisy[0].stem}.wav exists" in capsys.readouterr().err
    assert (target / f"{noisy[1].stem}.wav").read_bytes() == b"mine"
    assert main([*args, "--overwrite"]) == 1
    assert (target / f"{noisy[1].stem}.wav").read_bytes() == before
    assert not [p for p in target.iterdir() if p.name.startswith(".")]  # no temporaries left


def test_an_enhancement_run_exports_a_merged_folder_that_enhances_alike(
    tiny_base, lora_run, tmp_path
):
    from safetensors.torch import load_file

    from recipes.enhancement.interface import SpeechEnhancer
    from recipes.export import main

    out, data = lora_run
    merged = tmp_path / "merged"
    assert main([str(out), "--to", "speechbrain", str(merged)]) == 0
    assert "adapter.ckpt" not in {p.name for p in merged.iterdir()}
    adapted = SpeechEnhancer.from_hparams(source=str(out / "inference"))
    plain = SpeechEnhancer.from_hparams(source=str(merged))
    assert type(plain.mods.enhance_model) is NSNet2Enhancer  # no adapters left
    noisy = _test_pairs(data)[0][0]
    a, b = adapted.enhance_file(noisy), plain.enhance_file(noisy)
    assert torch.allclose(a, b, atol=1e-5)
    base = NSNet2Enhancer(NSNet2(hidden_size=16, fc_size=16))
    base.mask_net.load_state_dict(load_file(tiny_base / "tiny.safetensors"))
    with torch.no_grad():
        untrained = enhance_waveforms(base, load_audio(noisy, 16000)[None], torch.ones(1))[0]
    assert (a - untrained).abs().max() > 1e-3  # the merge carried the adapter


def test_full_run_writes_an_inference_folder_with_the_best_weights(tiny_base, lora_run, tmp_path):
    """Full fine-tuning: ``model.ckpt`` is the best checkpoint's model (by SI-SNRi), and the
    folder enhances as the recipe scored."""
    from safetensors.torch import load_file

    from recipes.enhancement.interface import SpeechEnhancer

    _, data = lora_run
    out = tmp_path / "full"
    run(
        str(TRAIN), "hparams/full_enhancement.yaml", *TINY, f"--data_folder={data}",
        f"--base_checkpoint={tiny_base / 'tiny.safetensors'}", "--lr=0.003",
        "--number_of_epochs=2", "--evaluate_before=False", f"--output_folder={out}",
    )  # fmt: skip
    assert (out / "inference" / "model.ckpt").is_file()
    assert not (out / "inference" / "adapter.ckpt").exists()
    enhancer = SpeechEnhancer.from_hparams(source=str(out / "inference"))
    trained = enhancer.mods.enhance_model.state_dict()
    base = load_file(tiny_base / "tiny.safetensors")
    assert any(not torch.equal(trained[f"mask_net.{k}"], v) for k, v in base.items())
    checkpoints = {
        float(yaml.safe_load((ckpt / "CKPT.yaml").read_text())["SI-SNRi"]): ckpt
        for ckpt in (out / "save").glob("CKPT*")
    }
    best = torch.load(checkpoints[max(checkpoints)] / "model.ckpt", weights_only=True)
    assert all(torch.equal(trained[k], v) for k, v in best.items())
    summary = json.loads((out / "summary.json").read_text())
    ours = _scores(enhancer, _test_pairs(data))
    assert np.mean(ours) == pytest.approx(summary["after"]["target"]["SI-SNR"], abs=2e-3)


def _first_rows(manifest: Path, count: int, to: Path) -> Path:
    lines = manifest.read_text().splitlines(keepends=True)
    to.write_text("".join(lines[: count + 1]))
    return to


def test_two_processes_at_half_the_batch_train_what_one_process_trains(
    lora_run, tiny_base, tmp_path
):
    """Two gloo processes, each with batch B/2, against one process with batch B on the same 8
    utterances in the same order (``sorting: ascending``: unshuffled, each process taking
    every other one; crops are hashed from IDs; NSNet2 has no dropout nor BatchNorm; the loss
    is a mean of per-utterance SI-SNR, so DDP's averaged gradient is the full batch's), with
    the recipe's AdamW. Measured: the adapters differ by at most 1.7e-6 (lora_B reaches 0.06).
    Rank 0 alone writes the adapter and inference folder."""
    from safetensors.torch import load_file

    _, data = lora_run
    train = _first_rows(data / "noisy_train.csv", 8, tmp_path / "train.csv")
    clean = _first_rows(data / "noisy_clean_train.csv", 8, tmp_path / "clean.csv")
    assert [line.split(",")[0] for line in train.read_text().splitlines()] == [
        line.split(",")[0] for line in clean.read_text().splitlines()
    ]
    tiny = [arg for arg in TINY if not arg.startswith("--batch_size")]
    common = (
        *tiny, f"--data_folder={data}", f"--base_checkpoint={tiny_base / 'tiny.safetensors'}",
        "--rank=2", "--alpha=4", "--lr=0.03", "--number_of_epochs=1",
        "--sorting=ascending",
        f"--train_csv={train}", f"--train_clean_csv={clean}",
        f"--before_cache={tmp_path / 'before.json'}",
    )  # fmt: skip
    run(str(TRAIN), "hparams/lora_enhancement.yaml", *common, "--batch_size=4",
        f"--output_folder={tmp_path / 'one'}")  # fmt: skip
    run_two_processes(str(TRAIN), "hparams/lora_enhancement.yaml", *common, "--batch_size=2",
                      f"--output_folder={tmp_path / 'two'}")  # fmt: skip
    summary = written_once(tmp_path / "two")
    assert summary["method"] == "lora" and "after" in summary
    one = load_file(tmp_path / "one" / "adapter.safetensors")
    two = load_file(tmp_path / "two" / "adapter.safetensors")
    assert one.keys() == two.keys()
    trained = [k for k in one if "lora_B" in k]
    assert trained and all(one[k].abs().max() > 1e-3 for k in trained)  # two updates moved B
    for key in one:  # float32 sums in another order: equal within 1e-5
        assert torch.allclose(one[key], two[key], rtol=0, atol=1e-5), key

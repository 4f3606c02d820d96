"""Speech enhancement recipe: the ONNX port's semantics, clean references, a tiny run end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from recipe_runs import epoch_losses, run

from recipes.enhancement.model import NSNet2, NSNet2Enhancer, si_snr
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


def test_lora_run_pairs_references_trains_and_reports_si_snr(tiny_base, tmp_path):
    out, data = tmp_path / "lora", tmp_path / "corpus"
    run(
        str(TRAIN), "hparams/lora_enhancement.yaml", "--corpus_size=tiny", f"--data_folder={data}",
        f"--base_checkpoint={tiny_base / 'tiny.safetensors'}", "--hidden_size=16", "--fc_size=16",
        "--num_workers=0", "--batch_size=4", "--rank=2", "--alpha=4", "--lr=0.03",
        "--n_warmup_steps=1", "--number_of_epochs=3", "--train_crop_s=1.0",
        f"--output_folder={out}", f"--before_cache={tmp_path / 'before.json'}",
    )  # fmt: skip
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
    scores = (out / "si_snr_target_after.txt").read_text().splitlines()
    assert len(scores) == 6
    mean_gain = np.mean([float(line.split()[1]) for line in scores])
    assert mean_gain == pytest.approx(after["SI-SNRi"], abs=0.01)
    stoi = [float(line.split()[2]) for line in scores]
    assert all(0 < x <= 1 for x in stoi) and np.mean(stoi) == pytest.approx(after["STOI"], abs=1e-3)
    for tag in ("before", "after"):
        for uid in ("noisy-test-00000", "noisy-test-00001"):
            assert (out / "spectrograms" / f"{uid}_target_{tag}.png").stat().st_size > 1000

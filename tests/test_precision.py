"""Mixed precision: every adapter trains and evaluates under autocast (bf16 on CPU).

The fused LoRA/DoRA paths follow autocast; adapter weights, their gradients and the
optimizer state stay float32. Gradients under bf16 are compared with float32 ones.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from adapters import AdaptedModel, DoRA, Houlsby, LoRA, PoolLoRA

KINDS = [
    (LoRA, {"rank": 4}),
    (PoolLoRA, {"rank": 4, "stride": 2}),
    (DoRA, {"rank": 4}),
    (Houlsby, {}),
]


class Net(nn.Module):
    """Linear, conv, attention (raw weights) and a GRU (raw weights), batch first."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(24, 32)
        self.conv = nn.Conv1d(32, 32, 3, padding=1)
        self.attn = nn.MultiheadAttention(32, 4, batch_first=True)
        self.rnn = nn.GRU(32, 32, batch_first=True)
        self.out = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.inp(x))
        h = self.conv(h.transpose(1, 2)).transpose(1, 2)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.out(self.rnn(h)[0])


def _adapted(cls, kwargs) -> AdaptedModel:
    torch.manual_seed(0)
    model = AdaptedModel(Net(), cls, all_linear=True, all_conv=True, adapter_kwargs=kwargs)
    with torch.no_grad():  # move away from the identity so every gradient is non-trivial
        for name, param in model.named_parameters():
            if param.requires_grad and ("lora_B" in name or "up" in name):
                param.normal_(0, 0.05)
    return model


def _grads(model: nn.Module, x: torch.Tensor, target: torch.Tensor, bf16: bool):
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(x)
    loss = nn.functional.mse_loss(out.float(), target)
    loss.backward()
    return out, {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("cls, kwargs", KINDS, ids=[c.__name__ for c, _ in KINDS])
def test_bf16_training_step_matches_float32_within_bf16_tolerance(cls, kwargs):
    model = _adapted(cls, kwargs).train()
    reference = copy.deepcopy(model)
    x, target = torch.randn(4, 10, 24), torch.randn(4, 10, 8)
    out16, grads16 = _grads(model, x, target, bf16=True)
    out32, grads32 = _grads(reference, x, target, bf16=False)
    assert out16.dtype == torch.bfloat16
    assert torch.allclose(out16.float(), out32, atol=0.05, rtol=0.05)
    assert grads16.keys() == grads32.keys() and grads16
    for name, grad in grads16.items():
        expected = grads32[name]
        assert grad is not None, name
        assert grad.shape == expected.shape and grad.dtype == torch.float32, name
        relative = (grad - expected).norm() / expected.norm().clamp_min(1e-12)
        assert relative < 0.06, f"{name}: relative gradient error {relative:.3f}"
    # The optimizer's state follows the float32 adapters.
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    optimizer.step()
    states = [s for state in optimizer.state.values() for s in state.values() if s.dim()]
    assert states and all(s.dtype == torch.float32 for s in states)
    assert all(p.dtype == torch.float32 for p in model.parameters())


@pytest.mark.parametrize("cls, kwargs", KINDS, ids=[c.__name__ for c, _ in KINDS])
def test_bf16_evaluation_matches_float32(cls, kwargs):
    model = _adapted(cls, kwargs).eval()
    x = torch.randn(2, 7, 24)
    with torch.no_grad():
        exact = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert torch.allclose(low.float(), exact, atol=0.05, rtol=0.05)


def test_fused_lora_in_a_bfloat16_model_keeps_bfloat16():
    """A model cast to bf16 (no autocast): the adapter computes and learns in bf16."""
    layer = LoRA(nn.Linear(16, 8), rank=2).to(torch.bfloat16)
    x = torch.randn(3, 16, dtype=torch.bfloat16, requires_grad=True)
    out = layer(x)
    out.float().sum().backward()
    assert out.dtype == x.grad.dtype == layer.lora_A.grad.dtype == torch.bfloat16


RECIPE_METHODS = ["lora", "dora"]  # the fused paths; every kind is checked above


@pytest.mark.parametrize("method", RECIPE_METHODS)
def test_recipe_trains_and_evaluates_with_precision_bf16(asr_base, tmp_path, method):
    """``--precision bf16`` end to end on the tiny Conformer CTC: adapters stay float32."""
    import json

    from conftest import ASR_TINY
    from recipe_runs import ROOT, run
    from safetensors import safe_open

    out = tmp_path / method
    run(
        str(ROOT / "recipes" / "asr" / "train.py"), f"hparams/{method}_asr.yaml", *ASR_TINY,
        "--number_of_epochs=1", "--evaluate_before=False", "--precision=bf16",
        f"--data_folder={asr_base['corpus']}", f"--base_checkpoint={asr_base['base']}",
        f"--output_folder={out}",
    )  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_updates"] == 0
    assert 0 <= summary["after"]["target"]["WER"] < 1000
    with safe_open(str(out / "adapter.safetensors"), framework="pt") as handle:
        dtypes = {handle.get_tensor(key).dtype for key in handle.keys()}  # noqa: SIM118
    assert dtypes == {torch.float32}

"""Adapting attention projections held in raw parameters (Q/K/V, torch MHA out_proj)."""

from __future__ import annotations

import copy

import pytest
import torch
from speechbrain.nnet.attention import MultiheadAttention, RelPosEncXL, RelPosMHAXL
from torch import nn

from adapters import AdaptedModel, DoRA, Houlsby, LoRA, PoolLoRA


class SBMHABlock(nn.Module):
    """SpeechBrain's MultiheadAttention (torch MHA inside) and a feed-forward."""

    def __init__(self) -> None:
        super().__init__()
        self.att = MultiheadAttention(nhead=2, d_model=8)
        self.ffn = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.att(x, x, x)[0])


class RelPosBlock(nn.Module):
    """SpeechBrain's RelPosMHAXL with its relative positional encoding."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = RelPosEncXL(8)
        self.att = RelPosMHAXL(8, 2)
        self.ffn = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.att(x, x, x, pos_embs=self.pos(x))[0])


BLOCKS = {"sb_mha": SBMHABlock, "relpos": RelPosBlock}
ATTENTION_NAMES = {
    "sb_mha": ["att.att.q_proj", "att.att.k_proj", "att.att.v_proj", "att.att.out_proj"],
    "relpos": ["att.q_proj", "att.k_proj", "att.v_proj", "att.out_proj"],
}


def make(kind: str) -> nn.Module:
    torch.manual_seed(0)
    return BLOCKS[kind]().eval()


def assert_base_unchanged(adapted: nn.Module, reference: nn.Module) -> None:
    """Every base tensor keeps its key (up to a wrapper's base_layer) and value."""
    state = {k.replace("base_layer.", ""): v for k, v in adapted.state_dict().items()}
    for key, value in reference.state_dict().items():
        assert torch.equal(state[key], value), key


@pytest.mark.parametrize("kind", BLOCKS)
def test_all_linear_reaches_q_k_v_and_out_proj(kind):
    model = AdaptedModel(make(kind), LoRA, all_linear=True, adapter_kwargs={"rank": 2})
    assert set(ATTENTION_NAMES[kind]) <= set(model.adapted_layers)


@pytest.mark.parametrize("kind", BLOCKS)
@pytest.mark.parametrize("cls", [LoRA, PoolLoRA, DoRA])
def test_attention_adaptation_trains_and_merges_exactly(kind, cls):
    base = make(kind)
    reference = copy.deepcopy(base)
    model = AdaptedModel(
        base, cls, target_layers=["*q_proj", "*v_proj", "*out_proj"], adapter_kwargs={"rank": 2}
    )
    x = torch.randn(2, 6, 8)
    assert torch.allclose(model(x), reference(x), atol=1e-6)  # identity at insertion

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(2):
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
    for adapter in model.adapters().values():
        assert adapter.lora_B.abs().sum() > 0  # gradients reached every projection
    trained = model(x)
    assert not torch.allclose(trained, reference(x), atol=1e-4)
    assert_base_unchanged(base, reference)

    model.merge()
    assert torch.allclose(model(x), trained, atol=1e-5)
    model.unmerge()
    assert_base_unchanged(base, reference)
    assert torch.equal(model(x), trained)


@pytest.mark.parametrize("kind", BLOCKS)
def test_attention_adapter_round_trip(kind, tmp_path):
    model = AdaptedModel(make(kind), LoRA, target_layers=["*_proj"], adapter_kwargs={"rank": 2})
    for adapter in model.adapters().values():
        adapter.lora_B.data.normal_()
    x = torch.randn(2, 6, 8)
    expected = model(x)
    model.save_adapter(str(tmp_path / "att.safetensors"))
    fresh = AdaptedModel(make(kind), LoRA, target_layers=["*_proj"], adapter_kwargs={"rank": 2})
    fresh.load_adapter(str(tmp_path / "att.safetensors"))
    assert torch.equal(fresh(x), expected)


def test_module_adapters_cannot_take_raw_projections():
    with pytest.raises(TypeError, match="held as a raw parameter"):
        AdaptedModel(make("relpos"), Houlsby, target_layers=["att.q_proj"])
    # with all_linear, a module adapter adapts the real Linear layers only
    model = AdaptedModel(make("sb_mha"), Houlsby, all_linear=True)
    assert model.adapted_layers == ["ffn"]


@pytest.mark.parametrize("kind", BLOCKS)
def test_exported_plain_model_loads_into_a_fresh_base(kind):
    model = AdaptedModel(make(kind), LoRA, all_linear=True, adapter_kwargs={"rank": 2})
    for adapter in model.adapters().values():
        adapter.lora_B.data.normal_()
    x = torch.randn(2, 6, 8)
    expected = model(x)
    plain = model.export_plain().eval()
    assert "param_adapters" not in str(plain) and "lora" not in str(plain.state_dict().keys())
    fresh = BLOCKS[kind]().eval()
    fresh.load_state_dict(plain.state_dict(), strict=True)
    assert [type(m) for m in fresh.modules()] == [type(m) for m in plain.modules()]
    assert torch.allclose(fresh(x), expected, atol=1e-5)
    assert torch.equal(model(x), expected)  # the adapted model itself is untouched

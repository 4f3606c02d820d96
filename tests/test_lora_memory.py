"""What LoRA keeps for backward: LoRA-FA (``freeze_a``), the input kept in bf16
(``saved_input_dtype``), layers that share one input (q, k, v), and LoRA dropout."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from adapters import (
    AdaptedModel,
    DoRA,
    LoRA,
    PoolLoRA,
    load_peft,
    read_adapter_metadata,
    save_peft,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from measure import saved_bytes, saved_storages

TOKENS, FEATURES, RANK = 1200, 96, 4  # 1200 tokens: the fused path for a 96 x 96 layer
#: float32 sums over 1200 tokens in another order (fused rank-r products against autograd's)
CLOSE = {"rtol": 1e-4, "atol": 1e-4}


def reference(layer: LoRA, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``x W^T + b + s x A^T B^T`` by plain autograd (the two-branch textbook LoRA)."""
    base = layer.base_layer
    return nn.functional.linear(x, base.weight, base.bias) + layer.scaling * (x @ a.t() @ b.t())


def gradients(layer: LoRA, tokens: int) -> dict[str, dict[str, torch.Tensor | None]]:
    """Gradients of the input, ``A`` and ``B`` from ``layer`` and from :func:`reference`."""
    torch.manual_seed(1)
    x = torch.randn(2, tokens // 2, layer.base_layer.in_features, requires_grad=True)
    out = layer(x)
    assert ("Fused" in type(out.grad_fn).__name__) == (tokens == TOKENS)
    grad = torch.randn_like(out)
    out.backward(grad)
    x_ref = x.detach().clone().requires_grad_(True)
    a = layer.lora_A.detach().clone().requires_grad_(layer.lora_A.requires_grad)
    b = layer.lora_B.detach().clone().requires_grad_(True)
    reference(layer, x_ref, a, b).backward(grad)
    return {
        "ours": {"x": x.grad, "A": layer.lora_A.grad, "B": layer.lora_B.grad},
        "autograd": {"x": x_ref.grad, "A": a.grad, "B": b.grad},
    }


def lora(**kwargs) -> LoRA:
    """A LoRA on a 96 x 96 Linear with a non-zero update (``B`` starts at zero)."""
    torch.manual_seed(0)
    layer = LoRA(nn.Linear(FEATURES, FEATURES), rank=RANK, alpha=8, **kwargs)
    with torch.no_grad():
        layer.lora_B.normal_()
    return layer


@pytest.mark.parametrize("tokens", [TOKENS, 8], ids=["fused", "few-tokens-branch"])
def test_lora_fa_gradients_equal_autograd_for_b_and_a_gets_none(tokens):
    layer = lora(freeze_a=True)
    assert not layer.lora_A.requires_grad and layer.lora_B.requires_grad
    grads = gradients(layer, tokens)
    assert grads["ours"]["A"] is None and grads["autograd"]["A"] is None
    for key in ("x", "B"):
        torch.testing.assert_close(grads["ours"][key], grads["autograd"][key], **CLOSE)


@pytest.mark.parametrize("cls", [PoolLoRA, DoRA])
def test_lora_fa_on_pool_lora_and_dora_trains_b_only_like_the_unfused_forward(cls):
    torch.manual_seed(0)
    x = torch.randn(2, TOKENS // 2, FEATURES, requires_grad=True)
    layer = cls(nn.Linear(FEATURES, FEATURES), rank=RANK, freeze_a=True)
    with torch.no_grad():
        layer.lora_B.normal_()
    fused_out = layer(x)
    assert "Fused" in type(fused_out.grad_fn).__name__
    grad = torch.randn_like(fused_out)
    fused_out.backward(grad)
    fused = (x.grad.clone(), layer.lora_B.grad.clone())
    x.grad = layer.lora_B.grad = None
    layer.dropout = nn.Dropout(0.0)  # not nn.Identity: the unfused two-branch forward
    assert not layer.fusable()
    layer(x).backward(grad)
    assert layer.lora_A.grad is None
    torch.testing.assert_close(fused[0], x.grad, **CLOSE)
    torch.testing.assert_close(fused[1], layer.lora_B.grad, **CLOSE)


def test_lora_fa_keeps_rank_times_tokens_instead_of_the_input():
    x = torch.randn(TOKENS, 1024, requires_grad=True)
    plain, frozen_a = (LoRA(nn.Linear(1024, 1024), rank=8, freeze_a=f) for f in (False, True))
    kept = {
        name: saved_bytes(lambda layer=layer: layer(x), list(layer.parameters()))
        for name, layer in {"plain": plain, "fa": frozen_a}.items()
    }
    assert kept["plain"] == TOKENS * 1024 * 4  # the float32 input itself
    assert kept["fa"] == TOKENS * 8 * 4  # A x: tokens x rank, 128 times less here
    # without any adapter gradient (B frozen too) nothing is kept
    frozen_a.lora_B.requires_grad_(False)
    assert saved_bytes(lambda: frozen_a(x), list(frozen_a.parameters())) == 0


def attention_block(x: torch.Tensor, layers: list[nn.Module]) -> torch.Tensor:
    """q, k and v of one input, as an attention layer computes them."""
    q, k, v = (layer(x) for layer in layers)
    return q + k + v


def qkv(**kwargs) -> list[LoRA]:
    torch.manual_seed(0)
    return [LoRA(nn.Linear(FEATURES, FEATURES), rank=RANK, **kwargs) for _ in range(3)]


def block_storages(layers: list[LoRA], x: torch.Tensor, bf16: bool = False) -> list[tuple]:
    """(shape, dtype) of each distinct storage the block saves, parameters left out."""
    params = [p for layer in layers for p in layer.parameters()]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        kept = saved_storages(lambda: attention_block(x, layers), params)
    return sorted((tuple(t.shape), str(t.dtype)) for t in kept.values())


@pytest.mark.parametrize(
    ("kwargs", "bf16", "expected"),
    [
        ({}, False, [((TOKENS, FEATURES), "torch.float32")]),  # x itself, once
        ({}, True, [((TOKENS, FEATURES), "torch.bfloat16")]),  # one bf16 cast, shared
        ({"saved_input_dtype": "bfloat16"}, False, [((TOKENS, FEATURES), "torch.bfloat16")]),
        ({"freeze_a": True}, False, [((TOKENS, RANK), "torch.float32")] * 3),  # A x per layer
        ({"freeze_a": True}, True, [((TOKENS, RANK), "torch.bfloat16")] * 3),
    ],
    ids=["fp32", "autocast-bf16", "saved-bf16", "lora-fa", "lora-fa-autocast"],
)
def test_q_k_v_on_one_input_keep_one_copy_and_casts_add_none(kwargs, bf16, expected):
    x = torch.randn(TOKENS, FEATURES, requires_grad=True)
    assert block_storages(qkv(**kwargs), x, bf16) == expected


def test_pool_lora_q_k_v_share_one_pooled_input():
    torch.manual_seed(0)
    layers = [PoolLoRA(nn.Linear(FEATURES, FEATURES), stride=4, rank=RANK) for _ in range(3)]
    x = torch.randn(TOKENS, FEATURES, requires_grad=True)
    assert block_storages(layers, x) == [((TOKENS, FEATURES // 4), "torch.float32")]


def test_lora_dropout_keeps_a_mask_and_a_dropped_copy_per_layer():
    """LoRA dropout leaves the fused path: each layer draws its own mask, which autograd
    keeps (float32 on CPU), and plain LoRA keeps the dropped input for ``A``'s gradient
    too; LoRA-FA keeps the mask and ``A x`` only."""
    x = torch.randn(TOKENS, FEATURES, requires_grad=True)
    full, rank = ((TOKENS, FEATURES), "torch.float32"), ((TOKENS, RANK), "torch.float32")
    assert block_storages(qkv(dropout=0.1), x) == sorted([rank] * 3 + [full] * 6)
    assert block_storages(qkv(dropout=0.1, freeze_a=True), x) == sorted([rank] * 3 + [full] * 3)


def test_saved_bf16_input_gives_gradients_within_bf16_rounding_of_float32():
    """Only what the rank-r gradients read is rounded: the output and the input gradient
    are bit for bit those of float32, ``A``'s and ``B``'s within 1% (relative norm)."""
    grads = {}
    for name, kwargs in {"fp32": {}, "bf16": {"saved_input_dtype": "bfloat16"}}.items():
        grads[name] = gradients(lora(**kwargs), TOKENS)["ours"]
    assert torch.equal(grads["bf16"]["x"], grads["fp32"]["x"])
    for key in ("A", "B"):
        error = (grads["bf16"][key] - grads["fp32"][key]).norm() / grads["fp32"][key].norm()
        assert 0 < error < 1e-2, (key, error)


def test_unknown_saved_input_dtype_is_refused():
    with pytest.raises(ValueError, match="saved_input_dtype 'int8'"):
        LoRA(nn.Linear(4, 4), saved_input_dtype="int8")


def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8))


def test_lora_fa_trains_b_only_merges_and_its_file_applies_to_plain_lora(tmp_path):
    kwargs = {"rank": 2, "freeze_a": True, "saved_input_dtype": "bfloat16"}
    model = AdaptedModel(make_net(), LoRA, all_linear=True, adapter_kwargs=kwargs)
    trainable = [p for p in model.parameters() if p.requires_grad]
    # A is out of the optimizer: only the two B matrices train
    assert model.num_trainable_parameters() == 32 * 2 + 8 * 2
    assert sum(p.numel() for p in trainable) == 32 * 2 + 8 * 2
    initial_a = {k: v.clone() for k, v in model.adapter_state_dict().items() if "lora_A" in k}
    optimizer = torch.optim.Adam(trainable, lr=0.05)
    model.train()
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(64, 16)).pow(2).mean().backward()
        optimizer.step()
    model.eval()
    state = model.adapter_state_dict()
    assert all(torch.equal(state[k], v) for k, v in initial_a.items())  # A never moved
    x = torch.randn(5, 16)
    expected = model(x)

    model.merge()  # merge and unmerge unchanged
    torch.testing.assert_close(model(x), expected)
    model.unmerge()
    assert torch.equal(model(x), expected)

    path = tmp_path / "fa.safetensors"
    model.save_adapter(str(path))
    meta = read_adapter_metadata(path)
    assert meta["settings"]["freeze_a"] is True
    assert meta["settings"]["saved_input_dtype"] == "bfloat16"
    assert {k for k in meta["tensors"] if "lora_A" in k} == set(initial_a)  # A is in the file
    # applied the same way: a plain LoRA (other A at its own seed) loads it and gives the same
    torch.manual_seed(7)
    plain = AdaptedModel(make_net(), LoRA, all_linear=True, adapter_kwargs={"rank": 2}).eval()
    assert not torch.allclose(plain(x), expected)
    plain.load_adapter(str(path))
    assert torch.equal(plain(x), expected)
    exported = model.export_plain().eval()
    torch.testing.assert_close(exported(x), expected)
    # PEFT export unchanged: A and B written, read back by load_peft into a plain LoRA
    folder = save_peft(model, tmp_path / "peft")
    torch.manual_seed(8)
    again = AdaptedModel(make_net(), LoRA, all_linear=True, adapter_kwargs={"rank": 2}).eval()
    load_peft(again, folder)
    torch.testing.assert_close(again(x), expected)


def test_the_benchmark_lora_fa_keeps_less_than_lora_and_near_the_floor():
    """The saved-tensor accounting of ``benchmarks/adapter_cost.py`` on its tiny Conformer."""
    from setups import build_model, workload

    kept = {}
    for method in ("floor", "lora", "lora_fa", "lora_bf16"):
        torch.manual_seed(0)
        model, _ = build_model(method, "tiny", 8, 10.0)
        model.train()
        loss, _ = workload(model, "tiny", 2, 200, 10.0)
        kept[method] = saved_bytes(loss, list(model.parameters()))
    assert kept["floor"] < kept["lora_fa"] < kept["lora_bf16"] < kept["lora"]
    # LoRA keeps every adapted layer's input; LoRA-FA about rank / in of it (8 / 32..640)
    assert kept["lora_fa"] - kept["floor"] < 0.4 * (kept["lora"] - kept["floor"])

"""Behaviour of the adapter library: insertion, training, merging, checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from hyperpyyaml import load_hyperpyyaml
from torch import nn

from adapters import AdaptedModel, DoRA, Houlsby, LoRA, PoolLoRA, read_adapter_metadata
from adapters.lora import _FusedLoRALinear
from adapters.pool_lora import pool_features


def make_net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv1d(4, 8, kernel_size=3, padding=1),
        nn.BatchNorm1d(8),
        nn.ReLU(),
        nn.Conv1d(8, 8, kernel_size=1),
        nn.Flatten(1),
        nn.Linear(8 * 10, 16),
        nn.ReLU(),
        nn.Linear(16, 3),
    )


def randomise(adapted: AdaptedModel) -> None:
    """Give every adapter a non-zero update (B starts at zero)."""
    with torch.no_grad():
        for adapter in adapted.adapters().values():
            adapter.lora_B.normal_()


LAYERS = {
    "linear": (lambda: nn.Linear(12, 7), (5, 3, 12)),
    "conv1d": (lambda: nn.Conv1d(4, 6, kernel_size=3, stride=2, padding=1), (2, 4, 15)),
    "conv2d": (lambda: nn.Conv2d(3, 5, kernel_size=3, padding=1), (2, 3, 6, 6)),
}


MERGEABLE = {
    "lora": lambda layer: LoRA(layer, rank=2, alpha=4),
    "rslora": lambda layer: LoRA(layer, rank=2, alpha=4, use_rslora=True),
    "poollora": lambda layer: PoolLoRA(layer, stride=2, rank=2),
    "poollora-uneven": lambda layer: PoolLoRA(layer, stride=5, rank=1),
    "dora": lambda layer: DoRA(layer, rank=2),
}


def perturb(adapter: nn.Module) -> None:
    """Move every trainable parameter away from its initial value."""
    torch.manual_seed(1)
    with torch.no_grad():
        for param in adapter.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn_like(param))


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("variant", [*MERGEABLE, "houlsby"])
def test_every_adapter_is_identity_at_insertion(kind, variant):
    make_layer, shape = LAYERS[kind]
    torch.manual_seed(0)
    base = make_layer()
    reference = copy.deepcopy(base)
    build = MERGEABLE.get(variant, lambda layer: Houlsby(layer, projection_size=3))
    adapter = build(base)
    x = torch.randn(*shape)
    assert torch.allclose(adapter(x), reference(x), atol=1e-6)
    assert not any(p.requires_grad for p in adapter.base_layer.parameters())
    perturb(adapter)
    assert not torch.allclose(adapter(x), reference(x), atol=1e-4)


@pytest.mark.parametrize("kind", LAYERS)
@pytest.mark.parametrize("variant", MERGEABLE)
def test_merge_is_exact_and_unmerge_restores_the_base_bit_for_bit(kind, variant):
    make_layer, shape = LAYERS[kind]
    torch.manual_seed(0)
    base = make_layer()
    reference = copy.deepcopy(base)
    adapter = MERGEABLE[variant](base)
    perturb(adapter)
    x = torch.randn(*shape)
    unmerged = adapter(x)
    adapter.merge()
    assert torch.allclose(adapter(x), unmerged, atol=1e-5)
    adapter.unmerge()
    assert torch.equal(adapter.base_layer.weight, reference.weight)
    assert torch.equal(adapter(x), unmerged)


def test_houlsby_cannot_merge():
    model = AdaptedModel(
        make_net(), Houlsby, all_linear=True, adapter_kwargs={"projection_size": 2}
    )
    with pytest.raises(TypeError, match="cannot be merged"):
        model.merge()


def test_pooling_averages_uneven_groups_and_matches_its_matrix():
    x = torch.randn(4, 7)
    pooled = pool_features(x, stride=3, dim=-1)
    expected = torch.stack([x[:, 0:3].mean(1), x[:, 3:6].mean(1), x[:, 6]], dim=1)
    assert torch.allclose(pooled, expected)
    adapter = PoolLoRA(nn.Linear(7, 5), stride=3, rank=2)
    perturb(adapter)
    via_branch = adapter.lowrank_branch(x)
    via_matrix = x @ adapter.delta_weight().T
    assert torch.allclose(via_branch, via_matrix, atol=1e-6)


def test_scaling_follows_alpha_and_rslora():
    assert LoRA(nn.Linear(16, 16), rank=4).scaling == 1.0
    assert LoRA(nn.Linear(16, 16), rank=4, alpha=8).scaling == 2.0
    assert LoRA(nn.Linear(16, 16), rank=4, alpha=8, use_rslora=True).scaling == 4.0


@pytest.mark.parametrize("rank", [0, 9, 2.5])
def test_rank_that_does_not_fit_is_refused(rank):
    with pytest.raises(ValueError, match="rank"):
        LoRA(nn.Linear(8, 16), rank=rank)


def test_unsupported_layers_are_refused():
    with pytest.raises(TypeError, match="LoRA adapts"):
        LoRA(nn.LSTM(4, 4), rank=1)
    with pytest.raises(ValueError, match="grouped"):
        PoolLoRA(nn.Conv1d(4, 4, 3, groups=4), rank=1)


def test_only_adapters_and_unfrozen_layers_train():
    net = make_net()
    base = copy.deepcopy(net.state_dict())
    model = AdaptedModel(
        net,
        LoRA,
        all_linear=True,
        all_conv=True,
        unfrozen_layers=["7"],
        adapter_kwargs={"rank": 2},
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {
        "adapted_model.0.lora_A",
        "adapted_model.0.lora_B",
        "adapted_model.3.lora_A",
        "adapted_model.3.lora_B",
        "adapted_model.5.lora_A",
        "adapted_model.5.lora_B",
        "adapted_model.7.weight",
        "adapted_model.7.bias",
    }
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 4, 10)).pow(2).mean().backward()
        optimizer.step()
    after = {k.replace("base_layer.", ""): v for k, v in net.state_dict().items()}
    for key, value in base.items():
        frozen = key.startswith(("0.", "3.", "5.")) and key.endswith(("weight", "bias"))
        if frozen:
            assert torch.equal(after[key], value), key
    assert not torch.equal(after["7.weight"], base["7.weight"])
    assert not torch.equal(after["1.running_mean"], base["1.running_mean"])


def test_patterns_that_match_nothing_name_the_closest_layers():
    with pytest.raises(ValueError, match=r"'encoder\.\*' matches no layer.*Closest"):
        AdaptedModel(make_net(), LoRA, target_layers=["encoder.*"])
    with pytest.raises(ValueError, match="unfrozen_layers pattern 'head'"):
        AdaptedModel(make_net(), LoRA, all_linear=True, unfrozen_layers=["head"])


def test_misspelled_adapter_kwarg_is_named():
    with pytest.raises(TypeError, match=r"\['rnak'\].*accepted: \['rank'"):
        AdaptedModel(make_net(), LoRA, all_linear=True, adapter_kwargs={"rnak": 4})


def test_second_insertion_is_harmless_and_plain_checkpoint_still_loads():
    net = make_net()
    plain = {k: v + 1 for k, v in make_net(1).state_dict().items()}
    model = AdaptedModel(
        net, LoRA, all_linear=True, manual_adapter_insertion=True, adapter_kwargs={"rank": 2}
    )
    model.insert_adapters()
    model.insert_adapters()
    assert isinstance(net[5], LoRA) and isinstance(net[5].base_layer, nn.Linear)
    result = net.load_state_dict(plain, strict=False)
    assert result.unexpected_keys == []
    assert sorted(result.missing_keys) == ["5.lora_A", "5.lora_B", "7.lora_A", "7.lora_B"]
    assert torch.equal(net[5].base_layer.weight, plain["5.weight"])


def test_adapter_file_round_trip_and_refusal(tmp_path):
    model = AdaptedModel(
        make_net(), LoRA, all_linear=True, all_conv=True, adapter_kwargs={"rank": 2}
    )
    model.train()  # a few real updates: A, B and the BatchNorm statistics all move
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(8, 4, 10)).pow(2).mean().backward()
        optimizer.step()
    model.eval()
    x = torch.randn(2, 4, 10)
    expected = model(x)
    path = tmp_path / "adapter.safetensors"
    model.save_adapter(str(path))

    meta = read_adapter_metadata(path)
    assert meta["adapter_class"] == "LoRA" and meta["adapter_kwargs"] == {"rank": 2}
    assert meta["adapted_layers"] == ["0", "3", "5", "7"]
    base_bytes = sum(p.numel() * 4 for p in make_net().parameters())
    assert path.stat().st_size < base_bytes

    fresh = AdaptedModel(
        make_net(), LoRA, all_linear=True, all_conv=True, adapter_kwargs={"rank": 2}
    ).eval()
    perturb(fresh)  # adapters that start elsewhere: loading must replace every tensor
    assert not torch.allclose(fresh(x), expected)
    fresh.load_adapter(str(path))
    assert torch.equal(fresh(x), expected)  # A, B and BatchNorm statistics all travelled
    saved = model.adapter_state_dict()
    assert all(torch.equal(v, saved[k]) for k, v in fresh.adapter_state_dict().items())

    other = AdaptedModel(
        make_net(seed=3), LoRA, all_linear=True, all_conv=True, adapter_kwargs={"rank": 2}
    )
    with pytest.raises(ValueError, match="other weights"):
        other.load_adapter(str(path))
    wrong_rank = AdaptedModel(
        make_net(), LoRA, all_linear=True, all_conv=True, adapter_kwargs={"rank": 3}
    )
    with pytest.raises(ValueError, match="rank: the file has 2, this model 3"):
        wrong_rank.load_adapter(str(path))
    bigger = nn.Sequential(*make_net(), nn.Linear(3, 3))
    with pytest.raises(ValueError, match="another base model"):
        AdaptedModel(
            bigger, LoRA, all_linear=True, all_conv=True, adapter_kwargs={"rank": 2}
        ).load_adapter(str(path))


def test_merged_model_saves_the_same_adapter(tmp_path):
    model = AdaptedModel(make_net(), LoRA, all_linear=True, adapter_kwargs={"rank": 2}).eval()
    randomise(model)
    x = torch.randn(2, 4, 10)
    expected = model(x)
    model.merge()
    assert torch.allclose(model(x), expected, atol=1e-5)
    model.save_adapter(str(tmp_path / "a.safetensors"))  # fingerprint of the unmerged base
    model.unmerge()
    fresh = AdaptedModel(make_net(), LoRA, all_linear=True, adapter_kwargs={"rank": 2}).eval()
    fresh.load_adapter(str(tmp_path / "a.safetensors"))
    assert torch.equal(fresh(x), expected)


def test_yaml_declaration_with_cli_style_rank_override():
    yaml = """
rank: 8
model: !new:torch.nn.Sequential
    - !new:torch.nn.Linear [16, 32]
    - !new:torch.nn.Linear [32, 4]
adapted: !new:adapters.AdaptedModel
    model_to_adapt: !ref <model>
    adapter_class: !name:adapters.LoRA
    target_layers: ["0"]
    adapter_kwargs:
        rank: !ref <rank>
"""
    assert load_hyperpyyaml(yaml)["adapted"].adapted_model[0].lora_A.shape == (8, 16)
    hparams = load_hyperpyyaml(yaml, {"rank": 4})
    assert hparams["adapted"].adapted_model[0].lora_A.shape == (4, 16)
    assert not isinstance(hparams["adapted"].adapted_model[1], LoRA)


@pytest.mark.parametrize(
    ("cls", "kwargs"),
    [
        (LoRA, {"rank": 2}),
        (PoolLoRA, {"rank": 2, "stride": 3}),
        (DoRA, {"rank": 2}),
        (Houlsby, {"projection_size": 2}),
    ],
)
def test_training_changes_adapters_only(cls, kwargs):
    net = make_net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    model = AdaptedModel(net, cls, all_linear=True, all_conv=True, adapter_kwargs=kwargs)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and not any(".base_layer." in n for n in trainable)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.01)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 4, 10)).pow(2).mean().backward()
        optimizer.step()
    after = {k.replace("base_layer.", ""): v for k, v in net.state_dict().items()}
    for key, value in before.items():
        if not key.startswith("1."):  # BatchNorm statistics move in training mode
            assert torch.equal(after[key], value), key
    # The base with the same (moved) BatchNorm statistics: only the adapters differ from it.
    x = torch.randn(2, 4, 10)
    model.eval()
    reference = make_net().eval()
    reference.load_state_dict({k: after[k] for k in reference.state_dict()})
    assert not torch.allclose(model(x), reference(x), atol=1e-5)
    with torch.no_grad():  # and undoing the adapters' update gives the reference back
        for adapter in model.adapters().values():
            (adapter.lora_B if hasattr(adapter, "lora_B") else adapter.up.weight).zero_()
            if hasattr(adapter, "magnitude"):
                adapter.magnitude.copy_(adapter.base_layer.weight.flatten(1).norm(dim=1))
            if hasattr(adapter, "up"):
                adapter.up.bias.zero_()
    assert torch.allclose(model(x), reference(x), atol=1e-5)


PEFT_METHODS = {
    "lora": {"r": 2, "lora_alpha": 4},
    "loha": {"r": 2, "alpha": 2},
    "lokr": {"r": 2, "alpha": 2},
    "ia3": {},
}


@pytest.mark.parametrize("method", PEFT_METHODS)
def test_peft_bridge_trains_saves_loads_and_merges(method, tmp_path):
    pytest.importorskip("peft")
    from adapters import peft_adapter

    kwargs = {"method": method, **PEFT_METHODS[method]}
    model = AdaptedModel(make_net(), peft_adapter, all_linear=True, adapter_kwargs=kwargs).eval()
    base_weight = model.adapted_model[5].base_layer.weight.clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        model(torch.randn(4, 4, 10)).pow(2).mean().backward()
        optimizer.step()
    assert torch.equal(model.adapted_model[5].base_layer.weight, base_weight)
    x = torch.randn(2, 4, 10)
    trained = model(x)
    assert not torch.allclose(trained, make_net().eval()(x), atol=1e-5)

    model.save_adapter(str(tmp_path / "peft.safetensors"))
    fresh = AdaptedModel(make_net(), peft_adapter, all_linear=True, adapter_kwargs=kwargs).eval()
    fresh.load_adapter(str(tmp_path / "peft.safetensors"))
    assert torch.equal(fresh(x), trained)

    model.merge()
    assert torch.allclose(model(x), trained, atol=1e-5)
    model.unmerge()
    assert torch.equal(model.adapted_model[5].base_layer.weight, base_weight)


def test_our_lora_matches_peft_lora_given_the_same_weights():
    pytest.importorskip("peft")
    from adapters import peft_adapter

    torch.manual_seed(0)
    ours = LoRA(nn.Linear(12, 6), rank=3, alpha=6)
    theirs = peft_adapter(copy.deepcopy(ours.base_layer), r=3, lora_alpha=6)
    with torch.no_grad():
        ours.lora_B.normal_()
        theirs.lora_A["default"].weight.copy_(ours.lora_A)
        theirs.lora_B["default"].weight.copy_(ours.lora_B)
    x = torch.randn(5, 12)
    assert torch.allclose(ours(x), theirs(x), atol=1e-6)
    assert torch.allclose(ours.delta_weight(), theirs.get_delta_weight("default"), atol=1e-6)


@pytest.mark.parametrize(
    ("make", "bias", "input_grad"),
    [
        (lambda base: LoRA(base, rank=4, alpha=8), True, True),
        (lambda base: LoRA(base, rank=4, alpha=8), False, True),
        (lambda base: LoRA(base, rank=4, alpha=8), True, False),
        (lambda base: PoolLoRA(base, stride=2, rank=4, alpha=8), True, True),
        (lambda base: PoolLoRA(base, stride=5, rank=3), False, True),  # 24 = 4 x 5 + 4
    ],
)
def test_fused_lora_linear_matches_the_two_branch_computation(make, bias, input_grad):
    torch.manual_seed(0)
    layer = make(nn.Linear(24, 16, bias=bias))
    layer.lora_B.data.normal_()
    x = torch.randn(3, 7, 24, requires_grad=input_grad)
    grad = torch.randn(3, 7, 16)
    fused = layer(x)
    assert fused.grad_fn is not None and "Fused" in type(fused.grad_fn).__name__
    fused.backward(grad)
    leaves = [t for t in (x, layer.lora_A, layer.lora_B) if t.requires_grad]
    got = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    reference = layer.base_layer(x) + layer.lowrank_branch(x)
    reference.backward(grad)
    assert torch.allclose(fused, reference, atol=1e-5)
    for mine, leaf in zip(got, leaves, strict=True):
        assert torch.allclose(mine, leaf.grad, atol=1e-5)
    assert layer.base_layer.weight.grad is None


@pytest.mark.parametrize("cls", [LoRA, PoolLoRA])
def test_few_tokens_take_the_low_rank_branch_with_the_fused_results(cls):
    torch.manual_seed(0)
    layer = cls(nn.Linear(64, 96), rank=4)  # the branch is cheaper below 64 * 96 / 160 = 38.4
    layer.lora_B.data.normal_()
    grad = torch.randn(2, 19, 96)
    x = torch.randn(2, 19, 64, requires_grad=True)
    short = layer(x)  # 38 tokens: the branch, no merged weight
    assert "Fused" not in type(short.grad_fn).__name__
    short.backward(grad)
    leaves = [x, layer.lora_A, layer.lora_B]
    got = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    fused = _FusedLoRALinear.apply(x, layer.base_layer.weight, layer.base_layer.bias,
                                   layer.lora_A, layer.lora_B, layer.scaling,
                                   layer._down_input, layer._expand_A)  # fmt: skip
    fused.backward(grad)
    assert torch.allclose(short, fused, atol=1e-5)
    for mine, leaf in zip(got, leaves, strict=True):
        assert torch.allclose(mine, leaf.grad, atol=1e-4)
    longer = layer(torch.randn(2, 20, 64, requires_grad=True))  # 40 tokens: fused
    assert "Fused" in type(longer.grad_fn).__name__
    with torch.no_grad():  # inference follows the same rule, with the same result
        assert torch.allclose(layer(x), short, atol=1e-5)


@pytest.mark.parametrize("bias", [True, False])
def test_fused_dora_matches_the_reference_computation(bias):
    torch.manual_seed(0)
    layer = DoRA(nn.Linear(24, 16, bias=bias), rank=4, alpha=8)
    with torch.no_grad():
        layer.lora_B.normal_()
        layer.magnitude.mul_(1.5)
    x = torch.randn(3, 7, 24, requires_grad=True)
    grad = torch.randn(3, 7, 16)
    fused = layer(x)
    assert "Fused" in type(fused.grad_fn).__name__
    fused.backward(grad)
    leaves = [x, layer.lora_A, layer.lora_B, layer.magnitude]
    got = [t.grad.clone() for t in leaves]
    for t in leaves:
        t.grad = None
    base = layer.base_layer
    reference = layer._scale(base.weight + layer.lowrank_delta()) * (
        nn.functional.linear(x, base.weight) + layer.lowrank_branch(x)
    )
    if bias:
        reference = reference + base.bias
    reference.backward(grad)
    assert torch.allclose(fused, reference, atol=1e-5)
    for mine, leaf in zip(got, leaves, strict=True):
        assert torch.allclose(mine, leaf.grad, atol=1e-4)
    with torch.no_grad():
        assert torch.allclose(layer(x), reference, atol=1e-5)  # the inference path
    layer.merge()
    assert torch.allclose(layer(x), reference, atol=1e-5)


def test_fused_pool_lora_saves_a_stride_times_smaller_input():
    torch.manual_seed(0)
    x = torch.randn(4, 50, 64, requires_grad=True)
    saved = {}
    for name, layer in {"lora": LoRA(nn.Linear(64, 64), rank=4),
                        "pool": PoolLoRA(nn.Linear(64, 64), stride=4, rank=4)}.items():  # fmt: skip
        sizes = []

        def pack(t, sizes=sizes):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x)
        saved[name] = sizes
    assert x.numel() in saved["lora"]
    assert x.numel() // 4 in saved["pool"] and x.numel() not in saved["pool"]


@pytest.mark.parametrize("cls", [LoRA, PoolLoRA])
def test_unmerged_inference_equals_training_forward(cls):
    torch.manual_seed(0)
    layer = cls(nn.Linear(24, 16), rank=4)
    layer.lora_B.data.normal_()
    x = torch.randn(2, 5, 24)
    with torch.no_grad():
        inference = layer(x)
    training = layer(x)
    assert training.requires_grad and not inference.requires_grad
    assert torch.allclose(inference, training, atol=1e-6)
    assert torch.allclose(inference, layer.base_layer(x) + layer.lowrank_branch(x), atol=1e-5)


def test_named_adapters_switch_disable_and_delete():
    model = AdaptedModel(make_net(), LoRA, all_linear=True, all_conv=True,
                         unfrozen_layers=["7"], adapter_kwargs={"rank": 2}).eval()  # fmt: skip
    x = torch.randn(2, 4, 10)
    base_out = model(x)

    def train_a_bit(seed: int) -> torch.Tensor:
        torch.manual_seed(seed)
        for param in model.parameters():
            if param.requires_grad:
                param.data.add_(0.2 * torch.randn_like(param))
        return model(x)

    noisy = train_a_bit(1)
    model.add_adapter("voices")
    assert torch.allclose(model(x), base_out, atol=1e-6)  # a new set starts as the base
    voices = train_a_bit(2)
    assert model.adapter_names == ["default", "voices"]
    model.set_adapter("default")
    assert torch.equal(model(x), noisy)
    model.disable_adapters()
    assert torch.allclose(model(x), base_out, atol=1e-6)
    model.set_adapter("voices")
    assert torch.equal(model(x), voices)
    with pytest.raises(ValueError, match="is active"):
        model.delete_adapter("voices")
    model.delete_adapter("default")
    assert model.adapter_names == ["voices"]
    with pytest.raises(KeyError, match="available"):
        model.set_adapter("default")
    model.merge()
    with pytest.raises(RuntimeError, match="Unmerge"):
        model.add_adapter("telephone")


class TutorialPoolLoRA(nn.Module):
    """A user's own adapter, written as in SpeechBrain's adapters tutorial."""

    def __init__(self, target_module, stride=2, rank=4, alpha=1.0):
        super().__init__()
        self.pretrained_module = target_module
        self.down_scale = nn.AvgPool1d(kernel_size=stride)
        self.down = nn.Linear(target_module.in_features // stride, rank, bias=False)
        self.up = nn.Linear(rank, target_module.out_features, bias=False)
        self.up.weight.data.fill_(0.0)
        self.scaling = alpha / rank

    def forward(self, x):
        return self.pretrained_module(x) + self.up(self.down(self.down_scale(x))) * self.scaling


@pytest.mark.parametrize("cls", [TutorialPoolLoRA, "sb_lora", "sb_houlsby"])
def test_user_and_speechbrain_classes_work_and_their_base_is_frozen(cls, tmp_path):
    from speechbrain.nnet import adapters as sb_adapters

    cls, kwargs = {
        "sb_lora": (sb_adapters.LoRA, {"rank": 2}),
        "sb_houlsby": (sb_adapters.HoulsbyAdapterLinear, {"projection_size": 2}),
    }.get(cls, (cls, {"rank": 2}))

    def make() -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))

    model = AdaptedModel(make(), cls, all_linear=True, adapter_kwargs=kwargs)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and not any("pretrained" in n for n in trainable), trainable
    model(torch.randn(3, 8)).sum().backward()
    model.save_adapter(str(tmp_path / "a.safetensors"))
    fresh = AdaptedModel(make(), cls, all_linear=True, adapter_kwargs=kwargs)
    fresh.load_adapter(str(tmp_path / "a.safetensors"))
    for key, value in model.adapter_state_dict().items():
        assert torch.equal(fresh.adapter_state_dict()[key], value), key


YAML_ADAPTERS = {
    "LoRA": "rank: !ref <rank>",
    "PoolLoRA": "rank: !ref <rank>\n        stride: 2",
    "DoRA": "rank: !ref <rank>",
    "Houlsby": "projection_size: !ref <rank>",
    "peft_adapter": "method: lora\n        r: !ref <rank>",
}


@pytest.mark.parametrize("name", YAML_ADAPTERS)
def test_every_adapter_builds_from_yaml_with_a_cli_override(name):
    if name == "peft_adapter":
        pytest.importorskip("peft")
    yaml = f"""
rank: 8
model: !new:torch.nn.Sequential
    - !new:torch.nn.Linear [16, 32]
adapted: !new:adapters.AdaptedModel
    model_to_adapt: !ref <model>
    adapter_class: !name:adapters.{name}
    all_linear: True
    adapter_kwargs:
        {YAML_ADAPTERS[name]}
"""
    counts = [
        load_hyperpyyaml(yaml, overrides)["adapted"].num_trainable_parameters()
        for overrides in ({}, {"rank": 4})
    ]
    assert counts[0] > counts[1] > 0


def test_fused_lora_output_accepts_in_place_ops_in_eval_mode_with_grad():
    layer = LoRA(nn.Linear(8, 8), rank=2).eval()
    out = layer(torch.randn(2, 5, 8))
    out.masked_fill_(torch.zeros(2, 5, 1, dtype=torch.bool), 0.0)  # as SpeechBrain's Conformer does
    out.sum().backward()
    assert layer.lora_B.grad is not None


def _rewrite(path, edit_tensors=None, edit_meta=None) -> None:
    """Rewrite an adapter file's tensors and/or metadata in place (a damaged or old file)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as handle:
        meta = json.loads(handle.metadata()["speech_adapters"])
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    if edit_tensors:
        edit_tensors(tensors)
    if edit_meta:
        edit_meta(meta, tensors)
    save_file(tensors, str(path), metadata={"speech_adapters": json.dumps(meta)})


def _trained_lora(tmp_path, **kwargs):
    model = AdaptedModel(make_net(), LoRA, all_linear=True, adapter_kwargs=kwargs).eval()
    randomise(model)
    path = tmp_path / "a.safetensors"
    model.save_adapter(str(path))
    return model, path


def test_adapter_file_records_how_to_apply_it(tmp_path):
    _, path = _trained_lora(tmp_path, rank=2, alpha=8, use_rslora=True)
    meta = read_adapter_metadata(path)
    assert meta["format"] == "speech-adapters/2"
    assert meta["settings"]["rank"] == 2 and meta["settings"]["alpha"] == 8.0
    assert meta["settings"]["use_rslora"] is True
    assert list(meta["scaling"].values()) == pytest.approx([8 / 2**0.5] * 2)
    assert meta["tensors"]["5.lora_A"]["dtype"] == "torch.float32" and len(meta["checksum"]) == 64


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"rank": 2, "alpha": 16}, "alpha: the file has 4.0, this model 16.0"),
        ({"rank": 2, "alpha": 4, "use_rslora": True}, "use_rslora: the file has False"),
    ],
)
def test_an_adapter_is_never_applied_at_another_scale(tmp_path, kwargs, named):
    """Same rank, so the shapes fit: only the recorded settings tell the scale apart."""
    _, path = _trained_lora(tmp_path, rank=2, alpha=4)
    other = AdaptedModel(make_net(), LoRA, all_linear=True, adapter_kwargs=kwargs)
    with pytest.raises(ValueError, match=named):
        other.load_adapter(str(path))
    trained_otherwise = AdaptedModel(
        make_net(),
        LoRA,
        all_linear=True,
        adapter_kwargs={"rank": 2, "alpha": 4, "init": "gaussian"},
    )
    trained_otherwise.load_adapter(str(path))  # init shapes training only: accepted


def test_a_damaged_or_non_finite_adapter_file_is_refused(tmp_path):
    from adapters.state import tensors_checksum

    model, path = _trained_lora(tmp_path, rank=2)

    def flip_a_bit(tensors):
        flat = tensors["5.lora_B"].view(-1).view(torch.int32)
        flat[0] ^= 1 << 20

    _rewrite(path, edit_tensors=flip_a_bit)
    fresh = AdaptedModel(make_net(), LoRA, all_linear=True, adapter_kwargs={"rank": 2})
    with pytest.raises(ValueError, match="damaged"):
        fresh.load_adapter(str(path))

    def nan_with_a_matching_checksum(meta, tensors):
        tensors["5.lora_B"][0, 0] = float("nan")
        meta["checksum"] = tensors_checksum(tensors)

    model.save_adapter(str(path))
    _rewrite(path, edit_meta=nan_with_a_matching_checksum)
    with pytest.raises(ValueError, match=r"non-finite values .*5\.lora_B"):
        fresh.load_adapter(str(path))


def test_a_file_of_the_first_format_loads_with_a_warning(tmp_path):
    model, path = _trained_lora(tmp_path, rank=2)
    x = torch.randn(2, 4, 10)

    def first_format(meta, tensors):
        meta["format"] = "speech-adapters/1"
        for key in ("settings", "scaling", "tensors", "checksum"):
            del meta[key]

    _rewrite(path, edit_meta=first_format)
    fresh = AdaptedModel(make_net(), LoRA, all_linear=True, adapter_kwargs={"rank": 2}).eval()
    with pytest.warns(UserWarning, match="unchecked"):
        fresh.load_adapter(str(path))
    assert torch.equal(fresh(x), model(x))


def test_a_foreign_adapter_that_claims_to_merge_must_say_how():
    """The contract is checked at insertion: ``mergeable = True`` needs merge()/unmerge()."""

    class Claims(nn.Module):
        mergeable = True

        def __init__(self, layer, scale=1.0):
            super().__init__()
            self.base_layer, self.scale = layer, nn.Parameter(torch.tensor(scale))

        def forward(self, x):
            return self.base_layer(x) * self.scale

    with pytest.raises(TypeError, match=r"says it is mergeable but has no merge\(\)/unmerge\(\)"):
        AdaptedModel(nn.Sequential(nn.Linear(2, 2)), Claims, all_linear=True)
    Claims.mergeable = False
    model = AdaptedModel(nn.Sequential(nn.Linear(2, 2)), Claims, all_linear=True)
    assert model.unmergeable_adapters() == {"0": "Claims"}


def test_loraplus_trains_b_faster_through_a_scheduler_and_refuses_what_has_no_b():
    """LoRA+: one SGD step moves B ratio x farther than plain LoRA does and A the same;
    B's rate stays ratio x the others' through every scheduler step; no B is refused."""
    from speechbrain.nnet.schedulers import NoamScheduler

    from adapters import apply_lr_scales, loraplus_groups

    def adapted() -> nn.Module:
        torch.manual_seed(0)
        model = nn.Sequential(LoRA(nn.Linear(6, 5), rank=2), nn.LayerNorm(5))
        with torch.no_grad():
            model[0].lora_B.fill_(0.1)  # so that A gets a gradient too
        return model

    x = torch.randn(4, 6)
    moved = {}
    for ratio in (1.0, 8.0):
        model = adapted()
        start = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
        optimizer = torch.optim.SGD(loraplus_groups(model, ratio), lr=0.5)
        apply_lr_scales(optimizer)
        model(x).pow(2).sum().backward()
        optimizer.step()
        moved[ratio] = {n: p.detach() - start[n] for n, p in model.named_parameters() if n in start}
        scheduler = NoamScheduler(lr_initial=0.5, n_warmup_steps=3)
        for _ in range(4):
            scheduler(optimizer)
            apply_lr_scales(optimizer)
            rates = [group["lr"] for group in optimizer.param_groups]
            assert rates == pytest.approx([rates[0], ratio * rates[0]][: len(rates)])
        assert len(optimizer.param_groups) == (1 if ratio == 1 else 2)
    assert torch.allclose(moved[8.0]["0.lora_B"], 8 * moved[1.0]["0.lora_B"], atol=1e-6)
    assert moved[1.0]["0.lora_B"].abs().max() > 0
    assert torch.allclose(moved[8.0]["0.lora_A"], moved[1.0]["0.lora_A"], atol=1e-7)
    with pytest.raises(ValueError, match="no trainable LoRA B matrix"):
        loraplus_groups(nn.Sequential(Houlsby(nn.Linear(6, 6), projection_size=2)), 8.0)
    with pytest.raises(ValueError, match="must be positive"):
        loraplus_groups(adapted(), 0.0)


# ------------------------------------------------------------- data-aware init (EVA-style)
def _inputs_with_known_directions(features: int = 12, tokens: int = 4000):
    """Inputs whose energy lies along known orthonormal directions, widest first."""
    generator = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(features, features, generator=generator))
    scales = torch.tensor([6.0, 4.0, 3.0] + [0.5] * (features - 3))
    x = (torch.randn(tokens, features, generator=generator) * scales) @ basis.t()
    return x.reshape(40, -1, features), basis, scales


def test_eva_sets_a_to_the_inputs_top_directions_and_leaves_the_model_exact():
    from adapters.data_init import InputMoments

    x, basis, scales = _inputs_with_known_directions()
    model = nn.Sequential(LoRA(nn.Linear(12, 7), rank=3, init="eva"), nn.ReLU(),
                          LoRA(nn.Linear(7, 5), rank=2))  # fmt: skip
    before = model(x)
    with InputMoments(model) as moments:
        model(x[:20])
        model(x[20:])
    report = moments.initialise()
    a = model[0].lora_A.detach()
    # the rows span the three widest directions (up to sign and rotation within them)
    norm = a.norm(dim=1)[0]
    torch.testing.assert_close((a @ basis[:, :3]).abs().sum(1) / norm, torch.ones(3), atol=0.05,
                               rtol=0)  # fmt: skip
    torch.testing.assert_close(a @ a.t(), norm**2 * torch.eye(3), atol=1e-6, rtol=0)
    # scaled so the projection is as large as with kaiming's random A: rank E|x|^2 / (3 in)
    flat = x.reshape(-1, 12)
    projected = float((flat @ a.t()).pow(2).sum(1).mean())
    assert projected == pytest.approx(float(3 * flat.pow(2).sum(1).mean() / (3 * 12)), rel=1e-4)
    energy = scales.pow(2)
    assert list(report) == ["0"] and moments.tokens["0"] == 4000
    assert report["0"] == pytest.approx(float(energy[:3].sum() / energy.sum()), abs=0.02)
    assert torch.equal(model(x), before)  # B is still zero: still the pretrained model
    model(x)  # the hooks are gone after the block
    assert moments.tokens["0"] == 4000


def test_eva_covers_pooled_inputs_skips_convolutions_and_refuses_unreached_layers():
    from adapters.data_init import InputMoments

    x, _, _ = _inputs_with_known_directions()
    pooled = PoolLoRA(nn.Linear(12, 6), rank=2, stride=2, init="eva")
    conv = LoRA(nn.Conv1d(3, 4, kernel_size=3), rank=2, init="eva")
    conv_a = conv.lora_A.detach().clone()
    with InputMoments(nn.ModuleList([pooled, conv])) as moments:
        pooled(x)
    assert moments.skipped == ["1"] and list(moments.layers) == ["0"]
    moments.initialise()
    assert pooled.lora_A.shape == (2, 6)  # A acts on the pooled features
    gram = pooled.lora_A @ pooled.lora_A.t()
    torch.testing.assert_close(gram, gram[0, 0] * torch.eye(2), atol=1e-6, rtol=0)
    assert torch.equal(conv.lora_A, conv_a)  # a convolution keeps its random A

    unreached = nn.ModuleDict({"used": LoRA(nn.Linear(12, 4), rank=2, init="eva"),
                               "idle": LoRA(nn.Linear(12, 4), rank=2, init="eva")})  # fmt: skip
    with InputMoments(unreached) as moments:
        unreached["used"](x)
    with pytest.raises(RuntimeError, match="no input for 1 adapted layer.*'idle'"):
        moments.initialise()
    silent = LoRA(nn.Linear(12, 4), rank=2, init="eva")
    with InputMoments(silent) as moments:
        silent(torch.zeros(5, 12))
    with pytest.raises(RuntimeError, match="all zero"):
        moments.initialise()
    with InputMoments(unreached["used"], every_lora=False) as moments:
        pass
    assert list(moments.layers) == [""]
    plain = LoRA(nn.Linear(12, 4), rank=2)
    assert not InputMoments(plain).layers
    assert list(InputMoments(plain, every_lora=True).layers) == [""]


# ------------------------------------------------------------- settings per layer group
BY_LAYER = {"*": {"alpha": 4}, "7": {"rank": 3, "alpha": 6}}  # layers 0, 3, 5, 7


def _by_layer_lora(**by_layer) -> AdaptedModel:
    return AdaptedModel(
        make_net(), LoRA, all_linear=True, all_conv=True, adapter_kwargs={"rank": 2},
        adapter_kwargs_by_layer=by_layer or BY_LAYER,
    )  # fmt: skip


def test_adapter_kwargs_by_layer_builds_each_layer_with_its_own_settings():
    model = _by_layer_lora()
    built = {name: (a.rank, a.alpha) for name, a in model.adapters().items()}
    assert built == {"0": (2, 4.0), "3": (2, 4.0), "5": (2, 4.0), "7": (3, 6.0)}  # later wins
    plain = AdaptedModel(
        make_net(), LoRA, all_linear=True, all_conv=True, adapter_kwargs={"rank": 2}
    )
    assert model.num_trainable_parameters() - plain.num_trainable_parameters() == 16 + 3
    meta = model.adapter_metadata()
    assert meta["settings"]["rank"] == 2 and meta["adapter_kwargs_by_layer"] == BY_LAYER
    assert meta["layer_settings"] == {"7": {"rank": 3, "alpha": 6.0}}
    assert meta["scaling"]["7"] == 2.0 and meta["scaling"]["0"] == 2.0


def test_adapter_kwargs_by_layer_refuses_what_would_be_ignored():
    with pytest.raises(ValueError, match=r"adapter_kwargs_by_layer pattern '9' matches no adapt"):
        _by_layer_lora(**{"9": {"rank": 1}})
    with pytest.raises(TypeError, match=r"adapter_kwargs_by_layer\['7'\] \['rnak'\] are not"):
        _by_layer_lora(**{"7": {"rnak": 1}})
    with pytest.raises(ValueError, match="Cannot adapt 7 .*rank must be an integer in"):
        _by_layer_lora(**{"7": {"rank": 99}})


def test_an_adapter_file_with_settings_by_layer_loads_only_where_built_alike(tmp_path):
    model = _by_layer_lora().eval()
    perturb(model)
    x = torch.randn(2, 4, 10)
    expected = model(x)
    path = tmp_path / "grouped.safetensors"
    model.save_adapter(str(path))

    fresh = _by_layer_lora().eval()
    fresh.load_adapter(str(path))
    assert torch.equal(fresh(x), expected)
    same_shapes = _by_layer_lora(**{"7": {"rank": 3}})  # alpha 2 everywhere: other scales
    with pytest.raises(ValueError, match=r"alpha of 7: the file has 6.0, this model 3.0"):
        same_shapes.load_adapter(str(path))
    plain = AdaptedModel(
        make_net(), LoRA, all_linear=True, all_conv=True, adapter_kwargs={"rank": 2, "alpha": 4}
    )
    with pytest.raises(ValueError, match=r"rank of 7: .*adapter_kwargs_by_layer \{'\*'"):
        plain.load_adapter(str(path))
    # the same layers written the other way round: every layer's settings agree, so it loads
    written_otherwise = AdaptedModel(
        make_net(), LoRA, all_linear=True, all_conv=True, adapter_kwargs={"rank": 3, "alpha": 6},
        adapter_kwargs_by_layer={"[035]": {"rank": 2, "alpha": 4}},
    ).eval()  # fmt: skip
    written_otherwise.load_adapter(str(path))
    assert torch.equal(written_otherwise(x), expected)


def test_settings_that_only_one_side_has_are_compared_without_crashing():
    from adapters.state import settings_mismatch

    file = {"settings": {"r": 2}, "layer_settings": {"x": {"p": 0.5}}, "adapted_layers": ["x"]}
    model = {"settings": {"r": 2}, "layer_settings": {}, "adapted_layers": ["x"]}
    assert settings_mismatch(file, model) == []  # p: a key the model's class does not record
    model["settings"]["p"] = None
    assert settings_mismatch(file, model) == ["p of x: the file has 0.5, this model None"]


# ------------------------------------------------------------------ PiSSA initialisation
def test_pissa_starts_at_the_principal_part_and_computes_the_base_exactly():
    torch.manual_seed(0)
    base = nn.Linear(24, 16)
    lora = LoRA(base, rank=3, alpha=6, init="pissa")
    u, singular, vh = torch.linalg.svd(base.weight.detach().double(), full_matrices=False)
    principal = (u[:, :3] * singular[:3]) @ vh[:3]
    start = lora.scaling * lora.lora_B0.double() @ lora.lora_A0.double()
    torch.testing.assert_close(start, principal, atol=1e-5, rtol=1e-5)
    assert torch.equal(lora.lora_A, lora.lora_A0) and torch.equal(lora.lora_B, lora.lora_B0)
    x = torch.randn(2, 30, 24)
    lora.train()
    assert torch.equal(lora(x), base(x))  # fused training path
    with torch.no_grad():
        assert torch.equal(lora(x), base(x))  # the branch (inference)
    assert torch.equal(lora.delta_weight(), torch.zeros_like(base.weight))


def test_pissa_trains_the_principal_part_with_the_gradients_of_its_formula():
    torch.manual_seed(0)
    base = nn.Linear(24, 16)
    lora = LoRA(base, rank=3, init="pissa")
    with torch.no_grad():
        lora.lora_A.add_(0.1 * torch.randn_like(lora.lora_A))
        lora.lora_B.add_(0.1 * torch.randn_like(lora.lora_B))
    x = torch.randn(2, 30, 24, requires_grad=True)
    fused = lora(x)  # training path: one matmul by the merged weight
    fused.square().sum().backward()
    grads = [t.grad.clone() for t in (x, lora.lora_A, lora.lora_B)]
    for t in (x, lora.lora_A, lora.lora_B):
        t.grad = None
    a, b, a0, b0 = lora.lora_A, lora.lora_B, lora.lora_A0, lora.lora_B0
    weight = base.weight + lora.scaling * (b @ a - b0 @ a0)  # the formula, through autograd
    reference = torch.nn.functional.linear(x, weight, base.bias)
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)
    reference.square().sum().backward()
    for got, want in zip(grads, (x.grad, a.grad, b.grad), strict=True):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)
    assert not base.weight.requires_grad and base.weight.grad is None


def test_pissa_merges_exports_and_reloads_with_the_base_untouched(tmp_path):
    net = nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 4))
    original = {k: v.clone() for k, v in net.state_dict().items()}
    model = AdaptedModel(net, LoRA, all_linear=True, adapter_kwargs={"rank": 2, "init": "pissa"})
    assert all(torch.equal(original[k], v) for k, v in model.base_state().items())
    perturb(model)
    model.eval()
    x = torch.randn(5, 10)
    expected = model(x)
    path = tmp_path / "pissa.safetensors"
    model.save_adapter(str(path))
    assert {"0.lora_A0", "0.lora_B0"} <= set(read_adapter_metadata(path)["tensors"])

    fresh = AdaptedModel(
        nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 4)), LoRA, all_linear=True,
        adapter_kwargs={"rank": 2, "init": "pissa"},
    )  # fmt: skip
    fresh.adapted_model.load_state_dict(original, strict=False)  # the same base
    fresh.load_adapter(str(path))
    assert torch.equal(fresh.eval()(x), expected)
    model.merge()
    torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)
    model.unmerge()
    assert all(torch.equal(original[k], v) for k, v in model.base_state().items())
    plain = AdaptedModel(net_copy := nn.Sequential(nn.Linear(10, 12), nn.ReLU(), nn.Linear(12, 4)),
                         LoRA, all_linear=True, adapter_kwargs={"rank": 2})  # fmt: skip
    net_copy.load_state_dict(original, strict=False)
    with pytest.raises(ValueError, match=r"unexpected \['0.lora_A0'"):
        plain.load_adapter(str(path))


def test_pissa_is_refused_where_its_update_would_not_be_the_principal_part(tmp_path):
    from adapters import DoRA, PoolLoRA
    from adapters.peft_format import PeftFormatError, save_peft

    with pytest.raises(ValueError, match="alpha / rank, which must be positive"):
        LoRA(nn.Linear(8, 8), rank=2, alpha=0, init="pissa")
    for make in (
        lambda: LoRA(nn.Conv1d(4, 6, kernel_size=3), rank=2, init="pissa"),
        lambda: PoolLoRA(nn.Linear(8, 8), rank=2, init="pissa"),
        lambda: DoRA(nn.Linear(8, 8), rank=2, init="pissa"),
    ):
        with pytest.raises(ValueError, match="init='pissa' starts LoRA at a Linear"):
            make()
    model = AdaptedModel(
        nn.Sequential(nn.Linear(8, 8)), LoRA, all_linear=True,
        adapter_kwargs={"rank": 2, "init": "pissa"},
    )  # fmt: skip
    with pytest.raises(PeftFormatError, match="PiSSA"):
        save_peft(model, tmp_path / "peft")

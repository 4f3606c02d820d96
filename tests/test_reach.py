"""What the library reaches: convolutions of every geometry, recurrent layers,
any raw weight, exclusions, and the errors that replace silent skips."""

from __future__ import annotations

import copy
import logging

import pytest
import speechbrain.nnet.RNN as sb_rnn
import torch
from hyperpyyaml import load_hyperpyyaml
from torch import nn

from adapters import AdaptedModel, DoRA, Houlsby, HoulsbyAdapterLinear, LoRA, PoolLoRA

WEIGHT_ADAPTERS = {
    "lora": (LoRA, {"rank": 2}),
    "poollora": (PoolLoRA, {"rank": 2, "stride": 2}),
    "dora": (DoRA, {"rank": 2}),
}


def perturb(model: nn.Module, seed: int = 1) -> None:
    """Move every trainable parameter away from its initial value."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn_like(param))


# --------------------------------------------------------------- convolutions
CONVS = {
    "conv1d-stride-dilation": (
        lambda: nn.Conv1d(4, 6, 3, stride=2, dilation=2, padding=2),
        (2, 4, 17),
    ),
    "conv1d-reflect": (lambda: nn.Conv1d(4, 6, 3, padding=1, padding_mode="reflect"), (2, 4, 9)),
    "conv1d-circular": (lambda: nn.Conv1d(4, 6, 5, padding=2, padding_mode="circular"), (2, 4, 9)),
    "conv1d-same": (lambda: nn.Conv1d(4, 6, 4, padding="same", dilation=2), (2, 4, 9)),
    "conv1d-grouped": (lambda: nn.Conv1d(4, 6, 3, groups=2, padding=1), (2, 4, 9)),
    "conv1d-depthwise": (lambda: nn.Conv1d(6, 6, 5, groups=6, padding=2), (2, 6, 9)),
    "conv1d-wav2vec2-first": (lambda: nn.Conv1d(1, 16, 10, stride=5, bias=False), (2, 1, 60)),
    "conv2d-replicate": (
        lambda: nn.Conv2d(3, 5, 3, stride=(1, 2), padding=1, padding_mode="replicate"),
        (2, 3, 7, 8),
    ),
    "conv2d-grouped": (
        lambda: nn.Conv2d(4, 8, 3, groups=4, dilation=(2, 1), padding=2),
        (2, 4, 7, 7),
    ),
    "conv3d": (lambda: nn.Conv3d(2, 4, 3, stride=2, padding=1), (1, 2, 5, 6, 6)),
    "conv3d-grouped-reflect": (
        lambda: nn.Conv3d(4, 4, 3, groups=2, padding=1, padding_mode="reflect"),
        (1, 4, 4, 5, 5),
    ),
}


@pytest.mark.parametrize("kind", CONVS)
@pytest.mark.parametrize("cls", [LoRA, DoRA, PoolLoRA])
def test_conv_adapters_are_identity_train_and_merge_exactly(kind, cls):
    make_layer, shape = CONVS[kind]
    torch.manual_seed(0)
    base = make_layer()
    if cls is PoolLoRA and base.groups > 1:
        with pytest.raises(ValueError, match="grouped"):
            cls(base, rank=1)
        return
    reference = copy.deepcopy(base)
    rank = 1 if base.groups == base.out_channels else 2
    adapter = cls(base, rank=rank)
    x = torch.randn(*shape)
    assert torch.allclose(adapter(x), reference(x), atol=1e-6)
    adapter(x).pow(2).mean().backward()
    assert adapter.lora_B.grad is not None and adapter.lora_B.grad.abs().sum() > 0
    assert base.weight.grad is None
    perturb(adapter)
    unmerged = adapter(x)
    assert not torch.allclose(unmerged, reference(x), atol=1e-4)
    # The branch computation and the merged weight agree: the update is exact.
    adapter.merge()
    assert torch.allclose(adapter(x), unmerged, atol=1e-5)
    adapter.unmerge()
    assert torch.equal(base.weight, reference.weight)


def test_conv_rank_is_bounded_by_in_channels_times_kernel():
    assert LoRA(nn.Conv1d(1, 512, kernel_size=10), rank=10).lora_A.shape == (10, 1, 10)
    with pytest.raises(ValueError, match=r"\[1, 10\]"):
        LoRA(nn.Conv1d(1, 512, kernel_size=10), rank=11)
    # a grouped conv: the bound is per group, min(out / groups, in / groups x kernel)
    with pytest.raises(ValueError, match=r"\[1, 2\]"):
        LoRA(nn.Conv1d(8, 4, kernel_size=1, groups=2), rank=3)


def test_all_conv_on_a_wav2vec2_style_extractor_with_exclusions():
    def extractor() -> nn.Module:
        return nn.Sequential(
            nn.Conv1d(1, 16, 10, stride=5, bias=False),
            nn.GELU(),
            nn.Conv1d(16, 16, 3, stride=2, bias=False),
            nn.Conv1d(16, 16, 8, padding=4, groups=4),  # positional conv: grouped
        )

    model = AdaptedModel(extractor(), LoRA, all_conv=True, adapter_kwargs={"rank": 4})
    assert model.adapted_layers == ["0", "2", "3"]
    with pytest.raises(ValueError, match=r"Cannot adapt 3 \(Conv1d\).*exclude_layers"):
        AdaptedModel(extractor(), PoolLoRA, all_conv=True, adapter_kwargs={"rank": 4})
    pooled = AdaptedModel(
        extractor(), PoolLoRA, all_conv=True, exclude_layers=["3"], adapter_kwargs={"rank": 4}
    )
    assert pooled.adapted_layers == ["0", "2"]


# ---------------------------------------------------------- recurrent layers
class Tagger(nn.Module):
    """A recurrent model with a Linear head, as the recipes' models are built."""

    def __init__(self, rnn: nn.Module) -> None:
        super().__init__()
        self.rnn = rnn
        out = rnn(torch.zeros(1, 3, 6))[0].shape[-1]
        self.head = nn.Linear(out, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(x)[0])


RNNS = {
    "lstm-2layer-bidirectional": lambda: nn.LSTM(
        6, 5, num_layers=2, bidirectional=True, batch_first=True
    ),
    "lstm-projection": lambda: nn.LSTM(6, 8, proj_size=4, batch_first=True),
    "gru": lambda: nn.GRU(6, 5, batch_first=True, bidirectional=True),
    "rnn-relu": lambda: nn.RNN(6, 5, nonlinearity="relu", batch_first=True),
    "sb-lstm": lambda: sb_rnn.LSTM(hidden_size=5, input_size=6, bidirectional=True),
    "sb-gru": lambda: sb_rnn.GRU(hidden_size=5, input_size=6, num_layers=2),
    "sb-rnn": lambda: sb_rnn.RNN(hidden_size=5, input_size=6),
}


def make_tagger(kind: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return Tagger(RNNS[kind]()).train()


def recurrent_weights(model: nn.Module) -> list[str]:
    return [n for n, p in model.named_parameters() if "weight_" in n and p.dim() == 2]


@pytest.mark.parametrize("kind", RNNS)
@pytest.mark.parametrize("variant", WEIGHT_ADAPTERS)
def test_recurrent_weights_adapt_train_merge_and_export(kind, variant):
    cls, kwargs = WEIGHT_ADAPTERS[variant]
    base = make_tagger(kind)
    reference = copy.deepcopy(base)
    names = recurrent_weights(reference)
    model = AdaptedModel(base, cls, all_linear=True, adapter_kwargs=kwargs)
    # all_linear reaches every recurrent weight (both directions, projections) and the head
    assert sorted(model.adapted_layers) == sorted(
        [*(n.replace("rnn.rnn.", "rnn.rnn.") for n in names), "head"]
    )
    x = torch.randn(2, 7, 6)
    torch.manual_seed(3)
    assert torch.allclose(model(x), reference(x), atol=1e-6)  # identity at insertion

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    model(x).pow(2).mean().backward()
    for name, adapter in model.adapters().items():
        assert adapter.lora_B.grad.abs().sum() > 0, name  # gradients reach every adapter
    optimizer.step()
    model.eval()
    trained = model(x)
    assert not torch.allclose(trained, reference.eval()(x), atol=1e-4)
    for key, value in reference.state_dict().items():  # the base is untouched, keys kept
        assert torch.equal(base.state_dict()[key.replace("head.", "head.base_layer.")], value)

    model.merge()
    assert torch.allclose(model(x), trained, atol=1e-5)
    model.unmerge()
    assert all(
        torch.equal(base.state_dict()[k], v)
        for k, v in reference.state_dict().items()
        if "head" not in k
    )
    assert torch.equal(model(x), trained)

    plain = model.export_plain().eval()
    fresh = make_tagger(kind, seed=5).eval()
    fresh.load_state_dict(plain.state_dict(), strict=True)
    assert torch.allclose(fresh(x), trained, atol=1e-5)
    assert [type(m) for m in fresh.modules()] == [type(m) for m in plain.modules()]


def test_recurrent_flat_weights_follow_the_adapters():
    """The weights the fused kernel gets: adapted tensors while adapting, the
    (re-flattened) parameters themselves once merged or exported."""
    base = make_tagger("lstm-2layer-bidirectional")
    model = AdaptedModel(base, LoRA, target_layers=["rnn"], adapter_kwargs={"rank": 2})
    perturb(model)
    rnn = base.rnn
    x = torch.randn(2, 7, 6)
    model(x)
    adapted = dict(zip(rnn._flat_weights_names, rnn._flat_weights, strict=True))
    lora = model.adapters()["rnn.weight_hh_l1_reverse"]
    expected = rnn._parameters["weight_hh_l1_reverse"] + lora.delta_weight()
    assert torch.allclose(adapted["weight_hh_l1_reverse"], expected)
    assert not any(isinstance(w, nn.Parameter) for w in rnn._flat_weights if w.dim() == 2)
    model.merge()
    model(x)
    assert all(
        w is rnn._parameters[n]
        for n, w in zip(rnn._flat_weights_names, rnn._flat_weights, strict=True)
    )
    plain = model.export_plain()
    assert all(
        w is plain.rnn._parameters[n]
        for n, w in zip(plain.rnn._flat_weights_names, plain.rnn._flat_weights, strict=True)
    )
    assert type(plain.rnn) is nn.LSTM
    copy.deepcopy(model)  # copies hold parameters, not last call's adapted weights


def test_one_recurrent_weight_is_selected_by_its_name():
    model = AdaptedModel(
        make_tagger("gru"),
        LoRA,
        target_layers=["rnn.weight_hh_l0_reverse"],
        adapter_kwargs={"rank": 2},
    )
    assert model.adapted_layers == ["rnn.weight_hh_l0_reverse"]
    assert model.num_trainable_parameters() == 2 * (5 + 15)  # A [2, 5], B [15, 2]
    with pytest.raises(ValueError, match=r"Cannot adapt rnn.weight_hh_l0 \(GRU weight\).*\[1, 5\]"):
        AdaptedModel(make_tagger("gru"), LoRA, target_layers=["rnn.weight_hh_l0"])


def test_recurrent_adapter_file_round_trip(tmp_path):
    """A trained adapter saved and loaded into a model whose adapters start
    elsewhere reproduces the outputs; before loading they differ."""
    model = AdaptedModel(
        make_tagger("lstm-projection"), DoRA, all_linear=True, adapter_kwargs={"rank": 2}
    )
    x = torch.randn(2, 7, 6)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):
        optimizer.zero_grad()
        model(x).pow(2).mean().backward()
        optimizer.step()
    model.eval()
    expected = model(x)
    model.save_adapter(str(tmp_path / "rnn.safetensors"))
    torch.manual_seed(9)
    fresh = AdaptedModel(
        make_tagger("lstm-projection"), DoRA, all_linear=True, adapter_kwargs={"rank": 2}
    ).eval()
    perturb(fresh, seed=4)
    assert not torch.allclose(fresh(x), expected, atol=1e-4)
    fresh.load_adapter(str(tmp_path / "rnn.safetensors"))
    assert torch.equal(fresh(x), expected)


def test_ligru_keeps_working_through_its_linear_layers():
    torch.manual_seed(0)
    net = sb_rnn.LiGRU(hidden_size=5, input_shape=(2, 7, 6), normalization="layernorm")
    reference = copy.deepcopy(net)
    model = AdaptedModel(net, LoRA, all_linear=True, adapter_kwargs={"rank": 2})
    assert model.adapted_layers and all(n.endswith((".w", ".u")) for n in model.adapted_layers)
    x = torch.randn(2, 7, 6)
    assert torch.allclose(model(x)[0], reference(x)[0], atol=1e-6)
    model(x)[0].pow(2).mean().backward()
    assert all(a.lora_B.grad.abs().sum() > 0 for a in model.adapters().values())
    perturb(model)
    model.eval()
    trained = model(x)[0]
    assert not torch.allclose(trained, reference.eval()(x)[0], atol=1e-4)
    model.merge()
    assert torch.allclose(model(x)[0], trained, atol=1e-5)
    model.unmerge()
    fresh = sb_rnn.LiGRU(hidden_size=5, input_shape=(2, 7, 6), normalization="layernorm").eval()
    fresh.load_state_dict(model.export_plain().state_dict(), strict=True)
    assert torch.allclose(fresh(x)[0], trained, atol=1e-5)


# ------------------------------------------------------------ any raw weight
def test_any_named_weight_parameter_is_reachable():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Embedding(20, 6), nn.Linear(6, 4))
    reference = copy.deepcopy(net)
    model = AdaptedModel(net, LoRA, target_layers=["0.weight"], adapter_kwargs={"rank": 2})
    tokens = torch.randint(0, 20, (3, 5))
    assert torch.equal(model(tokens), reference(tokens))
    perturb(model)
    adapted = model(tokens)
    assert not torch.allclose(adapted, reference(tokens), atol=1e-4)
    assert sorted(net.state_dict()) == sorted(
        [
            *reference.state_dict(),
            "0.param_adapters.weight.blocks.weight.lora_A",
            "0.param_adapters.weight.blocks.weight.lora_B",
        ]
    )
    plain = model.export_plain()
    assert type(plain[0]) is nn.Embedding and torch.allclose(plain(tokens), adapted, atol=1e-6)


# ------------------------------------------------------------ the two defects
def test_layers_inside_unfrozen_layers_are_trained_in_full_not_adapted():
    net = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.ReLU()))
    model = AdaptedModel(
        net, LoRA, all_linear=True, unfrozen_layers=["1"], adapter_kwargs={"rank": 1}
    )
    assert model.adapted_layers == ["0"]
    assert isinstance(net[1][0], nn.Linear) and net[1][0].weight.requires_grad


def test_dora_on_a_raw_weight_has_the_gradients_of_dora_on_the_layer():
    """The weight norm is a constant in backward on both paths (as in the paper)."""
    torch.manual_seed(0)
    layer = nn.Linear(6, 5)
    wrapped = AdaptedModel(
        nn.Sequential(copy.deepcopy(layer)), DoRA, target_layers=["0"], adapter_kwargs={"rank": 2}
    )
    raw = AdaptedModel(
        nn.Sequential(copy.deepcopy(layer)),
        DoRA,
        target_layers=["0.weight"],
        adapter_kwargs={"rank": 2},
    )
    a, b = wrapped.adapters()["0"], raw.adapters()["0.weight"]
    with torch.no_grad():
        b.lora_A.copy_(a.lora_A)
        a.lora_B.normal_()
        b.lora_B.copy_(a.lora_B)
        a.magnitude.mul_(1.5)
        b.magnitude.copy_(a.magnitude)
    x = torch.randn(4, 6)
    wrapped(x).pow(2).sum().backward()
    raw(x).pow(2).sum().backward()
    assert torch.allclose(wrapped(x), raw(x), atol=1e-6)
    for name in ("lora_A", "lora_B", "magnitude"):
        assert torch.allclose(getattr(a, name).grad, getattr(b, name).grad, atol=1e-5), name


def test_dora_on_attention_q_proj_treats_the_norm_as_a_constant():
    """The raw-parameter path of DoRA against the paper's rule written out by hand."""
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(6, 2, batch_first=True)
    reference = copy.deepcopy(mha)
    model = AdaptedModel(mha, DoRA, target_layers=["q_proj"], adapter_kwargs={"rank": 2})
    dora = model.adapters()["q_proj"]
    with torch.no_grad():
        dora.lora_B.normal_()
        dora.magnitude.mul_(1.5)
    x = torch.randn(2, 4, 6)
    model(x, x, x)[0].pow(2).sum().backward()

    a, b, m = (
        t.detach().clone().requires_grad_(True) for t in (dora.lora_A, dora.lora_B, dora.magnitude)
    )
    w = reference.in_proj_weight.detach()
    adapted = w[:6] + dora.scaling * b @ a
    q = (m / adapted.norm(dim=1).detach()).unsqueeze(1) * adapted
    weight = torch.cat([q, w[6:]])
    out = torch.func.functional_call(reference, {"in_proj_weight": weight}, (x, x, x))[0]
    out.pow(2).sum().backward()
    assert torch.allclose(dora.lora_B.grad, b.grad, atol=1e-5)
    assert torch.allclose(dora.magnitude.grad, m.grad, atol=1e-5)


# ----------------------------------------------------- exclusions and honesty
class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.att = nn.MultiheadAttention(6, 2, batch_first=True)
        self.lstm = nn.LSTM(6, 6, batch_first=True)
        self.ffn = nn.Linear(6, 6)
        self.out = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.att(x, x, x)[0]
        return self.out(self.ffn(self.lstm(x)[0]))


def test_exclude_layers_leave_layers_out_and_must_match():
    model = AdaptedModel(
        Encoder(), LoRA, all_linear=True, exclude_layers=["lstm", "out"], adapter_kwargs={"rank": 2}
    )
    assert model.adapted_layers == ["ffn", "att.q_proj", "att.k_proj", "att.v_proj", "att.out_proj"]
    with pytest.raises(ValueError, match="exclude_layers pattern 'lstn' matches no layer.*'lstm'"):
        AdaptedModel(Encoder(), LoRA, all_linear=True, exclude_layers=["lstn"])


def test_what_all_linear_leaves_out_is_reported_once(caplog):
    with caplog.at_level(logging.WARNING, logger="adapters.adapted_model"):
        model = AdaptedModel(Encoder(), Houlsby, all_linear=True, exclude_layers=["out"])
    assert model.adapted_layers == ["ffn"]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "2 LSTM weight (raw parameters; Houlsby wraps modules" in warnings[0]
    assert "4 attention projection (raw parameters" in warnings[0]
    assert "1 Linear (exclude_layers)" in warnings[0]


class FrozenWrapper(nn.Module):
    """Like SpeechBrain's wav2vec2 integration with ``freeze: True``."""

    def __init__(self) -> None:
        super().__init__()
        self.freeze = True
        self.model = nn.Sequential(nn.Linear(4, 4), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x)


def test_a_frozen_wrapper_is_named_at_the_first_training_step():
    net = nn.Sequential(FrozenWrapper(), nn.Linear(4, 2))
    model = AdaptedModel(net, LoRA, all_linear=True, adapter_kwargs={"rank": 1})
    with torch.no_grad():
        model(torch.randn(2, 4))  # evaluation is fine
    with pytest.raises(
        RuntimeError,
        match=r"adapter at 0.model.0: module '0' \(FrozenWrapper\) has freeze=True.*freeze: False",
    ):
        model(torch.randn(2, 4))
    net[0].freeze = False
    net[0].forward = net[0].model.forward
    model(torch.randn(2, 4)).sum().backward()  # and passes once the wrapper lets gradients through
    assert model.adapters()["0.model.0"].lora_B.grad is not None


def test_an_adapter_class_that_does_not_wrap_the_layer_is_refused():
    with pytest.raises(TypeError, match="does not wrap the layer it was given"):
        AdaptedModel(nn.Sequential(nn.Linear(4, 4)), nn.ReLU, all_linear=True)


def test_manual_insertion_forgotten_is_an_error(tmp_path):
    model = AdaptedModel(
        nn.Sequential(nn.Linear(4, 4)),
        LoRA,
        all_linear=True,
        manual_adapter_insertion=True,
        adapter_kwargs={"rank": 1},
    )
    with pytest.raises(RuntimeError, match="before insert_adapters"):
        model(torch.randn(2, 4))
    with pytest.raises(RuntimeError, match="before insert_adapters"):
        model.save_adapter(str(tmp_path / "a.safetensors"))
    model.insert_adapters()
    model(torch.randn(2, 4))


def test_misspelled_kwargs_are_named_through_subclass_kwargs():
    with pytest.raises(TypeError, match=r"\['rnak'\].*'stride', 'rank'"):
        AdaptedModel(
            nn.Sequential(nn.Linear(4, 4)), PoolLoRA, all_linear=True, adapter_kwargs={"rnak": 2}
        )


# ------------------------------------------------------------ drop-in names
def test_tutorial_houlsby_yaml_runs_with_only_the_module_path_changed():
    from speechbrain.nnet.adapters import HoulsbyAdapterLinear as SBHoulsby

    yaml = """
    model: !new:torch.nn.Sequential
        - !new:torch.nn.Linear [8, 8]
        - !new:torch.nn.Linear [8, 4]
    adapted: !new:adapters.AdaptedModel
        model_to_adapt: !ref <model>
        adapter_class: !name:adapters.HoulsbyAdapterLinear
        all_linear: True
        adapter_kwargs:
            projection_size: 2
            bias: False
    """
    hparams = load_hyperpyyaml(yaml)
    adapters = hparams["adapted"].adapters()
    assert all(type(a) is HoulsbyAdapterLinear and a.up.bias is None for a in adapters.values())
    import inspect

    ours = list(inspect.signature(HoulsbyAdapterLinear).parameters)
    assert ours == list(inspect.signature(SBHoulsby).parameters)
    x = torch.randn(3, 8)
    assert torch.equal(
        hparams["adapted"](x), hparams["model"][1].base_layer(hparams["model"][0].base_layer(x))
    )
